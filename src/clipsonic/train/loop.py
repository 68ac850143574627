"""``clipsonic train``: the training loop over HF accelerate (CPU, one GPU, many GPUs and nodes).

One optimizer step = ``grad_accum`` micro-batches per process: for each, the diffusion draws t,
noise and the guidance drop mask from this process's own generator, the hybrid loss is checked for
NaN/inf on every process (a bad batch stops the run before its update, naming the step and the
clips), and gradients are synchronised on the last micro-batch only. Then: gradient clipping,
AdamW at ``lr_at(step)``, the EMA update, and — at their intervals — logs, validation, a sample,
and a checkpoint (see checkpoint.py). Run directory::

    config.json          the resolved RunConfig (``--config`` it to reproduce the run)
    run.json             the dataset it trains on: path, mel config, CLIP model (checked on resume)
    metrics.jsonl        train / val / sample records
    tensorboard/         the same scalars, sample mel images and Griffin-Lim audio
    samples/             step-NNNNNNN.png / .wav
    checkpoints/         step-NNNNNNN/ (newest keep_last)
    pipeline/            the exported EMA pipeline (clipsonic.export), written at the end
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from clipsonic.data.loader import StreamLayout, TrainStream
from clipsonic.diffusion import GaussianDiffusion
from clipsonic.errors import ClipsonicError
from clipsonic.files import write_json_atomic
from clipsonic.models import MelUNet
from clipsonic.train.checkpoint import (
    Checkpoint,
    RankState,
    capture_rng,
    flatten_optimizer_state,
    load_latest_checkpoint,
    remove_stale_temporaries,
    restore_rng,
    save_checkpoint,
)
from clipsonic.train.config import ConfigFile
from clipsonic.train.ema import EMA
from clipsonic.train.logs import MetricsLog
from clipsonic.train.monitor import Monitor, quarter_means
from clipsonic.train.run_dir import RunSetup, prepare_run

log = logging.getLogger(__name__)

Progress = Callable[[int, int, "dict[str, float] | None"], None]


class TrainingError(ClipsonicError):
    """Training cannot go on: a non-finite loss, out of memory."""


class Trainer:
    """One process's share of a run; every process of an ``accelerate launch`` builds one."""

    def __init__(self, setup: RunSetup, accelerator, weight_hashes: bool = False):
        self.setup, self.accelerator, self.weight_hashes = setup, accelerator, weight_hashes
        self.keys_seen: list[str] = []  # with weight_hashes: the clips this process trained on, in order
        self.config, self.run_dir = setup.config.train, setup.run_dir
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.device = accelerator.device
        self.diffusion = GaussianDiffusion(setup.config.diffusion)
        torch.manual_seed(self.config.seed)  # identical initial weights on every process
        model = MelUNet(setup.config.unet)
        model.gradient_checkpointing = self.config.gradient_checkpointing
        self.ema = EMA(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)
        # This process's draws: t, noise and drop masks (self.gen), dropout (torch's global RNG).
        self.gen = torch.Generator().manual_seed(self.config.seed * 100_003 + self.rank + 1)
        torch.manual_seed(self.config.seed * 100_003 + self.rank + 50_000)
        ckpt = load_latest_checkpoint(self.run_dir, self.rank) if setup.resume else None
        if ckpt is not None:
            model.load_state_dict(ckpt.model)
            self.ema.model.load_state_dict(ckpt.ema)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.ema.to(self.device)
        self.step = 0
        if ckpt is not None:
            self._restore(ckpt)
        layout = StreamLayout(shards=tuple(str(p) for p in setup.info.shard_paths("train")),
                              batch_size=self.config.batch_size, seed=self.config.seed, rank=self.rank,
                              world_size=self.world, num_workers=self.config.num_workers,
                              shuffle_buffer=self.config.shuffle_buffer)
        self.stream = TrainStream(setup.info, layout, _data_position(ckpt), pin_memory=self.device.type == "cuda")
        main = accelerator.is_main_process
        self.monitor = Monitor(setup.info, self.diffusion, self.config, self.device) if main else None
        self.logs = MetricsLog(self.run_dir, self.step, enabled=main)
        self._reset_window()

    def _restore(self, ckpt: Checkpoint) -> None:
        self.optimizer.load_state_dict(ckpt.optimizer)
        scaler = ckpt.state.get("scaler")
        if scaler and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(scaler)
        if ckpt.rng is not None:
            restore_rng(ckpt.rng, {"train": self.gen})
        else:
            log.warning("checkpoint %s has no RNG state for process %d (saved with %d processes): "
                        "this process's random draws restart", ckpt.path, self.rank, ckpt.state["world_size"])
        self.step = ckpt.step
        log.info("resumed from %s (step %d)", ckpt.path, ckpt.step)

    # --- the loop ---------------------------------------------------------------------------
    def run(self, progress: Progress | None = None) -> int:
        """Train until ``max_steps``; returns the final step."""
        batches = iter(self.stream)
        last_saved = self.step
        try:
            while self.step < self.config.max_steps:
                stats = self._optimizer_step(batches)
                self.step += 1
                logged = self._after_step(stats)
                if self.step % self.config.save_every == 0:
                    self.save()
                    last_saved = self.step
                if progress is not None:
                    progress(self.step, self.config.max_steps, logged)
            if last_saved != self.step:
                self.save()
            if self.weight_hashes:
                self._write_weight_hash()
        finally:
            self.logs.close()
        return self.step

    def _optimizer_step(self, batches: Iterator[dict[str, Any]]) -> dict[str, Any]:
        accum, acc = self.config.grad_accum, self.accelerator
        parts: dict[str, list[torch.Tensor]] = {}
        data_s = 0.0
        for micro in range(accum):
            t0 = time.perf_counter()
            batch = next(batches)
            data_s += time.perf_counter() - t0
            if self.weight_hashes:
                self.keys_seen.extend(batch["keys"])
            x0 = batch["mel"].to(self.device, non_blocking=True)  # [B, 1, 64, F]
            cond = batch["cond"].to(self.device, non_blocking=True)  # [B, D]
            sync = contextlib.nullcontext() if micro == accum - 1 else acc.no_sync(self.model)
            with sync, self._oom_guard():
                terms = self.diffusion.training_losses(self.model, x0, cond, generator=self.gen)
                self._check_finite(terms["loss"], batch["keys"], x0, cond)
                acc.backward(terms["loss"].mean() / accum)
            for name in ("loss", "mse", "vlb", "t"):
                if name in terms:
                    parts.setdefault(name, []).append(terms[name].detach().float().cpu())
        max_norm = self.config.grad_clip or float("inf")
        grad_norm = float(acc.clip_grad_norm_(self.model.parameters(), max_norm))
        if not torch.isfinite(torch.tensor(grad_norm)) and acc.mixed_precision != "fp16":
            raise TrainingError(f"step {self.step + 1}: non-finite gradient norm ({grad_norm}) with a finite loss; "
                                "lower --lr or use --precision no")
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr_at(self.step)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(acc.unwrap_model(self.model), self.config.ema_decay_at(self.step + 1))
        return {**{k: torch.cat(v) for k, v in parts.items()}, "grad_norm": grad_norm, "data_s": data_s}

    def _check_finite(self, loss: torch.Tensor, keys: list[str], x0: torch.Tensor, cond: torch.Tensor) -> None:
        """Stop every process if any has a non-finite loss; name the step and the clips."""
        bad = ~torch.isfinite(loss.detach())  # [B]
        flag = self.accelerator.reduce(bad.any().float().reshape(1).to(self.device), reduction="sum")
        if float(flag) == 0:
            return
        step = self.step + 1
        if not bool(bad.any()):
            raise TrainingError(f"step {step}: another process had a non-finite loss (its error names the clips)")
        named = []
        for i in torch.nonzero(bad.cpu()).flatten().tolist():
            why = [w for w, x in (("mel", x0[i]), ("embedding", cond[i])) if not bool(torch.isfinite(x).all())]
            named.append(f"{keys[i]}" + (f" (NaN/inf in its {' and '.join(why)})" if why else ""))
        raise TrainingError(
            f"step {step}: non-finite loss on process {self.rank} for {len(named)} of {len(keys)} clips in the batch: "
            f"{', '.join(named)}; no checkpoint was written for this step. Fix or drop those clips "
            "(re-run preprocess), or lower --lr if the inputs are finite")

    @contextlib.contextmanager
    def _oom_guard(self):
        try:
            yield
        except torch.cuda.OutOfMemoryError:
            b = self.config.batch_size
            raise TrainingError(
                f"out of GPU memory at --batch-size {b} (per process, preset {self.config.preset}); lower --batch-size "
                f"(e.g. {max(1, b // 2)}) and raise --grad-accum (e.g. {self.config.grad_accum * 2}) to keep the "
                "effective batch, or use --precision bf16") from None

    # --- logs, validation, samples ----------------------------------------------------------
    def _reset_window(self) -> None:
        self.window: dict[str, list[torch.Tensor]] = {}
        self.window_norms: list[float] = []
        self.window_data_s = 0.0
        self.window_start = time.perf_counter()

    def _after_step(self, stats: dict[str, Any]) -> dict[str, float] | None:
        for name in ("loss", "mse", "vlb", "t"):
            if name in stats:
                self.window.setdefault(name, []).append(stats[name])
        self.window_norms.append(stats["grad_norm"])
        self.window_data_s += stats["data_s"]
        logged = None
        if self.step % self.config.log_every == 0 or self.step == self.config.max_steps:
            logged = self._log_train()
        if self.monitor is not None and self.config.val_every and self.step % self.config.val_every == 0:
            self._validate()
        if self.monitor is not None and self.config.sample_every and self.step % self.config.sample_every == 0:
            png, wav = self.monitor.sample(self.ema.model, self.run_dir / "samples", self.step)
            self.logs.sample(self.step, png, wav, self.setup.info.mel.sample_rate, self.monitor.sample_caption)
        return logged

    def _log_train(self) -> dict[str, float]:
        window = {k: torch.cat(v) for k, v in self.window.items()}  # each [steps · accum · B]
        names = [k for k in ("loss", "mse", "vlb") if k in window]
        sums = torch.stack([window[k].sum() for k in names] + [torch.tensor(float(len(window["loss"])))])
        sums = self.accelerator.reduce(sums.to(self.device), reduction="sum").cpu()  # every process's examples
        elapsed = time.perf_counter() - self.window_start
        values = {k: float(sums[i] / sums[-1]) for i, k in enumerate(names)}
        values.update(quarter_means(window["loss"], window["t"], self.diffusion.num_timesteps))
        values.update(lr=self.config.lr_at(self.step - 1), grad_norm=sum(self.window_norms) / len(self.window_norms),
                      samples_per_s=float(sums[-1]) / elapsed, data_wait_frac=self.window_data_s / elapsed,
                      epoch=float(self.stream.position()["epoch"]))
        self.logs.scalars(self.step, "train", values)
        self._reset_window()
        return values

    def _validate(self) -> None:
        values = self.monitor.validation_losses(self.accelerator.unwrap_model(self.model), self.accelerator.autocast)
        ema_values = self.monitor.validation_losses(self.ema.model, self.accelerator.autocast)
        if values:
            self.logs.scalars(self.step, "val", {**values, **{f"ema_{k}": v for k, v in ema_values.items()}})
        self.logs.flush()

    # --- checkpoints --------------------------------------------------------------------------
    def save(self) -> Path:
        state = RankState(rng=capture_rng({"train": self.gen}), data_position=self.stream.position())
        return save_checkpoint(self.run_dir, self.step, rank=self.rank, world_size=self.world,
                               barrier=self.accelerator.wait_for_everyone, rank_state=state,
                               write_main=self._write_main if self.accelerator.is_main_process else None,
                               keep_last=self.config.keep_last)

    def _write_main(self, directory: Path) -> dict[str, Any]:
        from safetensors.torch import save_file

        self.accelerator.unwrap_model(self.model).save_pretrained(directory / "model")
        self.ema.model.save_pretrained(directory / "ema")
        tensors, meta = flatten_optimizer_state(self.optimizer.state_dict())
        save_file(tensors, str(directory / "optimizer.safetensors"))
        write_json_atomic(directory / "optimizer.json", meta)
        scaler = self.accelerator.scaler
        position = self.stream.position()
        return {"scaler": scaler.state_dict() if scaler is not None else None,
                "epoch": position["epoch"], "samples_seen": position["samples"] * self.world}

    def _write_weight_hash(self) -> None:
        """Debug aid (hidden CLI flag): each process writes a hash of its weights and the clips it saw
        (in this invocation), to compare across ranks."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.accelerator.unwrap_model(self.model).state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        write_json_atomic(self.run_dir / "debug" / f"weights-rank{self.rank}.json",
                          {"step": self.step, "sha256": digest.hexdigest(), "world_size": self.world,
                           "data_position": self.stream.position(), "keys_seen": self.keys_seen})


def _data_position(ckpt: Checkpoint | None) -> dict[str, Any] | None:
    """This process's saved data position; a process the checkpoint did not have starts at its epoch."""
    if ckpt is None or ckpt.data_position is not None:
        return ckpt.data_position if ckpt else None
    return {"batches": 0, "roles": [[int(ckpt.state.get("epoch", 0)), 0]], "layout": None}


