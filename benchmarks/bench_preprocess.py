"""Preprocessing throughput: videos/s and clips/s with 1 and 2 decoding workers, peak memory,
and the ratio to plain decoding (audio + the same frames, no mel, no CLIP, no shards).

Run by hand:  .venv/bin/python benchmarks/bench_preprocess.py [--videos 50] [--seconds 10]
CLIP is a tiny random model (no weights can be downloaded here), so this measures the data
path; with ViT-L/14 on a GPU the CLIP share is small, on a CPU it dominates.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.media_files import write_video  # noqa: E402
from support.tiny_clip import make_tiny_clip  # noqa: E402

from clipsonic.audio import MelConfig  # noqa: E402
from clipsonic.data.clips import ClipOptions, frame_times, plan_clip_starts  # noqa: E402
from clipsonic.data.preprocess import PreprocessOptions, preprocess  # noqa: E402
from clipsonic.encoders import load_clip  # noqa: E402
from clipsonic.media import load_audio, load_frames, probe  # noqa: E402


def plain_decode(paths: list[Path], mel: MelConfig, options: ClipOptions) -> float:
    t0 = time.perf_counter()
    for p in paths:
        info = probe(p)
        starts = plan_clip_starts(0.0, info.duration, mel, options)
        load_audio(p, sample_rate=mel.sample_rate, start=0.0, duration=min(info.duration, starts[-1] + mel.clip_seconds))
        load_frames(p, [t for s in starts for t in frame_times(s, mel.clip_seconds, options.frames_per_clip)])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        paths = [write_video(tmp / "v" / f"{i:03d}.mp4", seconds=args.seconds, size=(320, 240), fps=25,
                             tone_hz=200.0 + 20 * i) if (tmp / "v").mkdir(exist_ok=True) or True else None
                 for i in range(args.videos)]
        print(f"wrote {len(paths)} × {args.seconds:g}-s H.264/AAC 320x240 videos in {time.perf_counter() - t0:.1f} s")
        clip_dir = make_tiny_clip(tmp / "clip")
        encoder = load_clip(clip_dir)
        mel = MelConfig()
        options = PreprocessOptions(clip_model=str(clip_dir))
        plain = plain_decode(paths, mel, options.clips)
        rows = [("plain decode (1 process)", plain, None)]
        for workers in (0, 1, 2):
            t0 = time.perf_counter()
            info = preprocess(tmp / "v", tmp / f"out{workers}", options=options, mel=mel, workers=workers, encoder=encoder)
            rows.append((f"preprocess workers={workers}", time.perf_counter() - t0, info.counts["clips"]))
        print(f"\n{'run':28s} {'s':>7s} {'videos/s':>9s} {'clips/s':>8s} {'vs plain':>9s}")
        for name, seconds, clips in rows:
            cps = f"{clips / seconds:8.2f}" if clips else f"{'-':>8s}"
            print(f"{name:28s} {seconds:7.2f} {len(paths) / seconds:9.2f} {cps} {plain / seconds:9.2f}")
        self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"\npeak RSS: main process {self_mb:.0f} MiB, largest worker {child_mb:.0f} MiB")


if __name__ == "__main__":
    main()
