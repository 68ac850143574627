"""``train_vocoder``: BigVGAN on a dataset directory's audio or a folder of audio files.

Run directory (``--out RUN``)::

    RUN/train_config.json     VocoderTrainConfig + mel config + generator config
    RUN/checkpoints/step-N/   the last ``keep_last`` checkpoints (see checkpoint.py)
    RUN/logs/                 TensorBoard: losses, validation mel-L1, audio examples
    RUN/vocoder/              the inference directory (config.json + safetensors), written at
                              the end; load_vocoder(RUN) and `clipsonic vocoder attach` accept RUN

HF accelerate runs it on CPU, one GPU or many (``accelerate launch``); each process draws its
own share of every batch from the global sample index, so the data never depends on timing.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from clipsonic.audio import MelConfig
from clipsonic.config import Config
from clipsonic.files import atomic_directory, write_json_atomic
from clipsonic.vocoder.base import VocoderError
from clipsonic.vocoder.bigvgan import (
    BigVGANVocoder,
    build_generator,
    check_generator_fits,
    preset_config,
)
from clipsonic.vocoder.checkpoint import list_checkpoints, load_checkpoint
from clipsonic.vocoder.discriminators import DiscriminatorConfig

log = logging.getLogger(__name__)

# Fields that may differ when resuming: they change when and what is written, not the maths.
RESUMABLE_FIELDS = ("max_steps", "save_every", "val_every", "keep_last", "num_workers", "audio_examples", "precision")


@dataclasses.dataclass(frozen=True)
class VocoderTrainConfig(Config):
    """Vocoder training (defaults: BigVGAN v1's recipe, sized for one GPU)."""

    preset: str = "base"
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    # 8192 samples = 16 frames = 0.5 s, BigVGAN v1's segment; a multiple of the hop (512).
    segment_size: int = 8192
    batch_size: int = 16
    lr: float = 1e-4
    adam_b1: float = 0.8
    adam_b2: float = 0.99
    lr_decay: float = 0.9999996  # per step: lr_t = lr · decay^t
    lambda_mel: float = 45.0
    clip_grad_norm: float = 500.0
    disc_start_step: int = 0  # steps trained on the mel loss alone before the GAN starts
    max_steps: int = 500_000
    save_every: int = 5000
    val_every: int = 1000
    keep_last: int = 3
    num_val: int = 8
    val_segment_size: int = 65536  # 4.096 s, one pipeline clip
    audio_examples: int = 2
    seed: int = 0
    precision: str = "no"  # "no" | "bf16" | "fp16"
    num_workers: int = 2

    def __post_init__(self) -> None:
        if self.segment_size <= 0 or self.segment_size % 512 or self.val_segment_size % 512:
            raise ValueError(f"segment sizes must be positive multiples of 512, got {self.segment_size}/{self.val_segment_size}")
        if self.precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"precision must be no, bf16 or fp16, got {self.precision!r}")
        for name in ("batch_size", "max_steps", "save_every", "val_every", "num_val"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


# Per-preset starting points; every field can still be overridden.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"batch_size": 32},
    "base": {},
    # CPU-sized: 1/8-wide discriminators (0.65M parameters instead of ~40M), short segments, lr 1e-3.
    "tiny": {"discriminator": DiscriminatorConfig(channel_mult=0.125), "segment_size": 4096,
             "batch_size": 4, "lr": 1e-3, "num_val": 4, "val_segment_size": 16384, "num_workers": 0},
}


