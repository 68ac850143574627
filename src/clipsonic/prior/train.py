"""``train_prior``: our diffusion prior on image–caption pairs, as a task of the training loop.

The run directory is the loop's (clipsonic.train.harness), plus ``RUN/pairs.safetensors``, the
embedded pairs (computed once; a resumed run reuses them); the export is ``RUN/prior``
(``load_prior(RUN)``, ``clipsonic attach prior``). Every process draws the same global batch of
pair indices from a shared seeded generator and trains on its slice, so the data never depend on
timing and a resumed run continues the exact index stream.

Validation (held-out clips/images) reports the modality gap closing: the mean cosine between a
pair's image embedding and (a) the raw text embedding (``cos_zs``, what ZS conditions on), (b) the
training-free shift bridge (``cos_shift``) and (c) a prior sample (``cos_prior``, what PD uses).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from clipsonic.config import Config, ConfigError
from clipsonic.diffusion import GaussianDiffusion
from clipsonic.encoders import ClipModelRef, load_clip
from clipsonic.errors import ClipsonicError
from clipsonic.files import atomic_directory, atomic_output
from clipsonic.prior.data import DEFAULT_TEMPLATES, PAIRS_NAME, PairSet, collect_pairs
from clipsonic.prior.network import PriorNet, prior_preset
from clipsonic.prior.ours import DiffusionPrior, PriorConfig, _prior_diffusion, embedding_scale
from clipsonic.train.checkpoint import Checkpoint
from clipsonic.train.ema import EMA
from clipsonic.train.harness import LoopConfig, Progress, Run, Task, fit
from clipsonic.train.logs import read_metrics

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PriorTrainConfig(LoopConfig):
    """The prior's ``train`` section (defaults sized for a preprocessed dataset on one GPU or a CPU)."""

    RESUMABLE: ClassVar[tuple[str, ...]] = LoopConfig.RESUMABLE + ("val_pairs",)

    max_steps: int = 20_000
    lr: float = 3e-4
    warmup_steps: int = 100
    save_every: int = 2000
    keep_last: int = 2
    log_every: int = 100
    preset: Literal["tiny", "small", "base"] = "small"  # PriorNet size
    batch_size: int = 256  # pairs per step, over all processes
    weight_decay: float = 0.05  # DALL-E 2's prior used 6e-2
    ema: float = 0.999  # EMA decay of the exported weights, warmed up as the UNet's
    p_uncond: float = 0.1  # probability of dropping the text, for guidance (DALL-E 2: 10 %)
    val_fraction: float = 0.1  # of clips/images held out
    val_pairs: int = 256  # validation pairs sampled per evaluation (fixed seeds)
    templates: tuple[str, ...] = DEFAULT_TEMPLATES  # caption templates with {label}, for a dataset's labels
    sample_steps: int = 64  # the exported prior's default sampling chain
    guidance_scale: float = 1.0  # the exported prior's default guidance

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_ints(positive=("batch_size", "val_pairs", "sample_steps"))
        if self.weight_decay < 0 or not 0 <= self.ema < 1:
            raise ConfigError("need weight_decay >= 0 and 0 <= ema < 1")
        if not 0 <= self.p_uncond < 1 or not 0 <= self.val_fraction < 1:
            raise ConfigError("p_uncond and val_fraction must be in [0, 1)")

    def prior_config(self, dim: int) -> PriorConfig:
        return PriorConfig(network=prior_preset(self.preset, dim),
                           diffusion=_prior_diffusion().replace(p_uncond=self.p_uncond),
                           steps=self.sample_steps, guidance_scale=self.guidance_scale)


@dataclasses.dataclass(frozen=True)
class PriorRunConfig(Config):
    """A prior run's config.json sections."""

    train: PriorTrainConfig = PriorTrainConfig()


