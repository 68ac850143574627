"""Torch threads on a small machine: wall time of `train`, `train-prior`, `preprocess` and `generate` with 1 and 2
threads, OpenMP's active (spinning) and passive wait policy, on an idle machine and beside one busy process.

Each command runs as the user runs it (`clipsonic ...` in a subprocess, start-up included) on tiny inputs made here:
a synthetic dataset of 1.024-s clips (train, train-prior), six 4-s videos and a tiny random CLIP (preprocess), the
built-in model (generate), 64 captioned pictures (train-prior). "busy" starts one process that spins on a core for the whole measurement, as a browser, a
second job or a test suite would. `clipsonic` sets OMP_WAIT_POLICY=PASSIVE unless the user set it; the "active" rows
set OMP_WAIT_POLICY=ACTIVE, OpenMP's default, which is what clipsonic ran with before.

    .venv/bin/python benchmarks/bench_threads.py             # all four commands, ~10 min on 2 cores
    .venv/bin/python benchmarks/bench_threads.py --commands generate train
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.media_files import tone, write_video  # noqa: E402
from support.synthetic_dataset import make_synthetic_dataset  # noqa: E402
from support.tiny_clip import make_tiny_clip  # noqa: E402

CLI = str(Path(sys.executable).with_name("clipsonic"))
VARIANTS = (("1 thread", 1, "PASSIVE"), ("2 threads, active", 2, "ACTIVE"), ("2 threads, passive", 2, "PASSIVE"))


def commands(root: Path) -> dict[str, list[str]]:
    """Each command's argv, from inputs built once under ``root``."""
    data = root / "data"
    make_synthetic_dataset(data, n_clips=256, n_classes=8, frames=32, dim=64, shards=2)
    videos = root / "videos"
    videos.mkdir()
    for i in range(6):
        write_video(videos / f"v{i}.mp4", seconds=4.0, audio=tone(220.0 * (i + 1)))
    clip = make_tiny_clip(root / "clip")
    captions = root / "captions"
    captions.mkdir()
    for i in range(64):
        colour = np.zeros((32, 32, 3), np.uint8) + np.uint8([37 * i % 256, 91 * i % 256, 53 * i % 256])
        Image.fromarray(colour).save(captions / f"{i}.png")
        (captions / f"{i}.txt").write_text(f"a picture number {i}\n")
    return {
        "train": ["train", str(data), "--out", "{out}", "--preset", "tiny", "--batch-size", "16", "--max-steps", "60",
                  "--prediction", "v", "--no-export-at-end"],
        "train-prior": ["train-prior", str(captions), "--out", "{out}", "--preset", "tiny", "--max-steps", "300",
                        "--clip-model", str(clip)],
        "preprocess": ["preprocess", str(videos), "--out", "{out}", "--clip-model", str(clip), "--clip-seconds",
                       "1.024"],
        "generate": ["generate", "--model", "builtin:sonicworld", "--text", "the red circle that is humming",
                     "--num-samples", "4", "--seed", "0",
                     "-o", "{out}/out"],
    }


def timed(argv: list[str], threads: int, policy: str, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_WAIT_POLICY": policy, "OMP_NUM_THREADS": str(threads)}
    argv = [CLI, "-q", *[a.replace("{out}", str(out)) for a in argv], "--threads", str(threads)]
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", nargs="+", default=["train", "train-prior", "preprocess", "generate"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        argvs = commands(root)
        rows = []
        for load in ("idle", "busy"):
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load == "busy" else None
            try:
                for name in args.commands:
                    times = [timed(argvs[name], threads, policy, root / "out") for _, threads, policy in VARIANTS]
                    rows.append((name, load, times))
                    print(name, load, " ".join(f"{t:.1f}" for t in times), flush=True)
            finally:
                if spinner:
                    spinner.kill()
    print("\n| command | machine | " + " | ".join(v[0] for v in VARIANTS) + " |")
    print("| --- | --- | " + " | ".join("---:" for _ in VARIANTS) + " |")
    for name, load, times in rows:
        print(f"| {name} | {load} | " + " | ".join(f"{t:.1f} s" for t in times) + " |")


if __name__ == "__main__":
    main()
