"""A tiny random CLIP that loads offline through the normal ``load_clip`` path.

``make_tiny_clip(dir)`` writes what ``CLIPModel.save_pretrained`` + a CLIP tokenizer + a CLIP image
processor would: ``config.json``, ``model.safetensors``, ``vocab.json``, ``merges.txt``,
``tokenizer_config.json``, ``special_tokens_map.json`` and ``preprocessor_config.json``.

The tokenizer is a real byte-level BPE in CLIP's file format, learned here from a small word list
(:func:`write_clip_tokenizer`): every byte-level character is in the vocabulary both bare and with
CLIP's end-of-word suffix ``</w>``, so any text tokenizes; the listed words become single tokens.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"

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


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:  # bytes without a printable glyph are shifted above U+00FF
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _pretokenize(text: str) -> list[str]:
    """Roughly CLIP's pre-tokenizer: lowercase; runs of letters, single digits, runs of other symbols."""
    return re.findall(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+", text.lower())


def learn_bpe(words: Iterable[str]) -> list[tuple[str, str]]:
    """Greedy BPE training until every word is one symbol; returns the merges in rank order.

    Words are byte-level encoded and their last symbol carries ``</w>``, as CLIP's tokenizer sees
    them. Ties between equally frequent pairs break lexicographically so the result is deterministic.
    """
    byte_char = bytes_to_unicode()
    seqs = []
    for word in sorted(set(words)):
        symbols = [byte_char[b] for b in word.encode("utf-8")]
        symbols[-1] += END_OF_WORD
        seqs.append(symbols)
    merges: list[tuple[str, str]] = []
    while True:
        pairs = Counter(p for s in seqs for p in zip(s, s[1:], strict=False))
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        seqs = [_merge(s, best) for s in seqs]


def _merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def write_clip_tokenizer(directory: str | Path, words: Sequence[str] = DEFAULT_WORDS, *,
                         model_max_length: int = 77) -> dict[str, int]:
    """Write a CLIP tokenizer (``vocab.json``, ``merges.txt``, configs) learned from ``words``.

    The vocabulary is laid out like OpenAI CLIP's: the 256 byte characters, the same with
    ``</w>``, one token per merge, then ``<|startoftext|>`` and ``<|endoftext|>`` (the highest id,
    which CLIP's text model pools at). Returns the vocabulary (token -> id).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    merges = learn_bpe(w for text in words for w in _pretokenize(text))
    base = list(bytes_to_unicode().values())
    tokens = base + [c + END_OF_WORD for c in base] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length,
              "do_lower_case": True, "errors": "replace", **special}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return vocab


def write_clip_image_processor(directory: str | Path, image_size: int) -> None:
    """``preprocessor_config.json`` of CLIP's image processor at ``image_size`` (resize short side, centre crop)."""
    config = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True, "size": {"shortest_edge": image_size}, "resample": 3,  # bicubic
        "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],  # OpenAI CLIP's statistics
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": True,
    }
    Path(directory, "preprocessor_config.json").write_text(json.dumps(config, indent=2))


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
