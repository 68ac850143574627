"""Stopping training before max_steps (train/harness.py's loop asks :class:`Stop` after every step): SIGINT or
SIGTERM, and the time budget ``max_time``. The loop then saves a checkpoint and exports as at a normal end."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from typing import Any

import torch

from clipsonic.config import ConfigError

log = logging.getLogger(__name__)


def duration(text: str, name: str) -> float | None:
    """``"90m"``, ``"2h"``, ``"45s"``, ``"3600"`` (seconds) → seconds; ``"0"`` → None (no limit)."""
    value = text.strip().lower()
    number, unit = (value[:-1], value[-1]) if value[-1:] in ("s", "m", "h") else (value, "s")
    try:
        seconds = float(number) * {"s": 1, "m": 60, "h": 3600}[unit]
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ConfigError(f"{name} {text!r} is not a duration; give seconds (3600) or a number with s, m or h "
                          "(45s, 90m, 2h), or 0 for no limit")
    return seconds or None


class TrainingStopped(KeyboardInterrupt):
    """Raised by :func:`fit` when SIGINT or SIGTERM stopped training after a checkpoint (and the export) was written:
    ``str()`` names them and how to resume; ``signum`` is the signal. A KeyboardInterrupt, as Ctrl-C always is."""

    def __init__(self, message: str, name: str):
        super().__init__(message)
        self.signum = int(signal.Signals[name])


class Stop:
    """Stopping before max_steps, inside a ``with`` block (its handlers are restored after): the first SIGINT or
    SIGTERM is noted and training stops after the current step; a second one (over 0.5 s later) aborts at once
    (KeyboardInterrupt). The time budget ends at ``deadline`` (time.monotonic())."""

    def __init__(self, accelerator, deadline: float | None):
        self.accelerator, self.deadline, self.signum, self.noted = accelerator, deadline, 0, 0.0
        self.pid = os.getpid()
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> Stop:
        if threading.current_thread() is threading.main_thread():  # signal.signal works there only
            self.previous = {s: signal.signal(s, self._note) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _note(self, signum: int, frame: Any) -> None:
        if os.getpid() != self.pid:  # a forked DataLoader worker (a terminal's Ctrl-C reaches it too): keep serving
            return
        if self.signum:
            if time.monotonic() - self.noted > 0.5:  # sooner: the same Ctrl-C again, forwarded by torchrun
                raise KeyboardInterrupt
            return
        self.signum, self.noted = signum, time.monotonic()
        log.warning("%s: stopping after this step with a checkpoint; send it again to abort at once",
                    signal.Signals(signum).name)

    def reason(self) -> str | None:
        """"SIGINT", "SIGTERM", "time" or None; with several processes any one's reason is all's (one all-reduce
        of three numbers per step), so they stop at the same step."""
        flags = torch.tensor([self.signum == signal.SIGINT, self.signum == signal.SIGTERM,
                              self.deadline is not None and time.monotonic() >= self.deadline], dtype=torch.float32)
        if self.accelerator.num_processes > 1:
            flags = self.accelerator.reduce(flags.to(self.accelerator.device), reduction="sum").cpu()
        names = ("SIGINT", "SIGTERM", "time")
        return next((name for name, flag in zip(names, flags.tolist(), strict=True) if flag), None)