class PriorTask(Task):
    name, config_class, export_name = "prior", PriorRunConfig, "prior"

    def __init__(self, run: Run, source: str | os.PathLike, clip_model: str | None,
                 load_encoder: Callable[[str | None], Any] | None):
        super().__init__(run)
        cfg, acc = run.config.train, run.accelerator
        if cfg.batch_size % acc.num_processes:
            raise ClipsonicError(f"batch_size {cfg.batch_size} is not divisible by the {acc.num_processes} processes")
        if acc.is_main_process:
            self.pairs = _prepare_pairs(source, run.dir, cfg, clip_model,
                                        load_encoder or (lambda name: load_clip(name, device=acc.device)))
        acc.wait_for_everyone()
        if not acc.is_main_process:
            self.pairs = PairSet.load(run.dir / PAIRS_NAME)
        run.data.update(clip=self.pairs.clip.to_dict(), pairs=len(self.pairs))
        self.train_idx, self.val_idx = self.pairs.split(cfg.val_fraction)
        if len(self.train_idx) == 0:
            raise ClipsonicError(f"{source}: no training pairs left after holding out {cfg.val_fraction:.0%}")
        self.train_config, self.prior_config = cfg, cfg.prior_config(self.pairs.clip.dim)
        self.diffusion = GaussianDiffusion(self.prior_config.diffusion)
        torch.manual_seed(cfg.seed)  # the initial weights: the same on every process
        net = PriorNet(self.prior_config.network)
        self.ema = EMA(net, cfg.ema)
        optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.gens = {"data": torch.Generator().manual_seed(cfg.seed),
                     "noise": torch.Generator().manual_seed(cfg.seed + 1 + acc.process_index)}
        self.model, self.optimizer = acc.prepare(net, optimizer)
        self.ema.model.to(acc.device)
        self.scale = embedding_scale(self.pairs.clip.dim)
        self.image_emb, self.text_emb = self.pairs.image_emb.to(acc.device), self.pairs.text_emb.to(acc.device)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.accelerator.unwrap_model(self.model), "ema": self.ema.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.optimizer}

    def generators(self) -> dict[str, torch.Generator]:
        return self.gens

    def batches(self, position: dict[str, Any] | None) -> Iterator[torch.Tensor]:
        """Each step's global batch of pair indices from the shared generator; this process's slice ``[b, 2]``."""
        acc, n = self.accelerator, self.train_config.batch_size
        while True:
            chosen = self.train_idx[torch.randint(len(self.train_idx), (n,), generator=self.gens["data"])]
            yield self.pairs.pairs[chosen[acc.process_index::acc.num_processes]].to(acc.device)  # (image, caption) rows

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, Any]:
        with self.accelerator.autocast():
            losses = self.diffusion.training_losses(self.model, self.image_emb[batch[:, 0]] * self.scale,
                                                    self.text_emb[batch[:, 1]], generator=self.gens["noise"])
        self.backward(losses["loss"])
        grad_norm = self.step_optimizer("model")
        self.ema.update(self.accelerator.unwrap_model(self.model), step)
        return {"loss": losses["loss"].detach(), "grad_norm": grad_norm}

    @torch.no_grad()
    def validate(self, step: int) -> dict[str, float]:
        """The EMA prior's loss and the mean image–condition cosines (zs, shift, prior) on ≤ val_pairs held-out pairs."""
        if len(self.val_idx) == 0:
            return {}
        pairs, seed, prior = self.pairs, self.train_config.seed, DiffusionPrior(self.ema.model, self.prior_config,
                                                                                 self.pairs.clip)
        chosen = self.val_idx[torch.randperm(len(self.val_idx), generator=torch.Generator().manual_seed(seed))]
        chosen = chosen[:self.train_config.val_pairs]
        img, txt = pairs.image_emb[pairs.pairs[chosen, 0]], pairs.text_emb[pairs.pairs[chosen, 1]]  # [n, D]
        mse = prior.diffusion.training_losses(prior.net, img.to(prior.device) * self.scale, txt.to(prior.device),
                                              generator=torch.Generator().manual_seed(seed))["mse"].mean()
        train_img = pairs.image_emb[pairs.pairs[self.train_idx, 0]].mean(0)
        train_txt = pairs.text_emb[pairs.pairs[self.train_idx, 1]].mean(0)
        shifted = F.normalize(txt + train_img - train_txt, dim=-1)
        sampled = prior.sample([], txt, generators=[torch.Generator().manual_seed(seed + i) for i in range(len(chosen))])
        self.ema.model.eval()
        cos = F.cosine_similarity
        m = {"loss": float(mse), "cos_zs": float(cos(txt, img).mean()), "cos_shift": float(cos(shifted, img).mean()),
             "cos_prior": float(cos(sampled, img).mean()), "pairs": float(len(chosen))}
        log.info("step %d: val loss %.4f, cosine image·text %.3f (zs) %.3f (shift) %.3f (prior)",
                 step, m["loss"], m["cos_zs"], m["cos_shift"], m["cos_prior"])
        return m

    @classmethod
    def export(cls, run: Run, checkpoint: Checkpoint, out: Path, data: str | os.PathLike | None = None) -> Path:
        """The prior directory of the checkpoint's EMA weights, with the run's last logged loss and validation."""
        cfg, clip = run.config.train, ClipModelRef.from_dict(run.data["clip"])
        prior_config = cfg.prior_config(clip.dim)
        net = PriorNet(prior_config.network)
        net.load_state_dict(checkpoint.module("ema"))
        train, val = ([r for r in read_metrics(run.dir, kind) if r["step"] <= checkpoint.step] for kind in ("train", "val"))
        training = {"source": run.data["source"], "pairs": run.data["pairs"], "steps": checkpoint.step,
                    "train_loss": train[-1]["loss"] if train else None,
                    "validation": {k: v for k, v in val[-1].items() if k not in ("step", "kind")} if val else {},
                    "config": cfg.to_dict()}
        with atomic_directory(out) as tmp:
            DiffusionPrior(net, prior_config, clip, training=training).save_pretrained(tmp)
        log.info("saved the prior to %s", out)
        return out


