"""The one training loop: a :class:`Task` (unet.py, prior/train.py, the vocoder GAN) owns its modules, data and
step; :func:`fit` owns accelerate, the run directory, lr schedule, clipping, guards, logs and checkpoints.

A new task: a LoopConfig subclass as its ``train`` section, a Config of all sections, a Task subclass, an
entry point calling :func:`fit`, a line in :data:`TASKS`. The map: docs/architecture.md.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import importlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from accelerate import Accelerator
from torch import nn

from clipsonic import __version__
from clipsonic.config import Config, ConfigError
from clipsonic.errors import ClipsonicError
from clipsonic.files import read_json, write_json_atomic
from clipsonic.train.checkpoint import Checkpoint, find_checkpoint, remove_stale_temporaries, save_checkpoint
from clipsonic.train.logs import MetricsLog, write_weight_hash

log = logging.getLogger(__name__)

RUN_FORMAT, RUN_VERSION = "clipsonic-run", 2
CONFIG_NAME = "config.json"
# The class of each task, imported by export_run: prior/ and vocoder/ import train/, so not the reverse.
TASKS = {"unet": "clipsonic.train.unet:UNetTask", "prior": "clipsonic.prior.train:PriorTask",
         "vocoder": "clipsonic.vocoder.task:VocoderTask"}

Progress = Callable[[int, int, "dict[str, float] | None"], None]  # (step, max_steps, the logged record or None)


@dataclasses.dataclass(frozen=True)
class LoopConfig(Config):
    """The loop settings every task shares: its ``train`` section extends this (and may change the defaults)."""

    # May change when a run resumes: they decide how long and how often, not what is learned.
    RESUMABLE: ClassVar[tuple[str, ...]] = ("max_steps", "save_every", "keep_last", "log_every", "val_every",
                                            "export_at_end")

    max_steps: int = 10_000
    lr: float = 1e-4
    warmup_steps: int = 0  # linear lr warm-up from 0
    grad_clip: float = 1.0  # max global grad norm per optimizer (0: off)
    precision: Literal["no", "bf16", "fp16"] = "no"  # accelerate mixed precision
    seed: int = 0
    save_every: int = 5000  # checkpoint every N steps (and at the end)
    keep_last: int = 3  # checkpoints kept on disk
    log_every: int = 50  # scalars averaged over N steps → metrics.jsonl + TensorBoard
    val_every: int = 1000  # validation every N steps and at the end (0: only at the end)
    export_at_end: bool = True  # write the export folder when max_steps is reached

    def __post_init__(self) -> None:
        self.check_ints(positive=("max_steps", "save_every", "keep_last", "log_every"),
                        non_negative=("warmup_steps", "val_every"))
        if not self.lr > 0 or self.grad_clip < 0:
            raise ConfigError(f"lr must be > 0 and grad_clip >= 0, got lr={self.lr}, grad_clip={self.grad_clip}")

    def check_ints(self, positive: Sequence[str] = (), non_negative: Sequence[str] = ()) -> None:
        for names, low in ((positive, 1), (non_negative, 0)):
            for name in names:
                value = getattr(self, name)
                if not isinstance(value, int) or isinstance(value, bool) or value < low:
                    raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based): linear warm-up, then constant."""
        return self.lr * min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else self.lr


