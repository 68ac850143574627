"""Bridges from CLIP text embeddings to the image-embedding space the mel model was trained on.

The mel model only saw image embeddings, and CLIP's text embeddings lie in another cone of the sphere
(the *modality gap*, Liang et al. 2022). Embeddings are ``[B, D]`` float32; every bridge returns unit rows.

- ``zs``: zero-shot (the paper's ZS): the CLIP text embedding itself.
- ``pd``: a diffusion prior samples an image embedding for the text (the paper's PD; clipsonic.prior).
- ``shift``: add the training set's mean image embedding minus the mean text embedding of a prompt
  set, renormalise (training-free; beyond the paper, needs the pipeline's ``stats``).
- ``knn``: the renormalised mean of the k training image embeddings nearest to the text (ditto).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from clipsonic.errors import ClipsonicError

log = logging.getLogger(__name__)

TEXT_MODES = ("zs", "pd", "shift", "knn")
MODES = ("iq", *TEXT_MODES)
# Text modes without a prior, best-measured first (docs/benchmarks.md): the default is the first one a pipeline has.
NO_PRIOR_TEXT_MODES = ("knn", "shift", "zs")
DEFAULT_KNN_K = 8  # enough neighbours to average out one odd frame, few enough to stay on topic
# The shift bridge's prompt set when the training data had no labels: everyday sound captions,
# so the mean text embedding is that of typical queries rather than of any one topic.
GENERIC_PROMPTS = (
    "a dog barking", "a cat meowing", "birds chirping", "a rooster crowing", "a cow mooing", "a car engine",
    "a train passing", "a siren wailing", "a car horn honking", "an airplane flying over", "rain falling",
    "thunder rumbling", "wind blowing", "ocean waves", "a stream of water", "a fire crackling", "people talking",
    "a crowd cheering", "people clapping", "a baby crying", "a man speaking", "a woman singing", "children laughing",
    "footsteps", "a door knocking", "someone playing the piano", "someone playing the guitar", "a violin solo",
    "a drum beat", "a trumpet playing", "a flute melody", "an orchestra", "a saxophone", "a church bell ringing",
    "a clock ticking", "a telephone ringing", "typing on a keyboard", "a vacuum cleaner", "a chainsaw",
    "a helicopter", "a motorcycle", "a lawn mower", "glass breaking", "a gunshot", "fireworks", "a whistle",
    "an alarm beeping", "water boiling", "frying food", "a toilet flushing",
)


# A text is "far from what the model knows" when its centred similarity (:func:`familiarity`) to every caption the model
# knows is below this. Measured on SonicWorld's built-in CLIP: its 96 held-out test captions scored >= 0.943, "a dog
# barking" 0.61, "piano music" 0.35, "a cat meowing" 0.90 (docs/benchmarks.md, "Far prompts"); on StampWorld's: its
# 576 held-out captions >= 0.972, "a car engine" 0.75, "piano music" 0.58 (tests/test_builtin.py).
FAR_PROMPT_SIMILARITY = 0.92


def familiarity(text_emb: torch.Tensor, known_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How close each text ``[B, D]`` is to the captions a model knows ``[K, D]``: the cosine similarity to the
    nearest known caption, both centred on the known captions' mean, and that caption's index (``[B]`` each).
    Centred, because a small CLIP trained on one world's captions puts every text, known words or not, within
    raw cosine 0.97-1.0 of them: the direction they share says nothing about the topic."""
    centre = known_emb.float().mean(dim=0)
    sims = F.normalize(text_emb.float() - centre, dim=-1) @ F.normalize(known_emb.float() - centre, dim=-1).T
    return sims.max(dim=-1)


