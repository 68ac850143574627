"""Training logs: ``metrics.jsonl`` (one JSON object per line, easy to test and plot) and accelerate's trackers.

Every record has ``step`` and ``kind`` ("train", "val", "sample"); the trackers (TensorBoard in
``RUN/tensorboard``) get the same numbers as ``kind/name``. When a run resumes from step N, records
after N (written by the interrupted run after its last checkpoint) are dropped from both, so the
logs tell one history: TensorBoard's ``purge_step`` does it for the event files.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from clipsonic.files import write_bytes_atomic

METRICS_NAME = "metrics.jsonl"


def read_metrics(run_dir: str | os.PathLike, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of ``RUN/metrics.jsonl`` (optionally of one kind), in order."""
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r.get("kind") == kind]


class MetricsLog:
    """Appends to ``metrics.jsonl`` and logs to the accelerator's trackers; a no-op on other processes."""

    def __init__(self, run_dir: Path, accelerator, start_step: int):
        self.accelerator, self.main = accelerator, accelerator.is_main_process
        self.path = Path(run_dir) / METRICS_NAME
        if not self.main:
            return
        if self.path.is_file():
            lines = self.path.read_text().splitlines()
            kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= start_step]
            if len(kept) != len(lines):
                write_bytes_atomic(self.path, "".join(f"{line}\n" for line in kept).encode())
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

    def close(self) -> None:
        """Flush and close the trackers (not ``accelerator.end_training``, which also ends the process group)."""
        for tracker in self.accelerator.trackers:
            tracker.finish()