class EMA:
    """A frozen float32 copy of ``model``: ``ema ← d · ema + (1 − d) · weights`` after each step, buffers copied.

    With ``warmup`` the decay after ``n`` updates is ``min(decay, (1 + n) / (10 + n))`` (diffusers' EMAModel):
    0.92 at step 100, 0.991 at 1000, so a short run's EMA already tracks the weights."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup = decay, warmup

    @torch.no_grad()
    def update(self, model: nn.Module, n: int) -> None:
        decay = min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay
        ema_params = list(self.model.parameters())
        params = [p.detach().to(e.dtype) for e, p in zip(ema_params, model.parameters(), strict=True)]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for e, b in zip(self.model.buffers(), model.buffers(), strict=True):
            e.copy_(b)


@dataclasses.dataclass
class Run:
    """A run directory as the loop and the tasks see it (``accelerator`` is None when exporting)."""

    dir: Path
    task: str
    config: Any  # the task's config_class: every section, ``config.train`` a LoopConfig
    data: dict[str, Any]  # what the run trains on (JSON); a task may add to it in __init__
    accelerator: Any = None
    logs: MetricsLog | None = None
    created: str | None = None


class Task:
    """One thing to train: set the class attributes, implement the methods.

    ``__init__(run, **kwargs)`` builds modules, optimizers and generators on every process and
    ``accelerator.prepare``s them; the loop then restores the newest checkpoint into them and calls
    :meth:`train_step` with each item of :meth:`batches`."""

    name: ClassVar[str]  # "unet" | "prior" | "vocoder": config.json's "task", the key in TASKS
    config_class: ClassVar[type[Config]]  # all sections; its ``train`` field is a LoopConfig subclass
    export_name: ClassVar[str]  # RUN/<export_name> is what export() writes by default

    def __init__(self, run: Run):
        self.run, self.config, self.accelerator = run, run.config, run.accelerator
        self._step = 0  # the step being trained (1-based), for the guards' messages

    @classmethod
    def resolve_config(cls, overrides: dict[str, dict[str, Any]], data: dict[str, Any]) -> Config:
        """The config of a new run: the defaults with ``overrides`` (sections of field values)."""
        return cls.config_class.from_dict(overrides, source="--config/flags")

    @classmethod
    def check_data(cls, saved: dict[str, Any], data: dict[str, Any], run_dir: Path) -> None:
        """On resume: refuse ``data`` that differs from what the run was trained on (``saved``)."""
        for key, value in data.items():
            if saved.get(key) != value:
                raise ClipsonicError(f"{run_dir} was trained on {key}={saved.get(key)!r}, not {value!r}; "
                                     "resume with the same data or start a new run")

    def prepare_with_ema(self, net: nn.Module, decay: float, weight_decay: float, warmup: bool = True) -> None:
        """For a task training one network: ``net`` with AdamW, prepared (``self.model``, ``self.optimizer``), and its
        EMA (``self.ema``), which the default :meth:`modules` and :meth:`optimizers` name."""
        self.ema = EMA(net, decay, warmup)
        optimizer = torch.optim.AdamW(net.parameters(), lr=self.config.train.lr, weight_decay=weight_decay)
        self.model, self.optimizer = self.accelerator.prepare(net, optimizer)
        self.ema.model.to(self.accelerator.device)

    def modules(self) -> dict[str, nn.Module]:
        """The modules a checkpoint holds, unwrapped (default: those of :meth:`prepare_with_ema`)."""
        return {"model": self.accelerator.unwrap_model(self.model), "ema": self.ema.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The prepared optimizers; the loop sets their lr to ``config.train.lr_at(step)`` before each step."""
        return {"model": self.optimizer}

    def generators(self) -> dict[str, torch.Generator]:
        """This process's generators, saved per process (as torch's global RNGs)."""
        return {}

    def position(self) -> dict[str, Any]:
        """This process's place in its data (JSON), given back to :meth:`batches` on resume."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """JSON facts for the checkpoint's state.json (main process)."""
        return {}

    def batches(self, position: dict[str, Any] | None) -> Iterator[Any]:
        """An endless iterator of what one :meth:`train_step` takes, from ``position``."""
        raise NotImplementedError

    def train_step(self, batch: Any, step: int) -> dict[str, Any]:
        """Step ``step`` (1-based), through :meth:`backward` and :meth:`step_optimizer`; returns what to log.

        A tensor holds per-example values (averaged over every process's examples of the log window), a float is
        averaged over the window's steps; ``"clips"`` names the examples (debug)."""
        raise NotImplementedError

    def validate(self, step: int) -> dict[str, float]:
        """Main process, every ``val_every`` steps and at the end: the "val" metrics."""
        return {}

    def sample(self, step: int) -> None:
        """Main process, after every step: progress samples when due."""

    def out_of_memory(self) -> str:
        """The end of the message "out of GPU memory …": what to do."""
        return "(lower --batch-size or use --precision bf16)"

    @classmethod
    def export(cls, run: Run, checkpoint: Checkpoint, out: Path, data: str | os.PathLike | None = None) -> Path:
        """Write ``checkpoint``'s usable folder to ``out`` (``data``: the data it reads, if any)."""
        raise NotImplementedError

    def backward(self, loss: torch.Tensor, *, scale: float = 1.0,
                 describe: Callable[[list[int]], list[str]] | None = None) -> None:
        """``accelerator.backward(loss.mean() * scale)``, ``loss`` ``[N]`` or scalar, after the non-finite guard:
        if any process has a NaN/inf loss all stop before the update, naming the step and ``describe(bad)``."""
        acc, step = self.accelerator, self._step
        bad = ~torch.isfinite(loss.detach().reshape(-1))
        if float(acc.reduce(bad.any().float().reshape(1), reduction="sum")) == 0:
            acc.backward(loss.mean() * scale)
            return
        if not bool(bad.any()):
            raise ClipsonicError(f"step {step}: another process had a non-finite loss (its error names the clips)")
        index = torch.nonzero(bad.cpu()).flatten().tolist()
        if describe is None:
            raise ClipsonicError(f"step {step}: non-finite loss ({float(loss.detach().float().mean())}) on process "
                                 f"{acc.process_index}; no checkpoint was written for this step. Lower --lr or use "
                                 "--precision no, or resume from the last checkpoint")
        raise ClipsonicError(
            f"step {step}: non-finite loss on process {acc.process_index} for {len(index)} of {bad.numel()} clips in "
            f"the batch: {', '.join(describe(index))}; no checkpoint was written for this step. Fix or drop those "
            "clips (re-run preprocess), or lower --lr if the inputs are finite")

    def step_optimizer(self, name: str) -> float:
        """Clip optimizer ``name``'s gradients to ``grad_clip``, step, zero them (only its own); the norm."""
        acc, optimizer, clip = self.accelerator, self.optimizers()[name], self.config.train.grad_clip
        acc.unscale_gradients(optimizer=optimizer)  # a no-op unless fp16
        params = [p for group in optimizer.param_groups for p in group["params"]]
        norm = float(torch.nn.utils.clip_grad_norm_(params, clip or float("inf")))
        if not math.isfinite(norm) and acc.mixed_precision != "fp16":  # fp16: the scaler skips the step
            raise ClipsonicError(f"step {self._step}: non-finite gradient norm ({norm}) of {name} with a finite loss; "
                                 "lower --lr or use --precision no")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm


