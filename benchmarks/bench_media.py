"""How fast the front end reads media and makes mels: ``.venv/bin/python benchmarks/bench_media.py``.

Writes a 10-s H.264/AAC clip (320×240, 25 fps, 44.1 kHz stereo) into a temporary folder, then
times (best of ``--repeats``):

- ``load_audio``: decode + resample to 16 kHz mono, whole clip and one 4.096-s segment;
- ``load_frames``: three frames (spread out, and close together);
- ``mel_spectrogram``: batches of 65536-sample clips (the paper's 4.096-s training clip).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.media_files import tone, write_video  # noqa: E402

from clipsonic.audio import MelConfig, mel_spectrogram  # noqa: E402
from clipsonic.media import load_audio, load_frames, probe  # noqa: E402

SECONDS = 10.0


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    """Smallest wall time of ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (default: 5)")
    parser.add_argument("--batch", type=int, default=16, help="clips per mel batch (default: 16)")
    args = parser.parse_args(argv)

    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = write_video(Path(tmp) / "clip.mp4", seconds=SECONDS, fps=25, size=(320, 240),
                           sample_rate=44100, channels=2, audio=tone([440.0, 1234.5]))
        info = probe(path)
        print(f"clip: {info.duration:.2f} s, {info.video_width}x{info.video_height} {info.video_codec} "
              f"{info.video_fps:g} fps, {info.audio_codec} {info.audio_sample_rate} Hz × {info.audio_channels}")

        t = best_of(args.repeats, lambda: load_audio(path, sample_rate=16000))
        rows.append(("load_audio whole 10 s → 16 kHz", f"{t * 1000:.1f} ms", f"{SECONDS / t:.0f} audio-s/s"))
        t = best_of(args.repeats, lambda: load_audio(path, sample_rate=16000, start=3.0, duration=4.096))
        rows.append(("load_audio 4.096 s at 3 s", f"{t * 1000:.1f} ms", f"{4.096 / t:.0f} audio-s/s"))
        for label, times in [("spread", [1.0, 5.0, 9.0]), ("close", [4.0, 4.5, 5.0])]:
            t = best_of(args.repeats, lambda times=times: load_frames(path, times))
            rows.append((f"load_frames 3 {label} {times}", f"{t * 1000:.1f} ms", f"{3 / t:.0f} frames/s"))

    config = MelConfig()
    batch = torch.from_numpy(np.random.default_rng(0).uniform(-0.5, 0.5, (args.batch, config.clip_samples))).float()
    t = best_of(args.repeats, lambda: mel_spectrogram(batch, config))
    rows.append((f"mel_spectrogram [{args.batch}, {config.clip_samples}]", f"{t * 1000:.1f} ms",
                 f"{args.batch / t:.0f} clips/s = {args.batch * config.clip_seconds / t:.0f} audio-s/s"))

    print(f"torch threads: {torch.get_num_threads()}, best of {args.repeats}")
    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  {'time':>10}  speed")
    for what, took, speed in rows:
        print(f"{what:<{width}}  {took:>10}  {speed}")


if __name__ == "__main__":
    main()
