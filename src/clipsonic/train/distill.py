"""``distill``: a pipeline made few-step with its guidance folded in, as a task of the training loop.

Progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion Models",
Algorithm 2) of a guided model (Meng et al. 2023, "On Distillation of Guided Diffusion Models"): the first teacher
is the pipeline's network with classifier-free guidance at w (and the pipeline's guidance rescale), two passes per
step; every student is conditional only, one pass per step, and learns to make in one DDIM step (eta 0, x_0 clamped)
what its teacher makes in two. The grid is respace's "trailing" one, whose K steps are every other step of the 2K,
so one stage halves the steps (N0 → N0/2 → … → K) and its student teaches the next. Students start from the
teacher's weights. A stage is ``stage_steps`` training steps, so the stage and its teacher follow from the step and a
checkpoint holds both networks (resume works across stage boundaries); a checkpoint at the end of a stage exports that
stage's student (``clipsonic export RUN --step S``). The export is a pipeline directory with the input's components
whose scheduler config records the distilled steps and guidance (diffusion/config.py).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from clipsonic.config import Config, ConfigError, Fraction, NonNegative, NonNegativeInt, Positive, PositiveInt
from clipsonic.data.dataset import DatasetInfo, read_dataset_info
from clipsonic.diffusion import DEFAULT_GUIDANCE_SCALE, DiffusionConfig, GaussianDiffusion, guided_denoiser
from clipsonic.diffusion.guidance import Denoiser
from clipsonic.diffusion.losses import mean_flat
from clipsonic.diffusion.respace import space_timesteps
from clipsonic.errors import ClipsonicError
from clipsonic.export import load_stats, model_fingerprint, read_model_index, write_pipeline_dir
from clipsonic.models import MelUNet, MelUNetConfig
from clipsonic.train.checkpoint import Checkpoint
from clipsonic.train.harness import LoopConfig, Progress, Run, Task, fit
from clipsonic.train.unet import UNetTask, train_stream


@dataclasses.dataclass(frozen=True)
class DistillTrainConfig(LoopConfig):
    """The distillation's ``train`` section; ``max_steps`` follows from the stages (``teacher_steps`` → ``steps``)."""

    RESUMABLE: ClassVar[tuple[str, ...]] = LoopConfig.RESUMABLE + ("num_workers",)

    steps: PositiveInt = 4  # K: the distilled pipeline's steps, one network pass each
    teacher_steps: PositiveInt = 64  # N0: the guided teacher's DDIM steps, K times a power of two
    stage_steps: PositiveInt = 1000  # training steps per halving
    guidance_scale: NonNegative = DEFAULT_GUIDANCE_SCALE  # w folded into the students
    guidance_rescale: Fraction = 1.0  # folded too: the pipeline's default (pipeline.DEFAULT_GUIDANCE_RESCALE)
    lr: Positive = 2e-4  # annealed linearly to 0 within each stage (Salimans & Ho 2022, section 4)
    batch_size: PositiveInt = 16
    max_steps: PositiveInt = 4000  # stages × stage_steps (set from them)
    save_every: PositiveInt = 1000  # = stage_steps by default: a checkpoint, so an export, per stage's student
    keep_last: PositiveInt = 8  # every stage's checkpoint (N0/K up to 2^8)
    val_every: NonNegativeInt = 0  # no validation loss: the students are compared by `clipsonic evaluate`
    num_workers: NonNegativeInt = 0
    shuffle_buffer: PositiveInt = 1000

    def __post_init__(self) -> None:
        super().__post_init__()
        ratio = self.teacher_steps // self.steps
        if self.teacher_steps % self.steps or ratio < 2 or ratio & (ratio - 1):
            raise ValueError(f"teacher_steps ({self.teacher_steps}) must be steps ({self.steps}) times a power of two "
                             f">= 2, e.g. {self.steps * 16}")

    @property
    def stages(self) -> int:
        return (self.teacher_steps // self.steps).bit_length() - 1

    def student_steps(self, step: int) -> int:
        """The student's steps at training step ``step`` (1-based; step 0 counts as the first stage)."""
        return self.teacher_steps >> (max(step - 1, 0) // self.stage_steps + 1)

    def lr_at(self, step: int) -> float:
        return self.lr * (1 - (step % self.stage_steps) / self.stage_steps)


@dataclasses.dataclass(frozen=True)
class DistillConfig(Config):  # a distill run's config.json sections: the loop and the teacher's network and process
    train: DistillTrainConfig
    unet: MelUNetConfig
    diffusion: DiffusionConfig


def ddim_to(z: Tensor, x0: Tensor, abar: Tensor, abar_next: Tensor) -> Tensor:
    """One DDIM step (eta 0) from ``z`` at alpha_bar ``abar`` to ``abar_next`` with x_0 estimate ``x0``, per row:
    samplers.ddim_step (which takes one float alpha_bar per batch) for a batch whose rows sit at different steps.
    ``abar``/``abar_next`` broadcast against ``z`` [B, C, H, W] (e.g. [B, 1, 1, 1])."""
    eps = (z - abar.sqrt() * x0) / (1 - abar).sqrt()
    return abar_next.sqrt() * x0 + (1 - abar_next).sqrt() * eps


def student_target(z: Tensor, z_next: Tensor, abar: Tensor, abar_next: Tensor) -> Tensor:
    """x~ = (z'' - (s''/s) z) / (a'' - (s''/s) a), a = sqrt(alpha_bar), s = sqrt(1 - alpha_bar): the x_0 whose one
    DDIM step from ``z`` (at ``abar``) lands on ``z_next`` (at ``abar_next``) (Salimans & Ho 2022, Algorithm 2)."""
    ratio = ((1 - abar_next) / (1 - abar)).sqrt()
    return (z_next - ratio * z) / (abar_next.sqrt() - ratio * abar.sqrt())


@torch.no_grad()
def teacher_two_steps(teacher: Denoiser, z: Tensor, t: Tensor, t_mid: Tensor, abar: Tensor, abar_mid: Tensor,
                      abar_next: Tensor) -> Tensor:
    """The teacher's two DDIM steps (eta 0, x_0 clamped as the pipeline samples): ``z`` at original steps ``t``
    [B] → ``t_mid`` → alpha_bar ``abar_next`` (1: x_0)."""
    x0 = teacher(z, t)[0].clamp(-1, 1)
    z_mid = ddim_to(z, x0, abar, abar_mid)
    return ddim_to(z_mid, teacher(z_mid, t_mid)[0].clamp(-1, 1), abar_mid, abar_next)


class DistillTask(Task):
    name, config_class, export_name = "distill", DistillConfig, "pipeline"

    def __init__(self, run: Run, info: DatasetInfo):
        super().__init__(run)
        cfg, acc = run.config.train, run.accelerator
        self.info, self.cfg = info, cfg
        self.diffusion = GaussianDiffusion(run.config.diffusion)
        teacher = MelUNet.from_pretrained(read_model_index(run.data["model"]).component_dir("unet"))
        if teacher.config != run.config.unet:
            raise ClipsonicError(f"{run.data['model']}: its UNet config changed since the run started; distil it in a "
                                 "new run directory")
        self.teacher = teacher.to(acc.device).eval().requires_grad_(False)
        student = copy.deepcopy(teacher).train().requires_grad_(True)
        self.gen = torch.Generator().manual_seed((cfg.seed * 100_003 + acc.process_index + 1) % 2**64)
        optimizer = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.model, self.optimizer = acc.prepare(student, optimizer)

    @classmethod
    def resolve_config(cls, overrides: dict[str, dict[str, Any]], data: dict[str, Any]) -> DistillConfig:
        if set(overrides) - {"train"} or "max_steps" in overrides.get("train", {}):
            raise ConfigError("distill takes only train settings other than max_steps (it is stages × stage_steps);"
                              " the network and process are the pipeline's")
        train = DistillTrainConfig.from_dict(overrides.get("train", {}), source="train")
        index = read_model_index(data["model"])
        diffusion = DiffusionConfig.load(index.component_dir("scheduler") / "config.json")
        if diffusion.distilled_steps is not None:
            raise ClipsonicError(f"{data['model']} is already distilled ({diffusion.distilled_steps} steps); distil "
                                 "the pipeline it was made from with a smaller --steps")
        unet = MelUNetConfig.load(index.component_dir("unet") / "config.json")
        return DistillConfig(train=train.replace(max_steps=train.stages * train.stage_steps), unet=unet,
                             diffusion=diffusion)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"student": self.accelerator.unwrap_model(self.model), "teacher": self.teacher}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"student": self.optimizer}

    def generators(self) -> dict[str, torch.Generator]:
        return {"train": self.gen}

    def position(self) -> dict[str, Any]:
        return self.stream.position()

    def batches(self, position: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
        self.stream = train_stream(self.info, self.cfg, self.accelerator, position)
        return iter(self.stream)

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, Any]:
        cfg, acc, device = self.cfg, self.accelerator, self.accelerator.device
        if step > 1 and (step - 1) % cfg.stage_steps == 0:  # a new stage: the student so far teaches it
            self.teacher.load_state_dict(acc.unwrap_model(self.model).state_dict())
        x0, cond = batch["mel"].to(device), batch["cond"].to(device)  # [B, 1, 64, F], [B, D]
        terms = self.loss(self.model, x0, cond, cfg.student_steps(step), first=step <= cfg.stage_steps)
        self.backward(terms["loss"])
        grad_norm = self.step_optimizer("student")
        return {"loss": terms["loss"].detach(), "grad_norm": grad_norm, "student_steps": float(terms["steps"]),
                "clips": batch["keys"]}

    def loss(self, student: torch.nn.Module, x0: Tensor, cond: Tensor, steps: int, first: bool) -> dict[str, Any]:
        """Per-example loss [B] of a student of ``steps`` steps against its teacher's 2 × ``steps`` (the guided
        network when ``first``): max(SNR, 1) ‖x~ − x̂_0‖² at a uniform step of the student's grid per example."""
        c, T, full = self.run.config.diffusion, self.diffusion.num_timesteps, self.diffusion.schedule
        grid, fine = space_timesteps(T, steps, "trailing"), space_timesteps(T, 2 * steps, "trailing")
        i = torch.randint(steps, (len(x0),), generator=self.gen)  # [B] student indices
        t, t_mid = grid[i], fine[2 * i]  # the teacher's steps t → t_mid → grid[i - 1] (x_0 when i = 0)
        abar = full.alphas_cumprod.float()
        a, a_mid = abar[t], abar[t_mid]
        a_next = torch.where(i > 0, abar[grid[(i - 1).clamp(min=0)]], torch.ones(()))
        a, a_mid, a_next = (v.reshape(-1, 1, 1, 1).to(x0.device) for v in (a, a_mid, a_next))
        t, t_mid = t.to(x0.device), t_mid.to(x0.device)
        z = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=self.gen).to(x0.device)
        w, rescale = (self.cfg.guidance_scale, self.cfg.guidance_rescale) if first else (c.conditional_scale, 0.0)
        common = dict(formula=c.guidance_formula, prediction=c.prediction, schedule=full, learn_sigma=c.learn_sigma)
        teacher = guided_denoiser(self.teacher, cond, guidance_scale=w, rescale=rescale, **common)
        target = student_target(z, teacher_two_steps(teacher, z, t, t_mid, a, a_mid, a_next), a, a_next)
        x0_hat = guided_denoiser(student, cond, guidance_scale=c.conditional_scale, **common)(z, t)[0]
        weight = (a / (1 - a)).clamp(min=1.0).flatten()  # truncated SNR weighting (Salimans & Ho 2022, sec. 4)
        return {"loss": weight * mean_flat((x0_hat - target) ** 2), "steps": steps}

    @classmethod
    def export(cls, run: Run, checkpoint: Checkpoint, out: Path, data: str | os.PathLike | None = None) -> Path:
        """The input pipeline with the checkpoint's student as its UNet and a scheduler config that says it is
        distilled to that stage's steps; clip, prior, stats and vocoder are the input's."""
        if data is not None:
            raise ClipsonicError("a distilled pipeline keeps the statistics of the pipeline it was distilled from; "
                                 "drop --data")
        cfg, source = run.config.train, Path(run.data["model"])
        index, steps = read_model_index(source), cfg.student_steps(checkpoint.step)
        unet = MelUNet(run.config.unet)
        unet.load_state_dict(checkpoint.module("student"))
        diffusion = run.config.diffusion.replace(distilled_steps=steps, distilled_guidance_scale=cfg.guidance_scale,
                                                 distilled_guidance_rescale=cfg.guidance_rescale)
        copies = {name: partial(shutil.copytree, index.component_dir(name)) for name in ("clip", "prior", "vocoder")
                  if index.component_dir(name) is not None}
        distilled = {"from": str(source.resolve()), "dataset": run.data["dataset"], "steps": steps,
                     "teacher_steps": cfg.teacher_steps, "training_steps": checkpoint.step,
                     "stage_steps": cfg.stage_steps, "batch_size": cfg.batch_size, "lr": cfg.lr,
                     "guidance_scale": cfg.guidance_scale, "guidance_rescale": cfg.guidance_rescale,
                     "checkpoint": str(checkpoint.path.resolve())}
        stats = load_stats(source) if index.component_dir("stats") is not None else None
        return write_pipeline_dir(out, unet=unet, diffusion=diffusion, mel=index.mel, clip=index.clip, stats=stats,
                                  training={**index.training, "distilled": distilled}, extra_components=copies)


