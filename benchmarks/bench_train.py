"""Training throughput: data loader vs model, through the real `clipsonic.train` code.

1. Data: samples/s of :class:`TrainStream` (tar reading, decoding, normalising, batching) from a
   synthetic dataset of 4.096-s clips (``[64, 128]`` mels, K = 3 embeddings of 768-d), with 0 and 2
   DataLoader workers.
2. Model: samples/s of the full training loop (``train()``: loss, backward, AdamW, EMA, logging)
   for the CPU presets, read from the run's metrics.jsonl (windows after the first, median).
3. GPU (only when CUDA is available): the ``paper`` preset's training step in bf16 autocast, with
   and without ``torch.compile``: samples/s and peak memory.

    .venv/bin/python benchmarks/bench_train.py                           # tiny + small, 2 threads
    .venv/bin/python benchmarks/bench_train.py --presets tiny --steps 12 --batch-size 8
    .venv/bin/python benchmarks/bench_train.py --gpu-only --gpu-batch 64  # on a GPU machine
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


def bench_gpu(batch: int, steps: int) -> dict:
    """The paper preset on CUDA in bf16: samples/s and peak memory, eager and torch.compile."""
    from clipsonic.diffusion import DiffusionConfig, GaussianDiffusion
    from clipsonic.models import MelUNet

    out = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        torch.cuda.reset_peak_memory_stats()
        model = MelUNet.from_preset("paper").cuda().train()
        net = torch.compile(model) if compiled else model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        diffusion = GaussianDiffusion(DiffusionConfig())
        x0 = torch.rand(batch, 1, 64, 128, device="cuda") * 2 - 1
        cond = torch.nn.functional.normalize(torch.randn(batch, 768, device="cuda"), dim=1)
        gen = torch.Generator().manual_seed(0)
        times = []
        for i in range(steps + 3):
            torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = diffusion.training_losses(net, x0, cond, generator=gen)["loss"].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            torch.cuda.synchronize()
            if i >= 3:  # warm-up (and compilation) excluded
                times.append(time.perf_counter() - start)
        out["compile" if compiled else "eager"] = {
            "samples_per_s": batch / statistics.median(times),
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}
        del model, net, opt
        torch.cuda.empty_cache()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--clips", type=int, default=192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gpu-only", action="store_true")
    parser.add_argument("--gpu-batch", type=int, default=32)
    parser.add_argument("--gpu-steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict = {"torch_threads": args.threads, "batch_size": args.batch_size}
    if not args.gpu_only:
        with tempfile.TemporaryDirectory() as tmp:
            info = make_synthetic_dataset(Path(tmp) / "d", args.clips, 8, frames=128, dim=768, shards=4)
            results["data"] = {f"workers={w}": bench_data(info, args.batch_size, w, 48) for w in (0, 2)}
            results["model"] = {p: bench_model(info, p, args.batch_size, args.steps, 2, Path(tmp)) for p in args.presets}
    if torch.cuda.is_available():
        results["gpu"] = {"device": torch.cuda.get_device_name(), "batch": args.gpu_batch,
                          **bench_gpu(args.gpu_batch, args.gpu_steps)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
