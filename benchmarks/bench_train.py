"""Training throughput: data loader vs model, through the real `clipsonic.train` code.

1. Data: samples/s of :class:`TrainStream` (tar reading, decoding, normalising, batching) from a
   synthetic dataset of 4.096-s clips (``[64, 128]`` mels, K = 3 embeddings of 768-d), with 0 and 2
   DataLoader workers.
2. Model: samples/s of the full training loop (``train()``: loss, backward, AdamW, EMA, logging)
   for the CPU presets, read from the run's metrics.jsonl (windows after the first, median).
The GPU numbers (the ``paper`` preset in bf16, eager and ``torch.compile``) are benchmarks/gpu.sh's.

    .venv/bin/python benchmarks/bench_train.py                           # tiny + small, 2 threads
    .venv/bin/python benchmarks/bench_train.py --presets tiny --steps 12 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.synthetic_dataset import make_synthetic_dataset  # noqa: E402

from clipsonic.data.loader import StreamLayout, TrainStream  # noqa: E402
from clipsonic.train import read_metrics, train  # noqa: E402


def bench_data(info, batch: int, workers: int, batches: int) -> float:
    """Samples/s of the stream after its first batch (worker start-up excluded; the dataset is re-read
    across epochs, so the page cache holds it: this is decoding + batching speed, not disk speed)."""
    layout = StreamLayout(shards=tuple(str(p) for p in info.shard_paths("train")), batch_size=batch, seed=0,
                          rank=0, world_size=1, num_workers=workers, shuffle_buffer=256)
    it = iter(TrainStream(info, layout))
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - start)


def bench_model(info, preset: str, batch: int, steps: int, workers: int, root: Path) -> dict:
    """Median samples/s and data-wait fraction of the training loop's log windows (first window dropped)."""
    run = root / f"run-{preset}"
    window = max(1, steps // 4)
    train(info.root, run, {"train": dict(preset=preset, batch_size=batch, max_steps=steps, log_every=window,
                                          save_every=10**9, val_every=0, sample_every=0, num_workers=workers,
                                          export_at_end=False)})
    records = read_metrics(run, "train")[1:]
    return {"samples_per_s": statistics.median(r["samples_per_s"] for r in records),
            "data_wait_frac": statistics.median(r["data_wait_frac"] for r in records)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--clips", type=int, default=192)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict = {"torch_threads": args.threads, "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        info = make_synthetic_dataset(Path(tmp) / "d", args.clips, 8, frames=128, dim=768, shards=4)
        results["data"] = {f"workers={w}": bench_data(info, args.batch_size, w, 48) for w in (0, 2)}
        results["model"] = {p: bench_model(info, p, args.batch_size, args.steps, 2, Path(tmp)) for p in args.presets}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
