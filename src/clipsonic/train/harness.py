"""The one training loop: a :class:`Task` (unet.py, prior/train.py, the vocoder GAN) owns its modules, data and
step; :func:`fit` owns accelerate, the run directory, lr schedule, clipping, guards, logs and checkpoints.

A new task: a LoopConfig subclass as its ``train`` section, a Config of all sections, a Task subclass, an
entry point calling :func:`fit`, a line in :data:`TASKS`. The map: docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from clipsonic.config import Config, NonNegative, NonNegativeInt, Positive, PositiveInt, Seed
from clipsonic.errors import ClipsonicError
from clipsonic.files import lock_folder
from clipsonic.train.checkpoint import (
    Checkpoint,
    find_checkpoint,
    list_checkpoints,
    remove_stale_temporaries,
    save_checkpoint,
)
from clipsonic.train.logs import MetricsLog, ProgressLog, write_weight_hash
from clipsonic.train.run_dir import (
    COMMANDS,
    CONFIG_NAME,
    EXPORTS,
    RUN_CONTENTS,
    Run,
    check_sections,
    config_path,
    config_sections,
    difference,
    discard_run,
    export_run,
    read_run,
    remove,
    resume_config,
    write_run,
)
from clipsonic.train.stop import Stop, TrainingStopped, duration

log = logging.getLogger(__name__)

Progress = Callable[[int, int, "dict[str, float] | None"], None]  # (step, max_steps, the logged record or None)


@dataclasses.dataclass(frozen=True)
class LoopConfig(Config):
    """The loop settings every task shares: its ``train`` section extends this (and may change the defaults)."""

    # May change when a run resumes: they decide how long and how often, not what is learned.
    RESUMABLE: ClassVar[tuple[str, ...]] = ("max_steps", "max_time", "save_every", "keep_last", "log_every",
                                            "val_every", "export_at_end", "progress_every")

    max_steps: PositiveInt = 10_000
    # Wall time of one command (90m, 2h, 45s, 3600 = seconds; 0: no limit): then it stops as at max_steps, with a
    # checkpoint and the export; --resume continues.
    max_time: str | None = None
    lr: Positive = 1e-4
    warmup_steps: NonNegativeInt = 0  # linear lr warm-up from 0
    grad_clip: NonNegative = 1.0  # max global grad norm per optimizer (0: off)
    precision: Literal["no", "bf16", "fp16"] = "no"  # accelerate mixed precision
    seed: Seed = 0
    save_every: PositiveInt = 5000  # checkpoint every N steps (and at the end)
    keep_last: PositiveInt = 3  # checkpoints kept on disk
    log_every: PositiveInt = 50  # scalars averaged over N steps → metrics.jsonl + TensorBoard
    val_every: NonNegativeInt = 1000  # validation every N steps and at the end (0: only at the end)
    export_at_end: bool = True  # write the export folder when max_steps is reached (or max_time, or a signal)
    progress_every: Positive = 30.0  # seconds between progress log lines when there is no progress bar

    def __post_init__(self) -> None:
        self.time_budget()

    def time_budget(self) -> float | None:
        """``max_time`` in seconds (None: no limit)."""
        return None if self.max_time is None else duration(self.max_time, "max_time")

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
                raise ClipsonicError(f"{run_dir} was trained on {difference(key, saved.get(key), value)}; "
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


# --- the loop -------------------------------------------------------------------------------------

def fit(task_cls: type[Task], run_dir: str | os.PathLike, overrides: dict[str, dict[str, Any]] | None = None, *,
        data: dict[str, Any], resume: bool = False, restart: bool = False, progress: Progress | None = None,
        cpu: bool = False, **task_kwargs: Any) -> Path:
    """Train (or ``resume``, or ``restart``: discard the run there first) a ``task_cls`` run in ``run_dir``.

    ``overrides``: config sections over the defaults, or over the saved config where only the RESUMABLE fields may
    differ; ``data``: what the run trains on (``check_data`` on resume). Returns ``run_dir``. The main process holds
    the run directory's lock throughout (the other processes of a launch write only inside its checkpoint saves)."""
    if resume and restart:
        raise ClipsonicError("--resume continues the run and --restart discards it: give one of them")
    run_dir, overrides = Path(run_dir), config_sections(overrides or {})
    check_sections(overrides)
    main, started = os.environ.get("RANK", "0") == "0", time.monotonic()  # launchers set RANK before the Accelerator
    with lock_folder(run_dir, COMMANDS[task_cls.name]) if main else contextlib.nullcontext():
        run, ckpt = _open_run(task_cls, run_dir, overrides, data, resume, restart, cpu)
        fresh = main and not resume and not any(run_dir.iterdir())  # a failure before a checkpoint clears it again
        try:
            step, stop = _run(task_cls, run, ckpt, progress, task_kwargs, started)
        except BaseException:
            if fresh and not list_checkpoints(run_dir):
                for path in run_dir.iterdir():
                    remove(path)
            raise
        loop, written = run.config.train, [f"checkpoint {list_checkpoints(run_dir)[0][1]}"] if main else []
        if loop.export_at_end and main and (step >= loop.max_steps or stop):
            out = export_run(run_dir)  # no barrier after: a long export must not time out the other processes
            log.info("exported step %d of %s to %s", step, run_dir, out)
            written.append(f"{task_cls.export_name} {out}")
    if stop:  # the lock is released: the printed command can run at once
        why = f"the time budget (max_time {loop.max_time})" if stop == "time" else stop
        message = (f"stopped by {why} after step {step} of {loop.max_steps}: {', '.join(written)}; continue with "
                   f"the same command and --resume")
        if stop == "time":
            log.info("%s", message)
        else:
            raise TrainingStopped(message, stop)
    return run_dir