def distill(model_dir: str | os.PathLike, data_dir: str | os.PathLike, run_dir: str | os.PathLike,
            overrides: dict[str, dict[str, Any]] | None = None, *, resume: bool = False, restart: bool = False,
            progress: Progress | None = None) -> Path:
    """Distil the pipeline in ``model_dir`` on the train split of ``data_dir`` (a dataset of the pipeline's CLIP)
    into ``run_dir``; the distilled pipeline is ``run_dir/pipeline``. ``overrides``: ``{"train": {...}}``."""
    index, info = read_model_index(model_dir), read_dataset_info(data_dir)
    clip = {**index.clip.to_dict(), "model": str(index.component_dir("clip") or index.clip.model)}
    saved = {"dataset": index.training.get("dataset", "?"), "mel": index.mel.to_dict(), "clip": clip}
    UNetTask.check_data(saved, {"dataset": info.root}, Path(model_dir))  # the CLIP and mels of the pipeline
    if not info.shard_paths("train"):
        raise ClipsonicError(f"{info.root}: the train split has no shards; re-run preprocess")
    data = {"model": str(Path(model_dir).resolve()), "model_weights": model_fingerprint(model_dir, ("unet", "scheduler")),
            "dataset": str(info.root.resolve()), "clip": info.clip.to_dict(), "train_clips": info.num_clips("train")}
    return fit(DistillTask, run_dir, overrides, data=data, resume=resume, restart=restart, progress=progress,
               info=info)
