"""The training loop behind :func:`clipsonic.vocoder.train.train_vocoder` (accelerate, checkpoints, TensorBoard)."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import torch

from clipsonic.audio import MelConfig
from clipsonic.vocoder.base import VocoderError
from clipsonic.vocoder.checkpoint import load_checkpoint, save_checkpoint
from clipsonic.vocoder.data import SegmentDataset, StepSampler, open_corpus, validation_segments
from clipsonic.vocoder.gan import GANModules, train_step, validate
from clipsonic.vocoder.train import (
    ProgressCallback,
    TrainResult,
    VocoderTrainConfig,
    build_models,
    export_vocoder,
)

log = logging.getLogger(__name__)

LOG_EVERY = 10  # TensorBoard scalars every N steps: a 500k-step run stays a few MB of events


def _accelerator(precision: str):
    from accelerate import Accelerator

    if precision == "fp16" and not torch.cuda.is_available():
        raise VocoderError("--precision fp16 needs a CUDA GPU; use bf16 or no on CPU")
    return Accelerator(mixed_precision=precision)


def _open_data(data: Path, config: VocoderTrainConfig, mel: MelConfig):
    corpus = open_corpus(data, mel.sample_rate, config.num_val, config.seed)
    for name, reason in corpus.skipped:
        log.warning("skipped %s: %s", name, reason)
    short = corpus.count_short(config.segment_size)
    log.info("%s: %d training items, %d validation, %d skipped, %d shorter than a %d-sample segment (zero-padded)",
             corpus.source, len(corpus.train), len(corpus.val), len(corpus.skipped), short, config.segment_size)
    return corpus


def _restore(ckpt_path: Path | None, generator, discriminator, optim_g, optim_d) -> dict[str, Any]:
    if ckpt_path is None:
        return {"step": 0, "val_history": []}
    ckpt = load_checkpoint(ckpt_path)
    generator.load_state_dict(ckpt["generator"])
    discriminator.load_state_dict(ckpt["discriminator"])
    optim_g.load_state_dict(ckpt["optimizers"]["g"])
    optim_d.load_state_dict(ckpt["optimizers"]["d"])
    log.info("resuming from %s", ckpt_path)
    return ckpt["state"]


def _check_finite(logs: dict[str, float], step: int) -> None:
    bad = {k: v for k, v in logs.items() if k.startswith(("loss", "mel")) and not math.isfinite(v)}
    if bad:
        raise VocoderError(
            f"non-finite loss at step {step} ({', '.join(f'{k}={v}' for k, v in bad.items())}); "
            "training stopped. Lower --lr, use --precision no, or resume from the last checkpoint"
        )


class _Run:
    """State shared by the loop's helpers: config, modules, writer, history."""

    def __init__(self, out: Path, config: VocoderTrainConfig, mel: MelConfig, accelerator, modules: GANModules):
        self.out, self.config, self.mel, self.acc, self.m = out, config, mel, accelerator, modules
        self.writer = None
        if accelerator.is_main_process:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "logs"))
        self.history: list[tuple[int, float]] = []

    def validate(self, step: int, val_audio: torch.Tensor) -> float:
        generator = self.acc.unwrap_model(self.m.generator)
        mel_l1, wav = validate(generator, val_audio.to(self.acc.device), self.mel)
        self.history.append((step, mel_l1))
        log.info("step %d: validation mel-L1 %.4f", step, mel_l1)
        if self.writer is not None:
            self.writer.add_scalar("val/mel_l1", mel_l1, step)
            for i in range(min(self.config.audio_examples, len(wav))):
                if step == 0 or not self.history[:-1]:
                    self.writer.add_audio(f"val/real_{i}", val_audio[i].clamp(-1, 1), step, self.mel.sample_rate)
                self.writer.add_audio(f"val/generated_{i}", wav[i].clamp(-1, 1).cpu(), step, self.mel.sample_rate)
            self.writer.flush()
        return mel_l1

    def save(self, step: int) -> None:
        m, acc = self.m, self.acc
        state = {"val_history": self.history}
        if acc.scaler is not None:
            state["scaler"] = {k: float(v) for k, v in acc.scaler.state_dict().items()}
        save_checkpoint(self.out / "checkpoints", step, acc.unwrap_model(m.generator),
                        acc.unwrap_model(m.discriminator), {"g": m.optim_g, "d": m.optim_d}, state,
                        self.config.keep_last)

    def log_scalars(self, step: int, logs: dict[str, float], lr: float) -> None:
        if self.writer is not None and step % LOG_EVERY == 0:
            for key, value in logs.items():
                self.writer.add_scalar(f"train/{key}", value, step)
            self.writer.add_scalar("train/lr", lr, step)


