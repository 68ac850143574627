"""A tiny random pipeline directory that loads through the real ``CLIPSonicPipeline.from_pretrained``.

``make_tiny_pipeline(dir, clip_dir)`` writes, with :func:`clipsonic.export.write_pipeline_dir`:
a ``tiny`` MelUNet conditioned on the tiny CLIP's space, 1-s clips (32 frames), a 1000-step
cosine DiffusionConfig, stats from the tiny CLIP's embeddings of eight solid colours (labels
"red", "green", …), and with ``with_prior`` a random ``tiny`` diffusion prior. No vocoder: the
pipeline falls back to Griffin-Lim (pass ``vocoder=...`` to ``from_pretrained`` to change that).

The UNet's zero-initialised layers (output conv, residual branches) are given random weights:
an untrained improved-diffusion UNet outputs exactly 0 whatever the condition, which would let
"different queries give different audio" pass or fail for the wrong reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

COLOURS = {"red": (230, 30, 30), "green": (30, 200, 40), "blue": (40, 60, 230), "yellow": (240, 220, 40),
           "magenta": (230, 40, 220), "cyan": (30, 220, 220), "white": (250, 250, 250), "black": (20, 20, 20)}
TINY_FRAMES = 32  # 1.024 s at hop 512: a multiple of the tiny UNet's 8


def solid_image(rgb: tuple[int, int, int], size: int = 32) -> np.ndarray:
    """A uint8 ``[size, size, 3]`` picture of one colour."""
    return np.broadcast_to(np.array(rgb, np.uint8), (size, size, 3)).copy()


def randomize_zero_layers(module: torch.nn.Module) -> None:
    """Re-initialise every conv/linear layer whose weight is all zeros with PyTorch's default init."""
    for layer in module.modules():
        if isinstance(layer, torch.nn.Conv2d | torch.nn.Linear) and not bool(layer.weight.any()):
            layer.reset_parameters()


def make_tiny_pipeline(path: str | Path, clip_dir: str | Path, with_prior: bool = True, seed: int = 0) -> Path:
    """Write a random tiny pipeline for the tiny CLIP at ``clip_dir`` into ``path``; returns ``path``."""
    from clipsonic.audio import MelConfig
    from clipsonic.diffusion import DiffusionConfig
    from clipsonic.encoders import ClipModelRef, load_clip
    from clipsonic.export import PipelineStats, write_pipeline_dir
    from clipsonic.models import MelUNet
    from clipsonic.prior import DiffusionPrior, PriorConfig, PriorNet, prior_preset

    encoder = load_clip(clip_dir, device="cpu")
    clip = ClipModelRef(model=str(clip_dir), dim=encoder.dim, fingerprint=encoder.fingerprint)
    bank = encoder.encode_images([solid_image(rgb) for rgb in COLOURS.values()])  # [8, D]
    stats = PipelineStats(mean_image_embedding=bank.mean(0), image_bank=bank.half(),
                          bank_keys=[f"{name}/0" for name in COLOURS], bank_labels=list(COLOURS),
                          info={"dataset": "tiny colours", "split": "train", "num_clips": len(COLOURS),
                                "num_embeddings": len(COLOURS)})
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = MelUNet.from_preset("tiny", cond_dim=encoder.dim)
        randomize_zero_layers(unet)
        prior_config = PriorConfig(network=prior_preset("tiny", encoder.dim), steps=8)
        net = PriorNet(prior_config.network)
        randomize_zero_layers(net)
    extra = {}
    if with_prior:
        extra["prior"] = DiffusionPrior(net, prior_config, clip, training={"note": "random"}).save_pretrained
    return write_pipeline_dir(path, unet=unet, diffusion=DiffusionConfig(num_timesteps=1000, prediction="v"),
                              mel=MelConfig(clip_samples=TINY_FRAMES * 512), clip=clip, stats=stats,
                              training={"dataset": "none: random weights for tests"}, extra_components=extra)


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory, tiny_clip_dir) -> Path:
    """One tiny random pipeline (with a prior) per test session."""
    path = tmp_path_factory.getbasetemp() / "tiny_pipeline"
    if not (path / "model_index.json").is_file():
        make_tiny_pipeline(path, tiny_clip_dir)
    return path
