"""What a training run is: :class:`TrainConfig` (the loop) + the network + the diffusion process.

A run directory stores the fully resolved :class:`RunConfig` as ``config.json``; passing that file
back as ``--config`` reproduces the run. A ``--config`` file may also be partial::

    {"train": {"preset": "small", "batch_size": 32},
     "unet": {"dropout": 0.0},              # overrides on top of the preset
     "diffusion": {"prediction": "v"}}

Precedence: dataclass defaults < preset < config file < command-line flags. ``unet.cond_dim``
always comes from the dataset (the CLIP embedding width) and ``unet.learn_sigma`` from the
diffusion config; a file that sets them otherwise is refused.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from clipsonic.config import Config, ConfigError
from clipsonic.diffusion import DiffusionConfig
from clipsonic.files import read_json
from clipsonic.models import UNET_PRESETS, MelUNetConfig

PRECISIONS = ("no", "bf16", "fp16")

# Flags that may change when a run is resumed: they decide how long and how often, not what is learned.
RESUMABLE_FIELDS = ("max_steps", "save_every", "sample_every", "val_every", "keep_last", "log_every",
                    "num_workers", "export_at_end")


@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    """The training loop. Defaults follow the paper / Improved DDPM; CPU runs pass ``preset="tiny"``."""

    preset: str = "paper"  # MelUNet preset (models.UNET_PRESETS): paper | small | tiny
    # Per process and micro-step: 2 GPUs × 64 = improved-diffusion's batch of 128.
    # The effective batch is batch_size × grad_accum × processes.
    batch_size: int = 64
    lr: float = 1e-4  # Improved DDPM, AdamW
    weight_decay: float = 0.0  # improved-diffusion trains without weight decay
    warmup_steps: int = 0  # linear lr warm-up from 0; improved-diffusion uses none
    max_steps: int = 200_000  # the paper: 200K iterations on MUSIC (500K on VGGSound)
    grad_accum: int = 1  # micro-batches per optimizer step
    grad_clip: float = 1.0  # max global grad norm (0: off); a guard against rare spikes, not a tuned knob
    precision: str = "no"  # accelerate mixed precision: no | bf16 | fp16
    # EMA of the weights, exported as the pipeline's UNet. With ema_warmup the decay used at
    # optimizer step n is min(ema, (1 + n) / (10 + n)) (diffusers' EMAModel warm-up): 0.92 at step
    # 100, 0.991 at 1000, 0.9991 at 10⁴, so a short CPU run's EMA already tracks the weights
    # instead of staying at the random init for the ~10⁴ steps a fixed 0.9999 needs.
    ema: float = 0.9999
    ema_warmup: bool = True
    save_every: int = 5000  # checkpoint every N optimizer steps (and at the end)
    keep_last: int = 3  # checkpoints kept on disk
    log_every: int = 50  # scalars averaged over N steps → TensorBoard + metrics.jsonl
    sample_every: int = 5000  # a sampled mel image + Griffin-Lim audio (0: off)
    sample_steps: int = 50  # DDIM steps of those samples: short, it is a progress check
    guidance_scale: float = 1.5  # the paper's best FAD
    val_every: int = 1000  # validation loss on the test split (0: off)
    val_samples: int = 64  # validation clips (fixed t and noise → comparable across steps)
    seed: int = 0
    num_workers: int = 2  # DataLoader workers per process
    shuffle_buffer: int = 1000  # samples in each reader's shuffle buffer
    bank_size: int = 4096  # image embeddings exported for the retrieval bridge
    gradient_checkpointing: bool = False  # recompute activations: ~30 % slower, far less memory
    export_at_end: bool = True  # write RUN_DIR/pipeline when max_steps is reached

    def __post_init__(self) -> None:
        if self.preset not in UNET_PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; choose one of {sorted(UNET_PRESETS)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        for name in ("batch_size", "max_steps", "grad_accum", "save_every", "keep_last", "log_every",
                     "sample_steps", "val_samples", "shuffle_buffer"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "sample_every", "val_every", "num_workers", "bank_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"ema must be in [0, 1), got {self.ema}")
        if not self.lr > 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("lr must be > 0, weight_decay and grad_clip >= 0")

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then constant."""
        if self.warmup_steps and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        return self.lr

    def ema_decay_at(self, step: int) -> float:
        """EMA decay applied after optimizer step ``step`` (1-based count of updates so far)."""
        return min(self.ema, (1 + step) / (10 + step)) if self.ema_warmup else self.ema


