"""The demo's progress: which step, how far, and an honest estimate of the time left (a step may be found finished or
resumed by a rerun)."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


@dataclasses.dataclass
class DemoProgress:
    """What the progress callback sees: the step, how far it is, and an honest time-left estimate."""

    step: str
    index: int  # 1-based
    count: int
    fraction: float  # of this step, 0..1
    elapsed: float  # seconds since the demo began
    remaining: float | None  # estimated seconds left (None until there is a basis)


class Clock:
    """Time left = the expected seconds of the remaining work × this machine's pace: seconds per expected second,
    measured between each step's own progress reports. So work a rerun finds finished (a skipped step, the first
    4000 steps of a resumed run) is neither counted as done fast nor as time spent."""

    def __init__(self, expected: dict[str, float], callback: Callable[[DemoProgress], None] | None):
        self.expected, self.callback = expected, callback
        self.names = [n for n, s in expected.items() if s > 0]
        self.began = time.perf_counter()
        self.done_expected, self._last = 0.0, 0.0
        self.measured = (0.0, 0.0)  # seconds, expected seconds of the progress reported in finished steps
        self._span: tuple[float, float, float, float] | None = None  # this step's reports: first (t, f), last (t, f)
        self.step_seconds: dict[str, float] = {}

    def step(self, name: str, fn: Callable[[Callable[[float], None]], Any]) -> Any:
        """Run ``fn(update)`` as step ``name``; ``update(fraction)`` reports its progress."""
        began, self._span = time.perf_counter(), None
        self.update(name, 0.0, force=True)
        result = fn(lambda fraction: self.update(name, fraction, report=True))
        self.step_seconds[name] = round(time.perf_counter() - began, 1)
        self.measured = self._pace_basis(name)
        self.done_expected += self.expected[name]
        log.info("demo: %s done in %.0f s", name, self.step_seconds[name])
        return result

    def _pace_basis(self, name: str) -> tuple[float, float]:
        seconds, work = self.measured
        if self._span is not None:
            t0, f0, t, f = self._span
            seconds, work = seconds + t - t0, work + (f - f0) * self.expected[name]
        return seconds, work

    def update(self, name: str, fraction: float, force: bool = False, report: bool = False) -> None:
        now = time.perf_counter()
        if report:
            self._span = (now, fraction, now, fraction) if self._span is None else (*self._span[:2], now, fraction)
        if self.callback is None or (not force and now - self._last < 0.5):
            return
        self._last = now
        left = sum(self.expected.values()) - self.done_expected - fraction * self.expected[name]
        seconds, work = self._pace_basis(name)
        remaining = seconds / work * left if work > 0 and seconds > 5 else None
        self.callback(DemoProgress(name, self.names.index(name) + 1, len(self.names), min(max(fraction, 0.0), 1.0),
                                   now - self.began, remaining))
