"""A short ``clipsonic train-vocoder`` run: validation mel-L1 before and after, and the wall time.

Writes a folder of harmonic test audio (the notes of ``tests/test_vocoder.py``'s ``harmonic``:
0.2-0.6-s notes with five partials and decaying envelopes), then runs the real CLI
(``python -m clipsonic train-vocoder``, tiny preset by default) for ``--steps`` steps with
validation every ``--val-every`` steps and a checkpoint at the end, whose ``state.json`` holds
the validation history. Threads are pinned with ``OMP_NUM_THREADS`` in the child's environment.

    .venv/bin/python benchmarks/bench_vocoder_train.py                          # tiny, 300 steps, 1 thread
    .venv/bin/python benchmarks/bench_vocoder_train.py --steps 1000 --threads 2 --files 48
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_vocoder import harmonic  # noqa: E402


def write_corpus(root: Path, files: int, seconds: float, sample_rate: int = 16000) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        sf.write(root / f"clip{i:03d}.wav", harmonic(seconds, sample_rate, seed=i), sample_rate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--val-every", type=int, default=100)
    parser.add_argument("--files", type=int, default=24, help="harmonic wav files to train on")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each file")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the training process")
    parser.add_argument("--out", type=Path, default=None, help="keep the run here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        write_corpus(work / "audio", args.files, args.seconds)
        run = work / "run"
        cmd = [sys.executable, "-m", "clipsonic", "train-vocoder", str(work / "audio"), "--out", str(run),
               "--preset", args.preset, "--max-steps", str(args.steps), "--val-every", str(args.val_every),
               "--save-every", str(args.steps)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"train-vocoder failed ({done.returncode}):\n{done.stderr[-2000:]}")
        state = json.loads((run / "checkpoints" / f"step-{args.steps:08d}" / "state.json").read_text())
    history = [tuple(h) for h in state["val_history"]]
    print(f"{args.preset} preset, {args.steps} steps on {args.files} × {args.seconds:g}-s harmonic files, "
          f"OMP_NUM_THREADS={args.threads}, load average {os.getloadavg()[0]:.1f}")
    print(f"command: OMP_NUM_THREADS={args.threads} clipsonic {' '.join(cmd[3:])}")
    print(f"{'step':>6} {'val mel-L1':>11}")
    for step, loss in history:
        print(f"{step:>6} {loss:>11.4f}")
    print(f"wall time {wall:.1f} s (process start, data, validation and checkpoints included; "
          f"{wall / args.steps:.3f} s/step)")


if __name__ == "__main__":
    main()