def run_training(data: Path, out: Path, config: VocoderTrainConfig, mel: MelConfig,
                 resume_from: Path | None, callback: ProgressCallback | None) -> TrainResult:
    """Build everything, restore ``resume_from`` if given, train to ``max_steps``, export."""
    warnings.filterwarnings("ignore", message="A window was not provided")  # bigvgan's MRD STFT
    acc = _accelerator(config.precision)
    corpus = _open_data(data, config, mel)
    generator, discriminator = build_models(config, mel)
    generator.to(acc.device)
    discriminator.to(acc.device)
    betas = (config.adam_b1, config.adam_b2)
    optim_g = torch.optim.AdamW(generator.parameters(), config.lr, betas=betas)
    optim_d = torch.optim.AdamW(discriminator.parameters(), config.lr, betas=betas)
    state = _restore(resume_from, generator, discriminator, optim_g, optim_d)
    modules = GANModules(*acc.prepare(generator, discriminator, optim_g, optim_d), accelerator=acc)
    if acc.scaler is not None and "scaler" in state:
        acc.scaler.load_state_dict(state["scaler"])
    run = _Run(out, config, mel, acc, modules)
    run.history = [tuple(h) for h in state.get("val_history", [])]
    step = int(state["step"])
    val_audio = validation_segments(corpus, config.val_segment_size, config.num_val, mel.sample_rate, config.seed)
    if step == 0 and acc.is_main_process:
        run.validate(0, val_audio)
    _loop(run, corpus, step, val_audio, callback)
    vocoder_dir = out / "vocoder"
    if acc.is_main_process:
        export_vocoder(acc.unwrap_model(modules.generator), config, mel, vocoder_dir)
        run.writer.close()
        log.info("wrote %s", vocoder_dir)
    acc.wait_for_everyone()
    return TrainResult(out, vocoder_dir, max(step, config.max_steps), run.history)


def _loop(run: _Run, corpus, step: int, val_audio: torch.Tensor, callback: ProgressCallback | None) -> None:
    config, acc, m = run.config, run.acc, run.m
    if step >= config.max_steps:
        return
    dataset = SegmentDataset(corpus.train, config.segment_size, run.mel.sample_rate, config.seed)
    sampler = StepSampler(config.batch_size, step, acc.process_index, acc.num_processes)
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, sampler=sampler,
                                         num_workers=config.num_workers, pin_memory=acc.device.type == "cuda")
    m.generator.train()
    m.discriminator.train()
    for audio in loader:
        lr = config.lr * config.lr_decay ** step
        for optimizer in (m.optim_g, m.optim_d):
            for group in optimizer.param_groups:
                group["lr"] = lr
        logs = train_step(m, audio.to(acc.device), run.mel, lambda_mel=config.lambda_mel,
                          clip_grad_norm=config.clip_grad_norm,
                          train_discriminator=step >= config.disc_start_step)
        _check_finite(logs, step)
        step += 1
        run.log_scalars(step, logs, lr)
        last = step >= config.max_steps
        if acc.is_main_process and (step % config.val_every == 0 or last):
            logs["val_mel_l1"] = run.validate(step, val_audio)
        if step % config.save_every == 0 or last:
            acc.wait_for_everyone()
            if acc.is_main_process:
                run.save(step)
        if callback is not None and acc.is_main_process:
            callback(step, config.max_steps, logs)
        if last:
            break