def _open_run(task_cls: type[Task], run_dir: Path, overrides: dict[str, dict[str, Any]], data: dict[str, Any],
              resume: bool, restart: bool, cpu: bool) -> tuple[Run, Checkpoint | None]:
    """The run (its config checked), its accelerator and, on resume, the checkpoint to continue from; nothing
    on disk is changed before the checks pass except by --restart."""
    exists = config_path(run_dir) is not None
    if exists and not resume and not restart:
        raise ClipsonicError(f"{run_dir} already holds a run; pass --resume to continue it, --restart to discard it "
                             "and start over, or choose another directory")
    if resume and not exists:
        raise ClipsonicError(f"{run_dir} holds no run to resume (no {CONFIG_NAME}); drop --resume to start a new run")
    names = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []  # other ranks: maybe not yet
    if not resume and (foreign := [n for n in names if not n.startswith(".") and n not in RUN_CONTENTS + EXPORTS]):
        raise ClipsonicError(f"{run_dir} is not empty and holds no run (it has {', '.join(foreign[:3])}"
                             f"{', …' if len(foreign) > 3 else ''}); choose a new or empty run directory")
    if resume:
        run = read_run(run_dir)
        if run.task != task_cls.name:
            raise ClipsonicError(f"{run_dir} is a {run.task} run (`clipsonic {COMMANDS.get(run.task, run.task)}`), "
                                 f"not a {task_cls.name} run; resume it with its own command")
        task_cls.check_data(run.data, data, run_dir)
        run.config, run.data = resume_config(task_cls, run, overrides), {**run.data, **data}
    else:
        run = Run(dir=run_dir, task=task_cls.name, config=task_cls.resolve_config(overrides, data), data=dict(data))
    from accelerate import Accelerator  # heavy (0.3 s): loaded only to train, not by every `clipsonic` command

    try:
        # cpu=True without CUDA: then launched processes (accelerate launch --multi_gpu, torchrun) form a gloo group
        acc = Accelerator(mixed_precision=run.config.train.precision, cpu=cpu or not torch.cuda.is_available(),
                          log_with="tensorboard", project_dir=str(run_dir))  # log_with="wandb" also logs to W&B
    except ValueError as exc:
        raise ClipsonicError(f"--precision {run.config.train.precision}: {exc}") from None
    run.accelerator = acc
    ckpt = find_checkpoint(run_dir, rank=acc.process_index) if resume else None
    if resume and ckpt is None:
        raise ClipsonicError(f"{run_dir} has no readable checkpoint to resume from (see the warnings); nothing was "
                             f"changed: pass --restart instead of --resume to discard the run and start over")
    acc.wait_for_everyone()  # every process has read the run directory before the main one writes to it
    if acc.is_main_process:
        if restart:
            discard_run(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir)
    acc.wait_for_everyone()
    return run, ckpt


