"""Training logs: ``metrics.jsonl`` (one JSON object per line, easy to test and plot) and accelerate's trackers.

Every record has ``step`` and ``kind`` ("train", "val", "sample"); TensorBoard (``RUN/tensorboard``) gets the
same numbers as ``kind/name``. A run resumed from step N drops the records after N from both (``purge_step`` for
the event files), so the logs tell one history.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clipsonic.errors import ClipsonicError
from clipsonic.files import write_bytes_atomic, write_json_atomic

log = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"


def read_metrics(run_dir: str | os.PathLike, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of ``RUN/metrics.jsonl`` (optionally of one kind), in order."""
    return [r for _, r in _read_lines(Path(run_dir) / METRICS_NAME) if kind is None or r.get("kind") == kind]


def _read_lines(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) of each line of ``path``; a torn last line (a run killed while appending it) is dropped with
    a warning, any other bad line is a :class:`ClipsonicError` naming it."""
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        return []
    except UnicodeDecodeError as exc:
        raise ClipsonicError(f"{path}: not UTF-8 text ({exc}); delete the file to start the log afresh") from None
    out = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            if number == len(lines):
                log.warning("%s: dropping its last line, torn by an interrupted write: %.60s", path, line)
                continue
            raise ClipsonicError(f"{path}: line {number} is not a metrics record ({line[:60]!r}); delete that line")
        out.append((line, record))
    return out


def write_weight_hash(path: Path, step: int, modules: dict[str, nn.Module], **facts: Any) -> None:
    """Debug (CLIPSONIC_DEBUG=weight-hashes): a SHA-256 of the weights of ``modules``, with ``facts``, to ``path``."""
    digest = hashlib.sha256()
    for module_name, module in sorted(modules.items()):
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(f"{module_name}.{name}".encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    write_json_atomic(path, {"step": step, "sha256": digest.hexdigest(), **facts})


class MetricsLog:
    """Appends to ``metrics.jsonl`` and logs to the accelerator's trackers (main process only), and averages
    the train steps' values over each log window (every process)."""

    def __init__(self, run_dir: Path, accelerator, start_step: int):
        self.accelerator, self.main = accelerator, accelerator.is_main_process
        self.path = Path(run_dir) / METRICS_NAME
        self._reset_window()
        if not self.main:
            return
        if self.path.is_file():
            kept = "".join(f"{line}\n" for line, record in _read_lines(self.path) if record["step"] <= start_step)
            if kept.encode() != self.path.read_bytes():
                write_bytes_atomic(self.path, kept.encode())
        accelerator.init_trackers("tensorboard", init_kwargs={"tensorboard": {"purge_step": start_step + 1}})

    @property
    def tensorboard(self):
        """The TensorBoard ``SummaryWriter``, for images and audio (main process only)."""
        return self.accelerator.get_tracker("tensorboard", unwrap=True)

    def scalars(self, step: int, kind: str, values: dict[str, float]) -> None:
        """One record; non-finite values are written as null and not sent to the trackers."""
        clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in values.items()}
        self.record(step, kind, clean)
        if self.main:
            self.accelerator.log({f"{kind}/{k}": v for k, v in clean.items() if v is not None}, step=step)

    def record(self, step: int, kind: str, fields: dict[str, Any]) -> None:
        if self.main:
            with open(self.path, "a") as fh:
                fh.write(json.dumps({"step": step, "kind": kind, **fields}) + "\n")

    def _reset_window(self) -> None:
        self.examples: dict[str, list[torch.Tensor]] = {}
        self.steps: dict[str, list[float]] = {}
        self.data_s, self.window_start = 0.0, time.perf_counter()

    def add(self, values: dict[str, Any], data_s: float) -> None:
        """One step's values (a tensor: per example, a float: per step) and its seconds waiting for data."""
        self.data_s += data_s
        for name, value in values.items():
            if torch.is_tensor(value):
                self.examples.setdefault(name, []).append(value.detach().float().reshape(-1).cpu())
            else:
                self.steps.setdefault(name, []).append(float(value))

    def log_window(self, step: int, lr: float) -> dict[str, float]:
        """The window's "train" record: means over its steps, and over every process's examples (all call this)."""
        names = sorted(self.examples)
        cat = {name: torch.cat(self.examples[name]) for name in names}
        totals = torch.tensor([[float(cat[n].sum()), float(cat[n].numel())] for n in names] or [[0.0, 0.0]])
        totals = self.accelerator.reduce(totals.to(self.accelerator.device), reduction="sum").cpu()  # [names, 2]
        elapsed = time.perf_counter() - self.window_start
        values = {n: float(totals[i, 0] / totals[i, 1]) for i, n in enumerate(names) if totals[i, 1] > 0}
        values.update({name: sum(v) / len(v) for name, v in self.steps.items()}, lr=lr)
        if "loss" in names:
            values["samples_per_s"] = float(totals[names.index("loss"), 1]) / elapsed
        values["data_wait_frac"] = self.data_s / elapsed
        self.scalars(step, "train", values)
        self._reset_window()
        return values

    def close(self) -> None:
        """Flush and close the trackers (not ``accelerator.end_training``, which also ends the process group)."""
        for tracker in self.accelerator.trackers:
            tracker.finish()


class ProgressLog:
    """The progress without a terminal (the CLI's stderr redirected, or library use): one INFO line every
    ``every`` seconds with step/max, loss, samples/s (steps/s when the task's values are per step), elapsed time
    and time left, to max_steps or to the time budget (``budget`` seconds after ``started``), whichever is first.
    A :data:`~clipsonic.train.harness.Progress` that the loop also feeds each step's values (:meth:`add`)."""

    LOSSES = ("loss", "loss_gen")  # the figure shown: the vocoder's GAN has no single "loss"

    def __init__(self, step: int, every: float, processes: int, started: float, budget: float | None):
        self.every, self.processes, self.started, self.budget = every, processes, started, budget
        self.since, self.since_step = time.monotonic(), step
        self.total, self.count, self.examples = 0.0, 0, 0

    def add(self, values: dict[str, Any]) -> None:
        """One step's values (a tensor: per example of this process, a float: per step)."""
        loss = next((values[k] for k in self.LOSSES if k in values), None)
        if torch.is_tensor(loss):
            self.total, self.count = self.total + float(loss.detach().float().sum()), self.count + loss.numel()
            self.examples += loss.numel()
        elif loss is not None:
            self.total, self.count = self.total + float(loss), self.count + 1

    def __call__(self, step: int, max_steps: int, logged: dict[str, float] | None = None) -> None:
        now = time.monotonic()
        if now - self.since < self.every:
            return
        seconds, steps = now - self.since, step - self.since_step
        left = (max_steps - step) * seconds / max(steps, 1)
        if self.budget is not None:
            left = min(left, self.started + self.budget - now)
        rate = (f"{self.examples * self.processes / seconds:.1f} samples/s" if self.examples else
                f"{steps / seconds:.2f} steps/s")
        loss = f"loss {self.total / self.count:.4g}, " if self.count else ""
        log.info("step %d/%d: %s%s, %s elapsed, %s left", step, max_steps, loss, rate, _clock(now - self.started),
                 _clock(left))
        self.since, self.since_step = now, step
        self.total, self.count, self.examples = 0.0, 0, 0


def _clock(seconds: float) -> str:
    """``3h05m``, ``4m09s`` or ``7s``."""
    s = max(0, round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