def _prepare_pairs(source, run_dir: Path, config: PriorTrainConfig, clip_model: str | None,
                   load_encoder: Callable[[str | None], Any]) -> PairSet:
    """The run's pairs: reused from ``RUN/pairs.safetensors`` when present, else embedded and saved."""
    path = run_dir / PAIRS_NAME
    if path.is_file():
        pairs = PairSet.load(path)
        if Path(pairs.source).resolve() != Path(source).resolve():
            raise ClipsonicError(f"{run_dir} holds the pairs of {pairs.source}, not {source}; use a new run directory")
        log.info("reusing the %d embedded pairs in %s", len(pairs), path)
        return pairs
    pairs = collect_pairs(source, load_encoder, clip_model=clip_model, templates=config.templates)
    with atomic_output(path) as tmp:
        pairs.save(tmp)
    return pairs


def train_prior(source: str | os.PathLike, run_dir: str | os.PathLike, overrides: dict[str, dict[str, Any]] | None = None,
                *, resume: bool = False, clip_model: str | None = None, cpu: bool = False,
                load_encoder: Callable[[str | None], Any] | None = None, progress: Progress | None = None) -> Path:
    """Train (or resume) a prior on the pairs of ``source``; returns ``run_dir`` (the prior in RUN/prior).

    ``overrides``: ``{"train": {...}}`` (PriorTrainConfig fields); ``clip_model`` embeds a CSV or a
    folder (a dataset's own CLIP by default); ``load_encoder(name)`` defaults to :func:`load_clip`.
    """
    return fit(PriorTask, run_dir, overrides, data={"source": str(Path(source).resolve())}, resume=resume,
               progress=progress, cpu=cpu, source=source, clip_model=clip_model, load_encoder=load_encoder)
