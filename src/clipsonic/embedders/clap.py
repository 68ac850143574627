"""LAION-CLAP (Wu et al. 2023) audio and text towers, for the CLAP score (and CLAP-space FAD).

Needs the optional ``laion-clap`` package, a local checkpoint (``630k-audioset-best.pt``; "fusion" in the
file name enables feature fusion) and ``roberta-base`` in the HF cache. Audio is resampled to 48 kHz and cut
to 10 s deterministically (its first 10 s, or laion-clap's own "repeatpad"), so the package's random crop
never fires. One 512-d embedding per clip.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from clipsonic.embedders.base import (
    AudioEmbedder,
    quick_fingerprint,
    read_state_dict,
    resolve_weights,
)
from clipsonic.errors import ClipsonicError

log = logging.getLogger(__name__)

SAMPLE_RATE = 48000
CLIP_SAMPLES = 10 * SAMPLE_RATE
WEIGHTS_FILE = "630k-audioset-best.pt"
INSTALL_HINT = (
    "the CLAP score needs the optional laion-clap package. Its wheel pins numpy<2, so install it "
    "without dependencies, then its few runtime ones: `pip install --no-deps laion-clap && "
    "pip install torchlibrosa ftfy braceexpand h5py progressbar wget`"
)
HOW_TO_GET = (
    "Download a LAION-CLAP checkpoint once (630k-audioset-best.pt from the lukewys/laion_clap model "
    "repository on the Hugging Face hub) and pass it with --clap-weights PATH. The package also needs "
    "roberta-base in the Hugging Face cache: run once online `python -c \"from transformers import "
    "RobertaModel, RobertaTokenizer as T; RobertaModel.from_pretrained('roberta-base'); "
    "T.from_pretrained('roberta-base')\"`."
)


def crop_or_pad(wav: np.ndarray, length: int = CLIP_SAMPLES) -> np.ndarray:
    """``[samples]`` → ``[length]``: the first ``length`` samples, or (laion-clap's "repeatpad")
    ``length // n`` whole copies of the ``n``-sample clip, then zeros."""
    wav = np.asarray(wav, dtype=np.float32)
    n = len(wav)
    if n == 0:
        raise ClipsonicError("CLAP: empty audio")
    if n >= length:
        return wav[:length].copy()
    repeated = np.tile(wav, length // n)
    return np.pad(repeated, (0, length - len(repeated)))


def import_laion_clap() -> Any:
    try:
        return importlib.import_module("laion_clap")
    except ImportError as exc:
        raise ClipsonicError(f"{INSTALL_HINT} (import failed: {exc})") from None


class ClapEmbedder(AudioEmbedder):
    """A joint text–audio space: also embeds texts (``embed_texts``), for the CLAP score."""

    name = "clap"
    sample_rate = SAMPLE_RATE
    dim = 512
    description = "LAION-CLAP (512-d per clip, 48 kHz, deterministic 10-s crop/pad)"

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device | None = None,
                 amodel: str = "HTSAT-tiny", enable_fusion: bool | None = None, batch_size: int = 8):
        path = resolve_weights(weights, WEIGHTS_FILE, "LAION-CLAP", HOW_TO_GET)
        laion_clap = import_laion_clap()
        fusion = "fusion" in path.name if enable_fusion is None else enable_fusion
        device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            module = laion_clap.CLAP_Module(enable_fusion=fusion, device=device, amodel=amodel)
        except OSError as exc:  # transformers could not find roberta-base offline
            raise ClipsonicError(f"LAION-CLAP could not build its text tower ({exc}). {HOW_TO_GET}") from None
        state = read_state_dict(path, HOW_TO_GET)
        own = module.model.state_dict()
        # newer transformers keep position_ids as a buffer outside the state dict
        state = {k: v for k, v in state.items() if k in own}
        missing = sorted(set(own) - set(state) - {k for k in own if k.endswith("position_ids")})
        if missing:
            raise ClipsonicError(
                f"{path} does not fit LAION-CLAP {amodel} (fusion={fusion}): missing {missing[:3]}…; "
                "pass the checkpoint that matches (\"fusion\" in the name for fusion models)")
        module.model.load_state_dict(state, strict=False)
        module.model.eval()
        self.module = module
        self.batch_size = batch_size
        self.weights_path = path
        self.cache_id = f"clap-{amodel}{'-fusion' if fusion else ''}-{quick_fingerprint(path)}"

    @torch.no_grad()
    def _embed(self, wav: np.ndarray) -> np.ndarray:
        return self.embed_clips([wav])

    @torch.no_grad()
    def embed_clips(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """``[B, 512]`` for 48 kHz clips (each cropped/padded to 10 s)."""
        fixed = np.stack([crop_or_pad(c) for c in clips])  # [B, 480000]
        out = [np.asarray(self.module.get_audio_embedding_from_data(x=fixed[i:i + self.batch_size], use_tensor=False))
               for i in range(0, len(fixed), self.batch_size)]
        return np.concatenate(out).reshape(len(fixed), -1)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        out = []
        for i in range(0, len(texts), 64):
            batch = texts[i:i + 64]
            # some laion-clap versions squeeze a batch of one text away: send it twice
            emb = np.asarray(self.module.get_text_embedding(batch * 2 if len(batch) == 1 else batch, use_tensor=False))
            out.append(emb[:len(batch)])
        return np.concatenate(out).astype(np.float32)
