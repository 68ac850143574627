"""A tiny random CLIP that loads offline through the normal ``load_clip`` path.

``make_tiny_clip(dir)`` writes what ``CLIPModel.save_pretrained`` + a CLIP tokenizer + a CLIP image
processor would: ``config.json``, ``model.safetensors``, ``vocab.json``, ``merges.txt``,
``tokenizer_config.json``, ``special_tokens_map.json`` and ``preprocessor_config.json``.

The tokenizer is a real byte-level BPE in CLIP's file format, learned from a small word list by
:func:`clipsonic.sonicworld.clip.write_clip_tokenizer` (any text tokenizes; the listed words
become single tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from clipsonic.sonicworld.clip import BOS, EOS, write_clip_image_processor, write_clip_tokenizer

# Words of the sound-of-videos world, so test captions are mostly whole tokens.
DEFAULT_WORDS = (
    "a an the of and with in on at by is are playing plays sound sounds noise loud quiet "
    "dog dogs barking bark cat meowing bird birds singing chirping car engine train horn siren "
    "rain thunder wind water waves stream ocean fire crackling people man woman child baby crying "
    "talking speech laughing crowd cheering clapping applause music song piano guitar violin "
    "cello flute trumpet saxophone drum drums bass tuba accordion bagpipe xylophone clarinet "
    "erhu ukulele harp organ solo orchestra beep tone hum buzz click knock footsteps door "
    "photo picture video of small big high low"
).split()


def make_tiny_clip(path: str | Path, *, projection_dim: int = 32, image_size: int = 32, seed: int = 0,
                   vocab_words: Sequence[str] = DEFAULT_WORDS, width: int = 32, layers: int = 2,
                   patch_size: int = 8) -> Path:
    """Save a random ``CLIPModel`` (2 layers, width 32) with its tokenizer and image processor to ``path``."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    path = Path(path)
    vocab = write_clip_tokenizer(path, vocab_words)
    write_clip_image_processor(path, image_size)
    common = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                  num_attention_heads=2, projection_dim=projection_dim)
    text = dict(common, vocab_size=len(vocab), max_position_embeddings=77,
                bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab[EOS])
    vision = dict(common, image_size=image_size, patch_size=patch_size, num_channels=3)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    model.save_pretrained(path)  # safetensors
    return path


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """One tiny CLIP directory per test session (built once even when several modules import this)."""
    path = tmp_path_factory.getbasetemp() / "tiny_clip"
    if not (path / "model.safetensors").is_file():
        make_tiny_clip(path)
    return path
