"""The world's own CLIP: a tiny transformers ``CLIPModel`` trained contrastively on SonicWorld.

CLIPSonic needs a CLIP whose image and text embeddings share one space; in SonicWorld we train
one in a minute on 2 CPU cores from (freshly rendered frame, training caption of its concept)
pairs. The loss is CLIP's symmetric InfoNCE with a learnable temperature (Radford et al. 2021,
Fig. 3), except that with only 8 concepts a batch holds several pairs of each concept, so every
same-concept pair counts as a positive (the target spreads evenly over them; Khosla et al. 2020).
Frames are JPEG re-encoded at random quality during training, so frames decoded from the H.264
videos (blocky, chroma-subsampled) embed like clean renders.

:func:`train_world_clip` saves a genuine Hugging Face directory (``model.safetensors``,
``config.json``, a CLIP BPE tokenizer, ``preprocessor_config.json``) that
:func:`clipsonic.encoders.load_clip` loads like ``openai/clip-vit-large-patch14``;
:func:`modality_gap` measures it on held-out captions and test-split frames.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipsonic.config import Config
from clipsonic.encoders import _quiet_transformers  # no tqdm bar when saving
from clipsonic.files import atomic_directory
from clipsonic.sonicworld.tokenizer import (
    BOS,
    CLIP_IMAGE_MEAN,
    CLIP_IMAGE_STD,
    EOS,
    write_clip_image_processor,
    write_clip_tokenizer,
)
from clipsonic.sonicworld.world import CONCEPTS, WorldConfig, captions, clip_rng, render_frames

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WorldClipConfig(Config):
    """Size and training of the world-CLIP (defaults: ~1 minute on 2 CPU cores)."""

    steps: int = 300  # zero-shot accuracy is ~0.99 after 100 steps already
    per_concept: int = 6  # pairs per concept per batch: batch = 8 × 6 = 48
    lr: float = 2e-3
    warmup_steps: int = 40
    weight_decay: float = 0.05
    width: int = 64  # hidden size of both towers
    layers: int = 2
    heads: int = 4
    patch_size: int = 8  # 64 px frames → 8 × 8 patches
    # The softmax temperature is held at 1/100, CLIP's learned value at the end of its training.
    # Learned from CLIP's 1/0.07 start instead, it stays low while the loss pulls each caption onto
    # its images, and this small world ends with paired text-image cosine 0.93 and almost no gap;
    # fixed at 1/100 the loss saturates once pairs are merely ranked right, so the gap of the random
    # initialisation survives as in real CLIP: paired cosine 0.41, image-image 0.99, gap 1.0
    # (Liang et al. 2022). ``learn_logit_scale=True`` gives the closed-gap model.
    logit_scale: float = 100.0
    learn_logit_scale: bool = False
    projection_dim: int = 64
    max_text_tokens: int = 32  # the longest caption is 9 tokens with its start and end tokens
    jpeg_probability: float = 0.75  # share of frames re-encoded as JPEG (quality 15-85)
    seed: int = 0


def train_world_clip(out_dir: str | os.PathLike, world: WorldConfig | None = None,
                     config: WorldClipConfig | None = None, *,
                     progress: Callable[[int, int, dict], None] | None = None) -> Path:
    """Train the world-CLIP and save it to ``out_dir`` (replaced whole, atomically); returns ``out_dir``.

    ``progress(step, total, {"loss": …})`` is called after every step. Measure it with :func:`modality_gap`.
    """
    from transformers import CLIPModel, CLIPTokenizer  # heavy: loaded only to train

    world, config = world or WorldConfig(), config or WorldClipConfig()
    out = Path(out_dir)
    with atomic_directory(out) as staging:
        # 1. Tokenizer learned from every caption word (test words are a subset of training words).
        texts = [t for c in CONCEPTS for split in ("train", "test") for t in captions(c, split)]
        vocab = write_clip_tokenizer(staging, texts, model_max_length=config.max_text_tokens)
        write_clip_image_processor(staging, world.size)
        tokenizer = CLIPTokenizer.from_pretrained(staging)
        # 2. Model and training.
        threads = torch.get_num_threads()
        try:
            # So small a model gains nothing from intra-op threads, and on a shared 2-core
            # machine their spin-waiting made each step 15× slower (2 s instead of 0.13 s).
            torch.set_num_threads(1)
            with torch.random.fork_rng():
                torch.manual_seed(config.seed)
                model = CLIPModel(_clip_config(config, world, vocab))
                began = time.perf_counter()
                final_loss = _train(model, tokenizer, world, config, progress)
        finally:
            torch.set_num_threads(threads)
        with _quiet_transformers():
            model.eval().save_pretrained(staging)  # safetensors
    log.info("world-CLIP: %d steps in %.0f s, final loss %.3f → %s", config.steps, time.perf_counter() - began,
             final_loss, out)
    return out


def _clip_config(config: WorldClipConfig, world: WorldConfig, vocab: dict[str, int]):
    from transformers import CLIPConfig  # heavy: loaded only to train

    common = dict(hidden_size=config.width, intermediate_size=4 * config.width,
                  num_hidden_layers=config.layers, num_attention_heads=config.heads,
                  projection_dim=config.projection_dim)
    text = dict(common, vocab_size=len(vocab), max_position_embeddings=config.max_text_tokens,
                bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab[EOS])
    vision = dict(common, image_size=world.size, patch_size=config.patch_size, num_channels=3)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=config.projection_dim)


def _train(model, tokenizer, world: WorldConfig, config: WorldClipConfig, progress) -> float:
    """AdamW on symmetric multi-positive InfoNCE; returns the mean loss of the last 20 steps."""
    pool = [captions(c, "train") for c in CONCEPTS]
    tokens = [tokenizer(p, padding="max_length", max_length=config.max_text_tokens, truncation=True,
                        return_tensors="pt") for p in pool]
    labels = torch.arange(len(CONCEPTS)).repeat_interleave(config.per_concept)  # [B]
    same = (labels[:, None] == labels[None, :]).float()
    target = same / same.sum(dim=1, keepdim=True)  # [B, B], rows sum to 1 (symmetric)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: _lr_factor(s, config))
    with torch.no_grad():
        model.logit_scale.fill_(math.log(config.logit_scale))
    model.logit_scale.requires_grad_(config.learn_logit_scale)
    model.train()
    losses = []
    for step in range(1, config.steps + 1):
        rng = np.random.default_rng([world.seed, config.seed, 3, step])
        pixels = _pixels(_training_frames(world, labels.tolist(), rng, config.jpeg_probability))
        picks = [int(rng.integers(len(pool[k]))) for k in labels.tolist()]
        ids = torch.stack([tokens[k]["input_ids"][j] for k, j in zip(labels.tolist(), picks, strict=True)])
        mask = torch.stack([tokens[k]["attention_mask"][j] for k, j in zip(labels.tolist(), picks, strict=True)])
        logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits_per_image  # [B, B]
        loss = 0.5 * (torch.sum(-target * logits.log_softmax(dim=1), dim=1).mean()
                      + torch.sum(-target * logits.T.log_softmax(dim=1), dim=1).mean())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        with torch.no_grad():  # CLIP caps the temperature at 1/100
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if progress:
            progress(step, config.steps, {"loss": losses[-1]})
    return float(np.mean(losses[-20:])) if losses else float("nan")


def _lr_factor(step: int, config: WorldClipConfig) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _training_frames(world: WorldConfig, labels: Sequence[int], rng: np.random.Generator,
                     jpeg_probability: float) -> list[np.ndarray]:
    """One fresh frame per label (new position, size, background, noise), some JPEG-degraded."""
    frames = []
    for k in labels:
        frame = render_frames(k, rng, world.size)[0]
        if rng.uniform() < jpeg_probability:
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, format="JPEG", quality=int(rng.integers(15, 86)))
            frame = np.asarray(Image.open(buffer).convert("RGB"))
        frames.append(frame)
    return frames


def _pixels(frames: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` frames → CLIP-normalised ``[B, 3, H, W]``, as CLIPImageProcessor at the frame size."""
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(CLIP_IMAGE_MEAN)[:, None, None]
    std = torch.tensor(CLIP_IMAGE_STD)[:, None, None]
    return (x - mean) / std