def train_config_for_preset(preset: str, **overrides: Any) -> VocoderTrainConfig:
    """The preset's training config with ``overrides`` (``None`` values are ignored)."""
    preset_config(preset)  # unknown names fail here, listing the presets
    fields = {**TRAIN_PRESETS.get(preset, {}), **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return VocoderTrainConfig(preset=preset, **fields)
    except (TypeError, ValueError) as exc:
        raise VocoderError(f"invalid training settings: {exc}") from None


@dataclasses.dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    vocoder_dir: Path
    step: int
    val_history: list[tuple[int, float]]  # (step, validation mel-L1)


ProgressCallback = Callable[[int, int, dict[str, float]], None]  # (step, max_steps, logs)


def train_vocoder(data: str | os.PathLike, out: str | os.PathLike, config: VocoderTrainConfig, *,
                  mel: MelConfig | None = None, resume: bool = False,
                  callback: ProgressCallback | None = None) -> TrainResult:
    """Train (or, with ``resume``, continue) a BigVGAN on ``data``; write ``out/vocoder/``.

    ``mel`` defaults to the dataset's mel config (dataset directories) or the paper's (folders).
    Raises :class:`VocoderError` on bad data, a non-finite loss (naming the step) or a run
    directory that already holds another run.
    """
    from clipsonic.vocoder.loop import run_training

    out = Path(out)
    mel = mel or _dataset_mel(Path(data)) or MelConfig()
    check_generator_fits(preset_config(config.preset), mel)
    start = _prepare_run_dir(out, config, mel, resume)
    return run_training(Path(data), out, config, mel, start, callback)


def _dataset_mel(data: Path) -> MelConfig | None:
    if (data / "dataset.json").is_file():
        from clipsonic.data.dataset import read_dataset_info

        return read_dataset_info(data).mel
    return None


def run_config_dict(config: VocoderTrainConfig, mel: MelConfig) -> dict[str, Any]:
    return {"train": config.to_dict(), "mel": mel.to_dict(), "generator": preset_config(config.preset).to_dict()}


def _prepare_run_dir(out: Path, config: VocoderTrainConfig, mel: MelConfig, resume: bool) -> Path | None:
    """Check ``out`` against ``resume``; returns the checkpoint to resume from (or None)."""
    checkpoints = list_checkpoints(out / "checkpoints")
    saved_path = out / "train_config.json"
    if checkpoints and not resume:
        raise VocoderError(f"{out} already holds a vocoder run ({checkpoints[-1].name}); pass --resume or choose another --out")
    if resume and checkpoints and saved_path.is_file():
        import json

        saved = json.loads(saved_path.read_text())
        now = run_config_dict(config, mel)
        diffs = [k for k in now["train"] if k not in RESUMABLE_FIELDS and saved["train"].get(k) != now["train"][k]]
        diffs += [k for k in ("mel", "generator") if saved.get(k) != now[k]]
        if diffs:
            raise VocoderError(f"cannot resume {out}: settings {diffs} differ from the saved run; use the same settings")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(saved_path, run_config_dict(config, mel))
    return checkpoints[-1] if resume and checkpoints else None


def build_models(config: VocoderTrainConfig, mel: MelConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Fresh generator (weight-norm form) and discriminator, seeded by ``config.seed``."""
    from clipsonic.vocoder.discriminators import build_discriminator

    torch.manual_seed(config.seed)
    return build_generator(preset_config(config.preset), mel.n_mels), build_discriminator(config.discriminator, mel.sample_rate)


def export_vocoder(generator: torch.nn.Module, config: VocoderTrainConfig, mel: MelConfig, target: Path) -> Path:
    """Write the inference directory for ``generator`` at ``target`` (temp dir, then rename)."""
    vocoder = BigVGANVocoder(mel, preset_config(config.preset), generator)
    with atomic_directory(target) as tmp:
        vocoder.save_pretrained(tmp)
    return target


def export_checkpoint(run_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
                      out: str | os.PathLike | None = None) -> Path:
    """Inference directory from a run's checkpoint (default: the latest) — e.g. after a stopped run."""
    import json

    run_dir = Path(run_dir)
    saved = run_dir / "train_config.json"
    if not saved.is_file():
        raise VocoderError(f"{run_dir} is not a vocoder training run (no train_config.json)")
    data = json.loads(saved.read_text())
    config = VocoderTrainConfig.from_dict(data["train"], source=f"{saved}:train")
    mel = MelConfig.from_dict(data["mel"], source=f"{saved}:mel")
    ckpts = [Path(checkpoint)] if checkpoint else list_checkpoints(run_dir / "checkpoints")[-1:]
    if not ckpts:
        raise VocoderError(f"{run_dir} has no checkpoint yet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        generator = build_generator(preset_config(config.preset), mel.n_mels)
    generator.load_state_dict(load_checkpoint(ckpts[0])["generator"])
    return export_vocoder(generator, config, mel, Path(out) if out else run_dir / "vocoder")

