"""The world's own CLIP: a tiny transformers ``CLIPModel`` trained contrastively on a rendered world (SonicWorld,
or any world described by a :class:`Scene`).

CLIP's symmetric InfoNCE (Radford et al. 2021, Fig. 3) on (fresh frame, training caption) pairs,
where every same-concept pair of a batch counts as a positive (Khosla et al. 2020); frames are JPEG
re-encoded at random quality so decoded video frames embed like clean renders. Saved as a Hugging
Face directory, byte-level BPE tokenizer included, that :func:`clipsonic.encoders.load_clip` loads.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clipsonic.config import Config
from clipsonic.encoders import quiet_transformers  # no tqdm bar when saving
from clipsonic.files import atomic_directory, atomic_output, write_bytes_atomic, write_json_atomic
from clipsonic.sonicworld.world import CONCEPTS, WorldConfig, captions, clip_rng, render_frames

log = logging.getLogger(__name__)

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
# OpenAI CLIP's pixel statistics; the world-CLIP keeps them so its processor is the stock one.
CLIP_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    shifted = iter(range(256, 512))  # bytes without a printable glyph are shifted above U+00FF
    return {b: chr(b) if b in printable else chr(next(shifted)) for b in range(256)}


def learn_bpe(words: Iterable[str]) -> list[tuple[str, str]]:
    """Greedy BPE training until every word is one symbol; returns the merges in rank order.
    Words are byte-level encoded and their last symbol carries ``</w>``, as CLIP's tokenizer sees
    them. Ties between equally frequent pairs break lexicographically so the result is deterministic."""
    byte_char = bytes_to_unicode()
    # each word as its symbols joined by spaces (no byte character is a space)
    seqs = [" ".join(byte_char[b] for b in word.encode("utf-8")) + END_OF_WORD for word in sorted(set(words))]
    merges: list[tuple[str, str]] = []
    while pairs := Counter(p for s in seqs for p in itertools.pairwise(s.split())):
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        # Sennrich et al. 2016, Algorithm 1: join the pair's occurrences, left to right, at symbol boundaries
        pattern = re.compile(r"(?<!\S)" + re.escape(" ".join(best)) + r"(?!\S)")
        seqs = [pattern.sub("".join(best), s) for s in seqs]
    return merges


def write_clip_tokenizer(directory: str | Path, texts: Sequence[str], *,
                         model_max_length: int = 77) -> dict[str, int]:
    """Write a CLIP tokenizer (``vocab.json``, ``merges.txt``, configs) learned from ``texts``' words.
    The vocabulary is laid out like OpenAI CLIP's: the 256 byte characters, the same with
    ``</w>``, one token per merge, then ``<|startoftext|>`` and ``<|endoftext|>`` (the highest id,
    which CLIP's text model pools at). Returns the vocabulary (token -> id)."""
    directory = Path(directory)
    # roughly CLIP's pre-tokenizer: lowercase; runs of letters, single digits, runs of other symbols
    words = (w for text in texts for w in re.findall(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+", text.lower()))
    merges = learn_bpe(words)
    base = list(bytes_to_unicode().values())
    tokens = base + [c + END_OF_WORD for c in base] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    write_bytes_atomic(directory / "vocab.json", json.dumps(vocab, ensure_ascii=False).encode("utf-8"))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    write_bytes_atomic(directory / "merges.txt", ("\n".join(lines) + "\n").encode("utf-8"))
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    write_json_atomic(directory / "special_tokens_map.json", special)
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length,
              "do_lower_case": True, "errors": "replace", **special}
    write_json_atomic(directory / "tokenizer_config.json", config)
    return vocab


def write_clip_image_processor(directory: str | Path, image_size: int) -> None:
    """``preprocessor_config.json`` of CLIP's image processor at ``image_size`` (resize short side, centre crop)."""
    config = {"image_processor_type": "CLIPImageProcessor",
              "do_resize": True, "size": {"shortest_edge": image_size}, "resample": 3,  # bicubic
              "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
              "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
              "image_mean": list(CLIP_IMAGE_MEAN), "image_std": list(CLIP_IMAGE_STD), "do_convert_rgb": True}
    write_json_atomic(Path(directory) / "preprocessor_config.json", config)


@dataclasses.dataclass(frozen=True)
class Scene:
    """What the world-CLIP learns from and is measured on: a world's K concepts, their captions and pictures."""

    names: tuple[str, ...]  # [K] concept names
    size: int  # square frames, pixels
    seed: int
    captions: Callable[[int, str], list[str]]  # (concept index, "train" | "test") → its captions
    picture: Callable[[int, np.random.Generator], np.ndarray]  # a fresh training frame [size, size, 3] uint8
    test_picture: Callable[[int, int], np.ndarray]  # (concept, n) → the first frame of its test video n


def sonicworld_scene(world: WorldConfig | None = None) -> Scene:
    """SonicWorld as a :class:`Scene`."""
    world = world or WorldConfig()
    return Scene(names=tuple(c.name for c in CONCEPTS), size=world.size, seed=world.seed, captions=captions,
                 picture=lambda k, rng: render_frames(k, rng, world.size)[0],
                 test_picture=lambda k, n: render_frames(k, clip_rng(world, "test", k, n)[0], world.size)[0])


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
    # The temperature is held at 1/100, CLIP's final learned value: the loss then saturates once pairs
    # are ranked right, so the modality gap of the random initialisation survives as in real CLIP
    # (paired cosine 0.41, gap 1.0; Liang et al. 2022). Learned from CLIP's 1/0.07 start instead
    # (``learn_logit_scale=True``), it closes the gap (paired cosine 0.93).
    logit_scale: float = 100.0
    learn_logit_scale: bool = False
    projection_dim: int = 64
    max_text_tokens: int = 32  # the longest caption is 9 tokens with its start and end tokens
    jpeg_probability: float = 0.75  # share of frames re-encoded as JPEG (quality 15-85)
    # Weight of a second, image-to-image term: the batch's other frames of a concept are its positives (Khosla et
    # al. 2020). Internet-scale CLIP puts a dingo's photo near a dog's; a world-CLIP trained on image-caption pairs
    # alone names 0.91 of StampWorld's unseen test pictures' frames by caption, yet puts only 0.50 of them nearest
    # their own concept's training frames, which is all a mel model trained on those frames can follow; with this
    # term at 1.0, 0.93 (benchmarks/bench_stampworld_iq.py --clip).
    image_weight: float = 0.0
    seed: int = 0


def train_world_clip(out_dir: str | os.PathLike, world: WorldConfig | Scene | None = None,
                     config: WorldClipConfig | None = None, *,
                     progress: Callable[[int, int, dict], None] | None = None) -> Path:
    """Train the world-CLIP of ``world`` (SonicWorld's config, or any world's :class:`Scene`) and save it to
    ``out_dir`` (replaced whole, atomically); returns ``out_dir``. ``progress(step, total, {"loss": …})`` is called
    after every step. Measure it with :func:`modality_gap`."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer  # heavy: loaded only to train

    world, config = _scene(world), config or WorldClipConfig()
    out = Path(out_dir)
    with atomic_directory(out) as staging:
        # 1. Tokenizer learned from every caption word (test words are a subset of training words).
        texts = [t for k in range(len(world.names)) for split in ("train", "test") for t in world.captions(k, split)]
        vocab = write_clip_tokenizer(staging, texts, model_max_length=config.max_text_tokens)
        write_clip_image_processor(staging, world.size)
        tokenizer = CLIPTokenizer.from_pretrained(staging)
        # 2. Model: both towers of one width; the text tower pools at the end token.
        common = dict(hidden_size=config.width, intermediate_size=4 * config.width, num_hidden_layers=config.layers,
                      num_attention_heads=config.heads, projection_dim=config.projection_dim)
        text = dict(common, vocab_size=len(vocab), max_position_embeddings=config.max_text_tokens,
                    bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab[EOS])
        vision = dict(common, image_size=world.size, patch_size=config.patch_size, num_channels=3)
        # 3. Training.
        threads = torch.get_num_threads()
        try:
            # So small a model gains nothing from intra-op threads, and on a shared 2-core
            # machine their spin-waiting made each step 15× slower (2 s instead of 0.13 s).
            torch.set_num_threads(1)
            with torch.random.fork_rng():
                torch.manual_seed(config.seed)
                model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision,
                                             projection_dim=config.projection_dim))
                began = time.perf_counter()
                final_loss = _train(model, tokenizer, world, config, progress)
        finally:
            torch.set_num_threads(threads)
        with quiet_transformers():
            model.eval().save_pretrained(staging)  # safetensors
    log.info("world-CLIP: %d steps in %.0f s, final loss %.3f → %s", config.steps, time.perf_counter() - began,
             final_loss, out)
    return out


def _scene(world: WorldConfig | Scene | None) -> Scene:
    return world if isinstance(world, Scene) else sonicworld_scene(world)


def _train(model, tokenizer, world: Scene, config: WorldClipConfig, progress) -> float:
    """AdamW on symmetric multi-positive InfoNCE; returns the mean loss of the last 20 steps."""
    pool = [world.captions(k, "train") for k in range(len(world.names))]
    labels = torch.arange(len(world.names)).repeat_interleave(config.per_concept).tolist()  # [B]
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: _lr_factor(s, config))
    with torch.no_grad():
        model.logit_scale.fill_(math.log(config.logit_scale))
    model.logit_scale.requires_grad_(config.learn_logit_scale)
    model.train()
    losses = []
    for step in range(1, config.steps + 1):
        rng = np.random.default_rng([world.seed, config.seed, 3, step])
        pixels = _training_pixels(world, labels, rng, config.jpeg_probability)
        texts = [pool[k][rng.integers(len(pool[k]))] for k in labels]
        tokens = tokenizer(texts, padding="max_length", max_length=config.max_text_tokens, truncation=True,
                           return_tensors="pt")
        outputs = model(**tokens, pixel_values=pixels)
        loss = contrastive_loss(outputs.image_embeds, outputs.text_embeds, torch.tensor(labels),
                                model.logit_scale.exp(), config.image_weight)
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


def contrastive_loss(images: torch.Tensor, texts: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor | float,
                     image_weight: float = 0.0) -> torch.Tensor:
    """The world-CLIP's loss on unit rows ``images``, ``texts`` ``[B, D]`` of concepts ``labels`` ``[B]``: symmetric
    InfoNCE where every same-concept pair is a positive, plus ``image_weight`` × the image-to-image term, where a
    frame's positives are the batch's other frames of its concept (Khosla et al. 2020, Eq. 2)."""
    same = labels[:, None] == labels[None, :]  # [B, B]
    target = same.float() / same.sum(dim=1, keepdim=True)  # rows sum to 1 (symmetric)
    logits = images @ texts.T * scale
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    if image_weight:
        eye = torch.eye(len(labels), dtype=torch.bool)
        others = (same & ~eye).float()
        # self-pairs masked with a finite value: the target's 0 × log-softmax(-inf) would be nan
        pairs = (images @ images.T * scale).masked_fill(eye, -1e9)
        loss = loss + image_weight * F.cross_entropy(pairs, others / others.sum(dim=1, keepdim=True).clamp(min=1))
    return loss


def _lr_factor(step: int, config: WorldClipConfig) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _training_pixels(world: Scene, labels: Sequence[int], rng: np.random.Generator,
                     jpeg_probability: float) -> torch.Tensor:
    """One fresh frame per label (new position, size, background, noise), some JPEG-degraded, CLIP-normalised
    as CLIPImageProcessor does at the frame size: ``[B, 3, H, W]``."""
    frames = []
    for k in labels:
        frame = world.picture(k, rng)
        if rng.uniform() < jpeg_probability:
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, format="JPEG", quality=int(rng.integers(15, 86)))
            frame = np.asarray(Image.open(buffer).convert("RGB"))
        frames.append(frame)
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(CLIP_IMAGE_MEAN)[:, None, None]) / torch.tensor(CLIP_IMAGE_STD)[:, None, None]


def modality_gap(encoder, world: WorldConfig | Scene | None = None, per_concept: int = 16,
                 images: Sequence | None = None, labels: Sequence[int] | None = None,
                 figure: str | os.PathLike | None = None) -> dict:
    """Zero-shot accuracy (image → nearest mean caption embedding, and the reverse), mean cosines within /
    between concepts, and the modality gap ‖mean text − mean image embedding‖ (Liang et al. 2022) of a
    CLIP on the world's held-out captions and the first frames of test videos 0…per_concept-1 (or
    ``images`` with their concept ``labels``). ``figure``: also a PNG of both on their principal axes."""
    world = _scene(world)
    num = len(world.names)
    if images is None:
        images = [world.test_picture(k, n) for k in range(num) for n in range(per_concept)]
        labels = np.repeat(np.arange(num), per_concept)
    labels = np.asarray(labels)
    texts = [t for k in range(num) for t in world.captions(k, "test")]
    text_labels = np.array([k for k in range(num) for _ in world.captions(k, "test")])
    img = encoder.encode_images(list(images)).double()  # [N, D] unit rows
    txt = encoder.encode_texts(texts).double()  # [T, D]
    if figure is not None:
        _gap_figure(img.numpy(), labels, txt.numpy(), text_labels, figure, world.names)

    def nearest_prototype(queries: torch.Tensor, emb: torch.Tensor, lab: np.ndarray) -> np.ndarray:
        """The concept whose mean embedding (renormalised) is nearest to each query."""
        means = torch.stack([emb[torch.from_numpy(lab == k)].mean(0) for k in range(num)])
        return (queries @ F.normalize(means, dim=-1).T).argmax(1).numpy()

    def cosines(a: torch.Tensor, la: np.ndarray, b: torch.Tensor, lb: np.ndarray) -> tuple[float, float]:
        """Mean cosine of the same-concept pairs (self-pairs excluded) and of the other-concept pairs."""
        cos, same = (a @ b.T).numpy(), la[:, None] == lb[None, :]
        own = same & ~np.eye(len(la), len(lb), dtype=bool) if a is b else same
        return float(cos[own].mean()), float(cos[~same].mean())

    it_same, it_other = cosines(img, labels, txt, text_labels)
    ii_same, ii_other = cosines(img, labels, img, labels)
    tt_same, tt_other = cosines(txt, text_labels, txt, text_labels)
    return {
        "zero_shot_accuracy": float((nearest_prototype(img, txt, text_labels) == labels).mean()),
        "caption_accuracy": float((nearest_prototype(txt, img, labels) == text_labels).mean()),
        "images": len(labels), "captions": len(texts),
        "text_image_cosine_same_concept": it_same, "text_image_cosine_other_concept": it_other,
        "image_image_cosine_within_concept": ii_same, "image_image_cosine_between_concepts": ii_other,
        "text_text_cosine_within_concept": tt_same, "text_text_cosine_between_concepts": tt_other,
        "mean_gap_distance": float((txt.mean(0) - img.mean(0)).norm()),
    }


def _gap_figure(img: np.ndarray, labels: np.ndarray, txt: np.ndarray, text_labels: np.ndarray,
                path: str | os.PathLike, names: Sequence[str]) -> None:
    """Images (dots) and captions (crosses) ``[N, D]``, ``[T, D]`` on the two principal axes of both together."""
    both = np.concatenate([img, txt])
    centred = both - both.mean(0)
    xy = centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T  # [N + T, 2]
    from matplotlib.figure import Figure  # heavy (0.6 s): loaded only to draw

    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    colours = {c.name: np.array(c.colour) / 255 for c in CONCEPTS}  # SonicWorld's own; other worlds: a colour map
    for k, name in enumerate(names):
        colour = colours.get(name, _hue(k, len(names)))
        ax.scatter(*xy[:len(img)][labels == k].T, s=14, color=colour, edgecolors="k", linewidths=0.3, label=name)
        ax.scatter(*xy[len(img):][text_labels == k].T, s=30, marker="x", color=colour)
    ax.set_title("world-CLIP: images (dots) and captions (crosses)\nthe two clouds apart = the modality gap")
    ax.set_facecolor("#333")
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def _hue(k: int, n: int) -> np.ndarray:
    """Colour ``k`` of ``n`` spread around the hue circle (RGB in [0, 1])."""
    import colorsys

    return np.array(colorsys.hsv_to_rgb(k / n, 0.8, 0.95))