def heldout_frames(world: WorldConfig, per_concept: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The first frames of the test split's videos 0…per_concept-1 of each concept, rendered fresh."""
    frames, labels = [], []
    for k in range(len(CONCEPTS)):
        for number in range(per_concept):
            frames.append(render_frames(k, clip_rng(world, "test", k, number)[0], world.size)[0])
            labels.append(k)
    return frames, np.array(labels)


def modality_gap(encoder, world: WorldConfig | None = None, per_concept: int = 16,
                 images: Sequence | None = None, labels: Sequence[int] | None = None) -> dict:
    """Zero-shot accuracy and the modality gap of a CLIP on SonicWorld.

    Images are the test-split frames (:func:`heldout_frames`) unless ``images`` and their concept
    ``labels`` are given (e.g. frames decoded from the rendered videos); texts are the held-out
    captions. Returns: ``zero_shot_accuracy`` (image → concept whose mean caption embedding is
    nearest), ``caption_accuracy`` (caption → concept whose mean image embedding is nearest), mean
    cosines of text-image pairs of the same / different concepts, of image-image and text-text
    pairs within / between concepts (self-pairs excluded), and ``mean_gap_distance``, the distance
    ‖mean text embedding − mean image embedding‖ (Liang et al. 2022's modality gap).
    """
    world = world or WorldConfig()
    if images is None:
        images, labels = heldout_frames(world, per_concept)
    labels = np.asarray(labels)
    texts = [(t, k) for k, c in enumerate(CONCEPTS) for t in captions(c, "test")]
    text_labels = np.array([k for _, k in texts])
    img = encoder.encode_images(list(images)).double()  # [N, D] unit rows
    txt = encoder.encode_texts([t for t, _ in texts]).double()  # [T, D]
    K = len(CONCEPTS)

    def prototypes(emb: torch.Tensor, lab: np.ndarray) -> torch.Tensor:  # [K, D] unit rows
        means = torch.stack([emb[torch.from_numpy(lab == k)].mean(0) for k in range(K)])
        return torch.nn.functional.normalize(means, dim=-1)

    zero_shot = (img @ prototypes(txt, text_labels).T).argmax(1).numpy() == labels
    caption_hits = (txt @ prototypes(img, labels).T).argmax(1).numpy() == text_labels
    cross, ii, tt = (img @ txt.T).numpy(), (img @ img.T).numpy(), (txt @ txt.T).numpy()
    same_it = labels[:, None] == text_labels[None, :]
    same_ii = (labels[:, None] == labels[None, :]) & ~np.eye(len(labels), dtype=bool)
    same_tt = (text_labels[:, None] == text_labels[None, :]) & ~np.eye(len(text_labels), dtype=bool)
    diff_ii = labels[:, None] != labels[None, :]
    diff_tt = text_labels[:, None] != text_labels[None, :]
    return {
        "zero_shot_accuracy": float(zero_shot.mean()),
        "caption_accuracy": float(caption_hits.mean()),
        "images": len(labels), "captions": len(texts),
        "text_image_cosine_same_concept": float(cross[same_it].mean()),
        "text_image_cosine_other_concept": float(cross[~same_it].mean()),
        "image_image_cosine_within_concept": float(ii[same_ii].mean()),
        "image_image_cosine_between_concepts": float(ii[diff_ii].mean()),
        "text_text_cosine_within_concept": float(tt[same_tt].mean()),
        "text_text_cosine_between_concepts": float(tt[diff_tt].mean()),
        "mean_gap_distance": float((txt.mean(0) - img.mean(0)).norm()),
    }
