"""LAION-CLAP (Wu et al. 2023) audio and text towers, for the CLAP score (and CLAP-space FAD): one 512-d
embedding per clip, cut to 10 s at 48 kHz deterministically (:func:`crop_or_pad`) so laion-clap's random crop
never fires. "fusion" in the checkpoint's file name enables feature fusion."""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence

import numpy as np
import torch

from clipsonic.embedders.base import AudioEmbedder, pick_device, quick_fingerprint, read_state_dict, resolve_weights
from clipsonic.errors import ClipsonicError

SAMPLE_RATE = 48000
CLIP_SAMPLES = 10 * SAMPLE_RATE
WEIGHTS_FILE = "630k-audioset-best.pt"
AMODEL = "HTSAT-tiny"  # the audio tower of the 630k checkpoints
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
    repeated = np.tile(np.asarray(wav, dtype=np.float32), max(length // len(wav), 1))[:length]
    return np.pad(repeated, (0, length - len(repeated)))


class ClapEmbedder(AudioEmbedder):
    """A joint text–audio space: also embeds texts (``embed_texts``), for the CLAP score."""

    name = "clap"
    sample_rate = SAMPLE_RATE
    dim = 512
    description = "LAION-CLAP (512-d per clip, 48 kHz, deterministic 10-s crop/pad)"

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device | None = None):
        path = resolve_weights(weights, WEIGHTS_FILE, "LAION-CLAP", HOW_TO_GET)
        try:
            laion_clap = importlib.import_module("laion_clap")
        except ImportError as exc:
            raise ClipsonicError("the CLAP score needs the optional laion-clap package. Its wheel pins numpy<2, so "
                                 "install it without dependencies, then its few runtime ones: `pip install --no-deps "
                                 "laion-clap && pip install torchlibrosa ftfy braceexpand h5py progressbar wget` "
                                 f"(import failed: {exc})") from None
        fusion = "fusion" in path.name
        try:
            module = laion_clap.CLAP_Module(enable_fusion=fusion, device=str(pick_device(device)), amodel=AMODEL)
        except OSError as exc:  # transformers could not find roberta-base offline
            raise ClipsonicError(f"LAION-CLAP could not build its text tower ({exc}). {HOW_TO_GET}") from None
        state = read_state_dict(path, HOW_TO_GET)
        own = module.model.state_dict()
        # newer transformers keep position_ids as a buffer outside the state dict
        state = {k: v for k, v in state.items() if k in own}
        missing = sorted(set(own) - set(state) - {k for k in own if k.endswith("position_ids")})
        if missing:
            raise ClipsonicError(
                f"{path} does not fit LAION-CLAP {AMODEL} (fusion={fusion}): missing {missing[:3]}…; "
                "pass the checkpoint that matches (\"fusion\" in the name for fusion models)")
        module.model.load_state_dict(state, strict=False)
        module.model.eval()
        self.module = module
        self.cache_id = f"clap-{AMODEL}{'-fusion' if fusion else ''}-{quick_fingerprint(path)}"

    @torch.no_grad()
    def _embed(self, wav: np.ndarray) -> np.ndarray:
        """``[1, 512]`` of the clip cropped/padded to 10 s."""
        return np.asarray(self.module.get_audio_embedding_from_data(x=crop_or_pad(wav)[None], use_tensor=False))

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """``[B, 512]``, 64 texts a batch."""
        batches = [list(texts[i:i + 64]) for i in range(0, len(texts), 64)]
        # some laion-clap versions squeeze a batch of one text away: send it twice
        out = [np.asarray(self.module.get_text_embedding(b * 2 if len(b) == 1 else b, use_tensor=False))[:len(b)]
               for b in batches]
        return np.concatenate([np.zeros((0, self.dim)), *out]).astype(np.float32)