def train(data_dir: str | Path, run_dir: str | Path, *, config_file: ConfigFile | None = None,
          flags: dict[str, Any] | None = None, resume: bool = False, progress: Progress | None = None,
          export: bool | None = None, weight_hashes: bool = False) -> Path:
    """Train (or resume) a run; returns the run directory. ``flags``: TrainConfig fields (+ ``prediction``).

    At the end the EMA pipeline is exported to ``RUN_DIR/pipeline`` unless ``export`` is False
    (default: the config's ``export_at_end``).
    """
    from accelerate import Accelerator

    setup = prepare_run(data_dir, run_dir, config_file=config_file, flags=flags, resume=resume)
    try:
        # cpu=True on machines without CUDA: then several launched processes (`accelerate launch
        # --multi_gpu`, torchrun) form a gloo group instead of each training alone.
        accelerator = Accelerator(mixed_precision=setup.config.train.precision, cpu=not torch.cuda.is_available())
    except ValueError as exc:
        raise TrainingError(f"--precision {setup.config.train.precision}: {exc}") from None
    accelerator.wait_for_everyone()  # every process has read the run dir before rank 0 writes to it
    if accelerator.is_main_process:
        setup.write()
        remove_stale_temporaries(setup.run_dir)
    accelerator.wait_for_everyone()
    trainer = Trainer(setup, accelerator, weight_hashes=weight_hashes)
    step = trainer.run(progress)
    do_export = setup.config.train.export_at_end if export is None else export
    if do_export and accelerator.is_main_process and step >= setup.config.train.max_steps:
        from clipsonic.train.export import export_run

        export_run(setup.run_dir)  # no barrier after: a long statistics pass must not time out the others
    log.info("training finished at step %d: %s", step, setup.run_dir)
    return setup.run_dir
