"""Exporting a run: its EMA weights, diffusion config and dataset statistics → a pipeline directory."""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
from pathlib import Path

import numpy as np
import torch

from clipsonic.data.dataset import DatasetError, DatasetInfo, read_dataset_info
from clipsonic.data.loader import decode_npy, iter_raw_samples
from clipsonic.export import PipelineStats, write_pipeline_dir
from clipsonic.models import MelUNet
from clipsonic.train.checkpoint import CheckpointError, checkpoints_at, verify_checkpoint
from clipsonic.train.run_dir import check_dataset_fits_run, read_run_config, read_run_info

log = logging.getLogger(__name__)


def compute_dataset_stats(info: DatasetInfo, bank_size: int, split: str = "train") -> PipelineStats:
    """One pass over a split's clip embeddings: their mean, and a bank of up to ``bank_size`` of them.

    The bank keeps the (key, frame) pairs with the smallest BLAKE2b hash of ``"key/frame"``, sorted
    by that hash: a uniform, deterministic choice independent of shard order.
    """
    total: np.ndarray | None = None
    clips = embeddings = 0
    heap: list[tuple[int, str, np.ndarray, str | None]] = []  # max-heap by hash via negation
    for raw in iter_raw_samples((str(p) for p in info.shard_paths(split)), fields=("clip.npy", "json")):
        clip = decode_npy(raw["clip.npy"]).astype(np.float64)  # [K, D]
        label = json.loads(raw["json"]).get("label")
        total = clip.sum(0) if total is None else total + clip.sum(0)
        clips, embeddings = clips + 1, embeddings + clip.shape[0]
        for k, row in enumerate(clip):
            name = f"{raw['__key__']}/{k}"
            h = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")
            item = (-h, name, row.astype(np.float16), label)
            if len(heap) < bank_size:
                heapq.heappush(heap, item)
            elif bank_size and -h > heap[0][0]:
                heapq.heapreplace(heap, item)
    if total is None:
        raise DatasetError(f"{info.root}: the {split!r} split has no clips to compute statistics from")
    chosen = sorted(heap, key=lambda item: -item[0])
    dim = total.shape[0]
    bank = np.stack([row for _, _, row, _ in chosen]) if chosen else np.zeros((0, dim), np.float16)
    return PipelineStats(
        mean_image_embedding=torch.from_numpy((total / embeddings).astype(np.float32)),
        image_bank=torch.from_numpy(bank), bank_keys=[n for _, n, _, _ in chosen],
        bank_labels=[lab for _, _, _, lab in chosen],
        info={"dataset": str(info.root.resolve()), "split": split, "num_clips": clips, "num_embeddings": embeddings,
              "selection": "smallest blake2b-64 of 'key/frame'"})


def _pick_checkpoint(run_dir: Path, step: int | None) -> tuple[int, Path]:
    found = checkpoints_at(run_dir, step)
    for s, path in found:
        try:
            verify_checkpoint(path)
            return s, path
        except CheckpointError as exc:
            if step is not None:
                raise
            log.warning("skipping corrupt checkpoint: %s", exc)
    raise CheckpointError(f"{run_dir} has no usable checkpoint to export; train first (clipsonic train)")


def export_run(run_dir: str | Path, out: str | Path | None = None, step: int | None = None,
               data_dir: str | Path | None = None) -> Path:
    """Write the pipeline directory of a run (default ``RUN_DIR/pipeline``) from a checkpoint's EMA weights.

    ``step``: that checkpoint (default: the newest readable one); ``data_dir``: the dataset for the
    statistics (default: the one recorded in ``run.json``; it must fit the run).
    """
    run_dir = Path(run_dir)
    config, run = read_run_config(run_dir), read_run_info(run_dir)
    ckpt_step, ckpt = _pick_checkpoint(run_dir, step)
    info = read_dataset_info(data_dir if data_dir is not None else run["dataset"])
    check_dataset_fits_run(info, run_dir)
    unet = MelUNet.from_pretrained(ckpt / "ema")
    stats = compute_dataset_stats(info, config.train.bank_size)
    t = config.train
    training = {"dataset": str(info.root.resolve()), "train_clips": info.num_clips("train"), "steps": ckpt_step,
                "checkpoint": str(ckpt.resolve()), "preset": t.preset, "batch_size": t.batch_size,
                "grad_accum": t.grad_accum, "lr": t.lr, "ema": t.ema, "precision": t.precision,
                "prediction": config.diffusion.prediction, "loss": config.diffusion.loss,
                "num_timesteps": config.diffusion.num_timesteps, "seed": t.seed,
                "parameters": unet.num_parameters()}
    out = Path(out) if out is not None else run_dir / "pipeline"
    write_pipeline_dir(out, unet=unet, diffusion=config.diffusion, mel=info.mel, clip=info.clip,
                       stats=stats, training=training)
    log.info("exported step %d of %s to %s", ckpt_step, run_dir, out)
    return out
