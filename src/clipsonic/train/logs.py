"""Training logs: ``metrics.jsonl`` (one JSON object per line, easy to test and plot) and TensorBoard.

Every record has ``step`` and ``kind`` ("train", "val", "sample"); TensorBoard gets the same
numbers as ``kind/name`` scalars, plus the sample mel images and their Griffin-Lim audio. When a
run resumes from step N, records after N (written by the interrupted run after its last
checkpoint) are dropped from both, so the logs tell one consistent history.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from clipsonic.files import write_bytes_atomic

METRICS_NAME = "metrics.jsonl"


def read_metrics(run_dir: str | os.PathLike, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of ``RUN_DIR/metrics.jsonl`` (optionally of one kind), in order."""
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r.get("kind") == kind]


class MetricsLog:
    """Appends to ``metrics.jsonl`` and a TensorBoard event file; a no-op on ranks other than 0."""

    def __init__(self, run_dir: Path, start_step: int, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_NAME
        self.tb = None
        if not enabled:
            return
        self._truncate_after(start_step)
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events an interrupted run wrote after the checkpoint we resume from
        self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=start_step + 1)

    def _truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        lines = self.path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        if len(kept) != len(lines):
            write_bytes_atomic(self.path, "".join(f"{line}\n" for line in kept).encode())

    def scalars(self, step: int, kind: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in values.items()}
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"step": step, "kind": kind, **clean}) + "\n")
        for name, value in clean.items():
            if value is not None:
                self.tb.add_scalar(f"{kind}/{name}", value, step)

    def sample(self, step: int, png: Path, audio: np.ndarray, sample_rate: int, caption: str) -> None:
        """A sampled mel image (PNG file) and its audio ``[samples]`` float32."""
        if not self.enabled:
            return
        from PIL import Image

        image = np.asarray(Image.open(png).convert("RGB"))  # [H, W, 3] uint8
        self.tb.add_image("sample/mel", image, step, dataformats="HWC")
        self.tb.add_audio("sample/audio", np.clip(audio, -1.0, 1.0)[None], step, sample_rate=sample_rate)
        self.tb.add_text("sample/condition", caption, step)
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"step": step, "kind": "sample", "image": png.name, "condition": caption}) + "\n")

    def flush(self) -> None:
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
