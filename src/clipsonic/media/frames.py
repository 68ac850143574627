"""``load_frames``: RGB pictures at given times, with accurate seeking."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipsonic.media._container import AV_ERRORS, MediaError, Track, check_time, reason

log = logging.getLogger(__name__)

# load_frames decodes forward through gaps up to this long and seeks across longer ones.
FRAME_SEEK_GAP_S = 2.0
_EPS = 1e-6  # seconds: float round-off when comparing times with frame timestamps


class _FrameCursor:
    """Walks forward through the video track of a file; seeks (to the keyframe before) only across long gaps.
    ``current`` is the last frame at or before the last asked time, ``upcoming`` the next one (None at the end)."""

    def __init__(self, path: Path):
        self.path = path
        self.track = Track(path, "video")
        self.frames: Iterator[Any] | None = None  # None until decoding starts
        self.current = self.upcoming = None

    def _decode_on(self) -> None:  # from where the track stands: its start, or a seek's keyframe
        self.frames = self.track.frames()
        self.current, self.upcoming = None, next(self.frames, None)

    def _time(self, frame: Any) -> float:  # inf for None: past the end of the stream
        return math.inf if frame is None else self.track.seconds(frame)

    def _seek(self, t: float) -> None:
        """Position so that the next decoded frame is at or before ``t``."""
        log.debug("%s: seeking to the keyframe before %.3f s", self.path, t)
        for back in (0.0, 1.0, 5.0, 30.0):
            if not self.track.seek(max(t - back, 0.0)):
                break
            self._decode_on()
            if self._time(self.upcoming) <= t + _EPS:
                return
        log.debug("%s: seeking before %.3f s failed; decoding from the start", self.path, t)
        self.track.container.close()  # rewind by reopening: the one move every format supports
        self.track = Track(self.path, "video")
        self._decode_on()

    def frame_at(self, t: float) -> Any:
        """The frame on screen at ``t``: pts <= t < next pts. Call with non-decreasing ``t``."""
        # Where decoding stands: the file's start before the first call, inf at the end of the stream.
        here = 0.0 if self.frames is None else self._time(self.upcoming)
        if t - here > FRAME_SEEK_GAP_S and self._keyframe_before(t) > here:
            self._seek(t)
        elif self.frames is None:
            self._decode_on()
        while self._time(self.upcoming) <= t + _EPS:
            self.current, self.upcoming = self.upcoming, next(self.frames, None)
        if self.current is None:
            if self.upcoming is None:
                raise MediaError(f"{self.path}: the video stream has no decodable frames")
            return self.upcoming  # t precedes the first frame: players show the first frame
        if self.upcoming is None:  # at the end, the last frame lasts its duration
            end = self._time(self.current) + self._duration(self.current)
            if t >= end - _EPS:
                raise MediaError(f"{self.path}: time {t:.3f} s is beyond the end of the video ({end:.3f} s)")
        return self.current

    def _keyframe_before(self, t: float) -> float:
        """Time of the indexed keyframe at or before ``t`` (inf when the file has no index):
        seeking only pays when that keyframe lies beyond where decoding already is. Index times
        are decoding times (dts), a few frames early with B-frames: an estimate on the safe side."""
        entries, time_base = self.track.stream.index_entries, self.track.stream.time_base
        i = entries.search_timestamp(self.track.pts(t)) if len(entries) else -1
        return math.inf if i < 0 else float(entries[i].timestamp * time_base) - self.track.origin

    def _duration(self, frame: Any) -> float:
        if frame.duration:
            return float(frame.duration * self.track.stream.time_base)
        rate = self.track.stream.average_rate
        return 1.0 / float(rate) if rate else 0.0


def load_frames(path: str | os.PathLike, times: Sequence[float]) -> list[np.ndarray]:
    """RGB uint8 pictures ``[H, W, 3]`` of the frames on screen at ``times`` (seconds), in the caller's order.

    Accurate seeking: for each time, the frame with pts <= t < next pts, decoded forward from the keyframe before
    it. Times are visited in sorted order; decoding runs on through gaps up to :data:`FRAME_SEEK_GAP_S`, and through
    longer ones when the file's index shows no keyframe in between, so close times cost one decoding pass. A time
    before the first frame gives the first frame; a time at or past the end of the last frame is a MediaError.
    """
    path = Path(path)
    times = [check_time(t, "frame time", path) for t in times]
    cursor = _FrameCursor(path)
    try:
        pictures: list[np.ndarray | None] = [None] * len(times)
        last_frame, last_rgb = None, None
        for i in sorted(range(len(times)), key=times.__getitem__):
            frame = cursor.frame_at(times[i])
            if frame is last_frame:
                pictures[i] = last_rgb.copy()
                continue
            try:
                last_frame, last_rgb = frame, frame.to_ndarray(format="rgb24")
            except AV_ERRORS as exc:
                raise MediaError(f"{path}: converting the frame at {times[i]:.3f} s to RGB failed "
                                 f"({reason(exc)})") from exc
            pictures[i] = last_rgb
        return pictures
    finally:
        cursor.track.container.close()