def _run(task_cls: type[Task], run: Run, ckpt: Checkpoint | None, progress: Progress | None,
         task_kwargs: dict[str, Any], started: float) -> tuple[int, str | None]:
    """Build the task, restore ``ckpt`` into it and train; returns the step reached and why it stopped early
    (None, "time", "SIGINT", "SIGTERM"). A signal before training starts aborts at once, as Python's default."""
    task, acc = task_cls(run, **task_kwargs), run.accelerator
    step = ckpt.restore(task.modules(), task.optimizers(), task.generators(), acc.scaler) if ckpt else 0
    run.logs = MetricsLog(run.dir, acc, step)
    budget = run.config.train.time_budget()
    if progress is None and acc.is_main_process:
        progress = ProgressLog(step, run.config.train.progress_every, acc.num_processes, started, budget)
    batches = task.batches(ckpt.position if ckpt else None)
    try:
        with Stop(acc, None if budget is None else started + budget) as stop:
            return _train(task, step, batches, progress, stop)
    finally:
        batches.close()  # data-loading workers stop now, not whenever the generator is collected
        run.logs.close()


def _train(task: Task, step: int, batches: Iterator[Any], progress: Progress | None,
           stop: Stop) -> tuple[int, str | None]:
    """Steps ``step + 1`` … ``max_steps``, or until ``stop`` says: lr, train_step, log window, validation, sample,
    checkpoint; returns the step reached and why it stopped early (None: it did not)."""
    run, acc, loop = task.run, task.accelerator, task.config.train
    main, logs, reason = acc.is_main_process, task.run.logs, None
    # CLIPSONIC_DEBUG=weight-hashes (tests/test_train_distributed.py): every process writes
    # RUN/debug/weights-rankR.json, a hash of its modules and the clips it trained on.
    clips_seen: list[str] | None = [] if os.environ.get("CLIPSONIC_DEBUG") == "weight-hashes" else None
    while step < loop.max_steps and reason is None:
        for optimizer in task.optimizers().values():
            for group in optimizer.param_groups:
                group["lr"] = loop.lr_at(step)
        start = time.perf_counter()
        batch = _next_batch(batches)
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
        reason = None if last else stop.reason()  # the same on every process
        end = last or reason is not None
        logged = logs.log_window(step, loop.lr_at(step - 1)) if step % loop.log_every == 0 or end else None
        if main and (loop.val_every and step % loop.val_every == 0 or last) and (values := task.validate(step)):
            logs.scalars(step, "val", values)
        if main:
            task.sample(step)
        if step % loop.save_every == 0 or end:
            _save(task, step)
        if isinstance(progress, ProgressLog):
            progress.add(out)
        if progress is not None and main:
            progress(step, loop.max_steps, logged)
    if clips_seen is not None:
        write_weight_hash(run.dir / "debug" / f"weights-rank{acc.process_index}.json", step, task.modules(),
                          world_size=acc.num_processes, position=task.position(), keys_seen=clips_seen)
    return step, reason


def _save(task: Task, step: int) -> None:
    """Checkpoint ``step`` (every process calls this together)."""
    run, acc = task.run, task.accelerator
    if acc.is_main_process:  # config.json only now: a run that fails before its first checkpoint is not yet a run
        write_run(run)
    scaler = acc.scaler.state_dict() if acc.scaler is not None else None
    save_checkpoint(run.dir, step, acc, task=task.name, modules=task.modules(), optimizers=task.optimizers(),
                    generators=task.generators(), position=task.position(),
                    extra={"scaler": scaler, **task.extra_state()} if acc.is_main_process else {},
                    keep_last=task.config.train.keep_last)


def _next_batch(batches: Iterator[Any]) -> Any:
    """``next(batches)``; torch's DataLoader re-raises a worker's error with the worker's traceback as its
    message: keep the worker's own (last) line."""
    try:
        return next(batches)
    except Exception as exc:
        text = str(exc).strip()
        if "DataLoader worker process" not in text:
            raise
        traceback.clear_frames(exc.__traceback__)  # its frames hold the DataLoader in a cycle: stop workers now
    raise ClipsonicError(f"reading the training data: {text.splitlines()[-1].split(': ', 1)[-1]}")