@dataclasses.dataclass(frozen=True)
class RunConfig(Config):
    """Everything that defines a run; ``RUN_DIR/config.json``."""

    train: TrainConfig
    unet: MelUNetConfig
    diffusion: DiffusionConfig


@dataclasses.dataclass(frozen=True)
class ConfigFile:
    """A (possibly partial) ``--config`` file: overrides per section, validated against the dataclasses."""

    train: dict[str, Any]
    unet: dict[str, Any]
    diffusion: dict[str, Any]


def read_config_file(path: str | os.PathLike) -> ConfigFile:
    """Read a ``--config`` JSON file; unknown sections or keys are refused."""
    path = Path(path)
    data = read_json(path)
    sections = {"train": TrainConfig, "unet": MelUNetConfig, "diffusion": DiffusionConfig}
    if not isinstance(data, dict) or set(data) - set(sections):
        raise ConfigError(f"{path}: expected a JSON object with sections {sorted(sections)}, "
                          f"got {sorted(data) if isinstance(data, dict) else type(data).__name__}")
    out = {}
    for name, cls in sections.items():
        section = data.get(name, {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - known) if isinstance(section, dict) else ["<not an object>"]
        if unknown:
            raise ConfigError(f"{path}: unknown key(s) {unknown} in section '{name}'; known keys are {sorted(known)}")
        out[name] = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}
    return ConfigFile(**out)


def resolve_run_config(cond_dim: int, file: ConfigFile | None = None,
                       flags: dict[str, Any] | None = None) -> RunConfig:
    """Defaults < preset < ``file`` < ``flags`` (TrainConfig fields, plus ``prediction`` for the diffusion)."""
    file = file or ConfigFile({}, {}, {})
    flags = dict(flags or {})
    diffusion_flags = {k: flags.pop(k) for k in ("prediction",) if k in flags}
    try:
        train = TrainConfig(**{**file.train, **flags})
        diffusion = DiffusionConfig(**{**file.diffusion, **diffusion_flags})
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    for key, want in (("cond_dim", cond_dim), ("learn_sigma", diffusion.learn_sigma)):
        if key in file.unet and file.unet[key] != want:
            raise ConfigError(f"config file sets unet.{key}={file.unet[key]!r} but the "
                              f"{'dataset' if key == 'cond_dim' else 'diffusion config'} needs {want!r}")
    try:
        unet = dataclasses.replace(UNET_PRESETS[train.preset], **{**file.unet, "cond_dim": cond_dim,
                                                                 "learn_sigma": diffusion.learn_sigma})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"unet overrides: {exc}") from None
    return RunConfig(train=train, unet=unet, diffusion=diffusion)


def apply_resume_flags(saved: RunConfig, flags: dict[str, Any]) -> RunConfig:
    """The saved run's config with the flags a resume may change; any other differing flag is refused."""
    changed = {}
    for key, value in flags.items():
        current = getattr(saved.diffusion if key == "prediction" else saved.train, key)
        if value == current:
            continue
        if key not in RESUMABLE_FIELDS:
            raise ConfigError(
                f"the run was trained with {key}={current!r}; resuming with {key}={value!r} would not continue "
                f"the same run (only {', '.join(RESUMABLE_FIELDS)} may change): drop the flag or start a new --out"
            )
        changed[key] = value
    return saved.replace(train=saved.train.replace(**changed)) if changed else saved