# --- config files and the run record --------------------------------------------------------------

def config_sections(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The config sections of a ``--config`` object (a run's config.json less its record keys)."""
    return {k: v for k, v in data.items() if k not in ("format", "version", "task", "created", "clipsonic_version",
                                                       "data")}


def read_run(run_dir: str | os.PathLike) -> Run:
    """The run in ``run_dir`` (its config.json); one line naming the version of a run written before version 2."""
    run_dir = Path(run_dir)
    path = _config_path(run_dir)
    if path is None:
        raise ClipsonicError(f"{run_dir} is not a clipsonic run directory (no {CONFIG_NAME})")
    record = read_json(path, "run config")
    if not isinstance(record, dict) or (record.get("format"), record.get("version")) != (RUN_FORMAT, RUN_VERSION):
        version = record.get("version", 1) if isinstance(record, dict) else "?"
        raise ClipsonicError(f"{run_dir} is a run of {RUN_FORMAT} version {version} (written before the shared "
                             f"training loop); this clipsonic reads version {RUN_VERSION}: export it with the "
                             f"clipsonic that wrote it, or start a new run (its settings: {path})")
    config = task_class(record["task"]).config_class.from_dict(config_sections(record), source=str(path))
    return Run(dir=run_dir, task=record["task"], config=config, data=record["data"], created=record.get("created"))


def _config_path(run_dir: Path) -> Path | None:
    """The run's config.json, or the train_config.json of a prior or vocoder run from before version 2."""
    return next((p for p in (run_dir / CONFIG_NAME, run_dir / "train_config.json") if p.is_file()), None)


def write_run(run: Run) -> None:
    created = run.created or datetime.datetime.now(datetime.timezone.utc).isoformat()
    write_json_atomic(run.dir / CONFIG_NAME, {"format": RUN_FORMAT, "version": RUN_VERSION, "task": run.task,
                                              "created": created, "clipsonic_version": __version__,
                                              **run.config.to_dict(), "data": run.data})


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise ClipsonicError(f"unknown training task {name!r}; known: {sorted(TASKS)}")
    module, attr = TASKS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def _resume_config(cls: type[Task], run: Run, overrides: dict[str, dict[str, Any]]) -> Config:
    """The saved config with ``overrides``: only the ``train`` section's RESUMABLE fields may differ."""
    saved = run.config.to_dict()
    resumable = type(run.config.train).RESUMABLE
    for section, values in overrides.items():
        for key, value in values.items():
            current = saved.get(section, {}).get(key)
            if json.loads(json.dumps(value)) == current:
                continue
            if section != "train" or key not in resumable:
                name = key if section == "train" else f"{section}.{key}"
                raise ConfigError(f"the run was trained with {name}={current!r}; resuming with {name}={value!r} would "
                                  f"not continue the same run (only {', '.join(resumable)} may change): drop the "
                                  "setting or start a new run directory")
            saved["train"][key] = value
    return cls.config_class.from_dict(saved, source=str(run.dir / CONFIG_NAME))


# --- the loop -------------------------------------------------------------------------------------

def fit(task_cls: type[Task], run_dir: str | os.PathLike, overrides: dict[str, dict[str, Any]] | None = None, *,
        data: dict[str, Any], resume: bool = False, progress: Progress | None = None, cpu: bool = False,
        **task_kwargs: Any) -> Path:
    """Train (or ``resume``) a ``task_cls`` run in ``run_dir``; returns ``run_dir``.

    ``overrides``: config sections over the defaults, or over the saved config where only the RESUMABLE fields may
    differ; ``data``: what the run trains on (``check_data`` on resume)."""
    run_dir, overrides = Path(run_dir), config_sections(overrides or {})
    exists = _config_path(run_dir) is not None
    if exists and not resume:
        raise ClipsonicError(f"{run_dir} already holds a run; pass --resume to continue it or choose another directory")
    if resume and not exists:
        raise ClipsonicError(f"{run_dir} holds no run to resume (no {CONFIG_NAME}); drop --resume to start a new run")
    if resume:
        run = read_run(run_dir)
        if run.task != task_cls.name:
            raise ClipsonicError(f"{run_dir} is a {run.task} run, not a {task_cls.name} run")
        task_cls.check_data(run.data, data, run_dir)
        run.config, run.data = _resume_config(task_cls, run, overrides), {**run.data, **data}
    else:
        run = Run(dir=run_dir, task=task_cls.name, config=task_cls.resolve_config(overrides, data), data=dict(data))
    loop = run.config.train
    try:
        # cpu=True without CUDA: then launched processes (accelerate launch --multi_gpu, torchrun) form a gloo group
        acc = Accelerator(mixed_precision=loop.precision, cpu=cpu or not torch.cuda.is_available(),
                          log_with="tensorboard", project_dir=str(run_dir))  # log_with="wandb" also logs to W&B
    except ValueError as exc:
        raise ClipsonicError(f"--precision {loop.precision}: {exc}") from None
    run.accelerator = acc
    acc.wait_for_everyone()  # every process has read the run directory before the main one writes to it
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir)
    acc.wait_for_everyone()
    task = task_cls(run, **task_kwargs)
    if acc.is_main_process:
        write_run(run)
    ckpt = find_checkpoint(run_dir, rank=acc.process_index) if resume else None
    step = ckpt.restore(task.modules(), task.optimizers(), task.generators(), acc.scaler) if ckpt else 0
    run.logs = MetricsLog(run_dir, acc, step)
    try:
        step = _train(task, step, task.batches(ckpt.position if ckpt else None), progress)
    finally:
        run.logs.close()
    if loop.export_at_end and acc.is_main_process and step >= loop.max_steps:
        out = export_run(run_dir)  # no barrier after: a long export must not time out the other processes
        log.info("exported step %d of %s to %s", step, run_dir, out)
    return run_dir


def _train(task: Task, step: int, batches: Iterator[Any], progress: Progress | None) -> int:
    """Steps ``step + 1`` … ``max_steps``: lr, train_step, log window, validation, sample, checkpoint."""
    run, acc, loop = task.run, task.accelerator, task.config.train
    main, logs = acc.is_main_process, task.run.logs
    # CLIPSONIC_DEBUG=weight-hashes (tests/test_train_distributed.py): every process writes
    # RUN/debug/weights-rankR.json, a hash of its modules and the clips it trained on.
    clips_seen: list[str] | None = [] if os.environ.get("CLIPSONIC_DEBUG") == "weight-hashes" else None
    while step < loop.max_steps:
        for optimizer in task.optimizers().values():
            for group in optimizer.param_groups:
                group["lr"] = loop.lr_at(step)
        start = time.perf_counter()
        batch = next(batches)
        data_s, step = time.perf_counter() - start, step + 1
        task._step = step
        try:
            out = task.train_step(batch, step)
        except torch.cuda.OutOfMemoryError:
            raise ClipsonicError(f"step {step}: out of GPU memory {task.out_of_memory()}") from None
        clips = out.pop("clips", ())
        if clips_seen is not None:
            clips_seen.extend(clips)
        logs.add(out, data_s)
        last = step == loop.max_steps
        logged = logs.log_window(step, loop.lr_at(step - 1)) if step % loop.log_every == 0 or last else None
        if main and (loop.val_every and step % loop.val_every == 0 or last) and (values := task.validate(step)):
            logs.scalars(step, "val", values)
        if main:
            task.sample(step)
        if step % loop.save_every == 0 or last:
            scaler = acc.scaler.state_dict() if acc.scaler is not None else None
            save_checkpoint(run.dir, step, acc, task=task.name, modules=task.modules(), optimizers=task.optimizers(),
                            generators=task.generators(), position=task.position(),
                            extra={"scaler": scaler, **task.extra_state()} if main else {}, keep_last=loop.keep_last)
        if progress is not None and main:
            progress(step, loop.max_steps, logged)
    if clips_seen is not None:
        write_weight_hash(run.dir / "debug" / f"weights-rank{acc.process_index}.json", step, task.modules(),
                          world_size=acc.num_processes, position=task.position(), keys_seen=clips_seen)
    return step


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, step: int | None = None, *,
               data: str | os.PathLike | None = None) -> Path:
    """Export checkpoint ``step`` (default: the newest readable) of any run to ``out`` (default RUN/<export_name>);
    ``data``: the data the task reads at export (the UNet's statistics; default the run's)."""
    run = read_run(run_dir)
    cls, ckpt = task_class(run.task), find_checkpoint(run.dir, step)
    if ckpt is None:
        raise ClipsonicError(f"{run.dir} has no usable checkpoint to export; train first")
    return cls.export(run, ckpt, Path(out) if out is not None else run.dir / cls.export_name, data)