def check_mode(kind: str, mode: str, available: Sequence[str]) -> str:
    """``mode`` if a pipeline that runs ``available`` modes can run it on a ``kind`` query ("text", "image", ...);
    else a one-line error that says what to do."""
    if mode not in MODES:
        raise ClipsonicError(f"unknown mode {mode!r}; choose one of {list(MODES)}")
    if (mode == "iq") != (kind != "text"):
        which = "iq is for images and videos" if mode == "iq" else "text modes: " + ", ".join(TEXT_MODES)
        raise ClipsonicError(f"mode {mode!r} does not take a {kind} query ({which})")
    if mode == "pd" and "pd" not in available:
        runs = [m for m in NO_PRIOR_TEXT_MODES if m in available]
        raise ClipsonicError(
            "mode 'pd' needs a prior and this pipeline has none: train one on image captions or the videos' labels "
            "(clipsonic train-prior CAPTIONS_OR_DATASET --out runs/prior) and add it (clipsonic attach prior "
            "PIPELINE runs/prior), or, for a ViT-L/14 pipeline, Karlo's from a local folder (clipsonic attach "
            f"prior PIPELINE DIR/karlo-v1-alpha); without one, text runs in {', '.join(runs)} (default {runs[0]})")
    if mode not in available:
        raise ClipsonicError(f"mode {mode!r} needs the stats component (re-export the run); this pipeline can "
                             f"run {', '.join(available)}")
    return mode


def warn_far(texts: Sequence[str], text_emb: torch.Tensor, known: Sequence[str], known_emb: torch.Tensor) -> None:
    """Log one line per text ``[B, D]`` far from every caption a model knows (``known``, ``[K, D]``)."""
    sims, nearest = familiarity(text_emb, known_emb)
    for text, sim, k in zip(texts, sims.tolist(), nearest.tolist(), strict=True):
        if sim < FAR_PROMPT_SIMILARITY:
            log.warning("%r is far from everything this model knows (nearest: %r, similarity %.2f < %.2f), so "
                        "expect one of its own sounds; its prompts.txt lists what it knows", text, known[k], sim,
                        FAR_PROMPT_SIMILARITY)


def zero_shot(text_emb: torch.Tensor) -> torch.Tensor:
    """ZS: the text embedding ``[B, D]`` itself (renormalised)."""
    return F.normalize(text_emb.float(), dim=-1)


def modality_shift(text_emb: torch.Tensor, mean_image: torch.Tensor, mean_text: torch.Tensor) -> torch.Tensor:
    """``normalize(t + mean_image − mean_text)`` for text embeddings ``[B, D]``, means ``[D]``."""
    return F.normalize(text_emb.float() + mean_image.float() - mean_text.float(), dim=-1)


def nearest_images(text_emb: torch.Tensor, bank: torch.Tensor, k: int = DEFAULT_KNN_K) -> torch.Tensor:
    """Renormalised mean of the ``k`` (at most N) rows of ``bank`` ``[N, D]`` nearest (cosine) to each text ``[B, D]``."""
    if bank.ndim != 2 or bank.shape[0] == 0:
        raise ClipsonicError("the knn bridge needs a non-empty image bank (the pipeline's stats/image_bank)")
    if k < 1:
        raise ClipsonicError(f"knn needs k >= 1, got {k}")
    bank = F.normalize(bank.float(), dim=-1)
    top = nearest_rows(text_emb, bank, k).indices  # [B, k]
    return F.normalize(bank[top].mean(dim=1), dim=-1)


def nearest_rows(emb: torch.Tensor, bank: torch.Tensor, k: int):
    """The cosine similarities (``values``) and row indices (``indices``) ``[B, k']``, k' = min(k, N), of the
    rows of ``bank`` ``[N, D]`` nearest to each of ``emb`` ``[B, D]``, nearest first."""
    sims = F.normalize(emb.float(), dim=-1) @ F.normalize(bank.float(), dim=-1).T  # [B, N]
    return sims.topk(min(k, bank.shape[0]), dim=-1)


def shift_prompts(labels: Sequence[str | None]) -> list[str]:
    """The shift bridge's prompt set: each training label as is and as "the sound of <label>", or
    :data:`GENERIC_PROMPTS` when no label is known."""
    names = sorted({label for label in labels if label})
    return [text for name in names for text in (name, f"the sound of {name}")] or list(GENERIC_PROMPTS)


def mean_text_embedding(encoder, prompts: Sequence[str]) -> torch.Tensor:
    """Mean ``[D]`` of the L2-normalised CLIP text embeddings of ``prompts`` (not renormalised,
    like the stored mean image embedding, so the shift is the difference of the two centroids)."""
    if not prompts:
        raise ClipsonicError("the shift bridge needs at least one prompt")
    return encoder.encode_texts(list(prompts)).mean(dim=0)
