"""``train``: the mel diffusion model (MelUNet + Improved DDPM) as a task of the training loop.

A step is ``grad_accum`` micro-batches per process, gradients synchronised on the last one only. Validation
losses use fixed clips, t and noise, so they move only when the weights do. The export is a pipeline directory of
the EMA weights with the dataset's statistics (``clipsonic.export``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import heapq
import logging
import os
from collections.abc import Iterator
from functools import cached_property, partial
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from PIL import Image

from clipsonic.audio import MelConfig, denormalize, griffin_lim
from clipsonic.config import Config, ConfigError, NonNegative, NonNegativeInt, PositiveInt, Range
from clipsonic.data.dataset import DatasetInfo, read_dataset_info
from clipsonic.data.loader import StreamLayout, TrainStream, iter_split, load_fixed_samples
from clipsonic.diffusion import DEFAULT_GUIDANCE_SCALE, DiffusionConfig, GaussianDiffusion
from clipsonic.errors import ClipsonicError
from clipsonic.export import PipelineStats, bundled_clip, write_pipeline_dir
from clipsonic.media import save_audio
from clipsonic.models import UNET_PRESETS, MelUNet, MelUNetConfig
from clipsonic.plotting import save_mel_image
from clipsonic.train.checkpoint import Checkpoint
from clipsonic.train.harness import LoopConfig, Progress, Run, Task, config_sections, fit

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainConfig(LoopConfig):
    """The UNet's ``train`` section. Defaults follow the paper / Improved DDPM; CPU runs pass ``preset="cpu"``."""

    RESUMABLE: ClassVar[tuple[str, ...]] = LoopConfig.RESUMABLE + ("sample_every", "num_workers", "bundle_clip")

    max_steps: PositiveInt = 200_000  # the paper: 200K iterations on MUSIC (500K on VGGSound)
    # What it sets (flags and --config win; config.json keeps the result): paper, small, tiny: the MelUNet size
    # (models.UNET_PRESETS); cpu, a run of minutes on a CPU (clips of --clip-seconds 1.024): a tiny MelUNet,
    # prediction v, lr 1e-3, batch_size 16, ema 0.999, num_workers 0, max_steps 2000, val_every 500
    preset: Literal["paper", "small", "tiny", "cpu"] = "paper"
    # Per process and micro-step: 2 GPUs × 64 = improved-diffusion's batch of 128.
    # The effective batch is batch_size × grad_accum × processes.
    batch_size: PositiveInt = 64
    grad_accum: PositiveInt = 1  # micro-batches per optimizer step
    weight_decay: NonNegative = 0.0  # improved-diffusion trains without weight decay
    ema: Annotated[float, Range(0, 1, high_open=True)] = 0.9999  # EMA decay of the exported weights
    ema_warmup: bool = True  # decay min(ema, (1 + n) / (10 + n)) after n steps (see train/harness.py EMA)
    sample_every: NonNegativeInt = 5000  # a sampled mel image + Griffin-Lim audio every N steps (0: never)
    sample_steps: PositiveInt = 50  # DDIM steps of those samples: short, it is a progress check
    guidance_scale: NonNegative = DEFAULT_GUIDANCE_SCALE  # of those samples
    val_samples: PositiveInt = 64  # validation clips of the test split (fixed t and noise → comparable across steps)
    num_workers: NonNegativeInt = 2  # data-loading processes per training process
    shuffle_buffer: PositiveInt = 1000  # samples in each reader's shuffle buffer
    bank_size: NonNegativeInt = 4096  # image embeddings exported for the retrieval bridge
    gradient_checkpointing: bool = False  # recompute activations: ~30 % slower, far less memory
    bundle_clip: bool = True  # export copies the CLIP into PIPELINE/clip (loads offline anywhere); else a reference


# The sections a recipe preset sets below the flags (help: TrainConfig.preset). v-prediction learned far faster
# than the paper's ε with CPU-sized models (docs/benchmarks.md); short runs need a faster EMA than 0.9999.
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "cpu": {"train": {"lr": 1e-3, "batch_size": 16, "ema": 0.999, "num_workers": 0, "max_steps": 2000,
                      "val_every": 500},
            "diffusion": {"prediction": "v"}},
}
RECIPE_UNET = {"cpu": "tiny"}  # a recipe's MelUNet preset; the others name one


@dataclasses.dataclass(frozen=True)
class RunConfig(Config):  # everything that defines a UNet run: its config.json sections
    train: TrainConfig
    unet: MelUNetConfig
    diffusion: DiffusionConfig


def resolve_run_config(cond_dim: int, overrides: dict[str, dict[str, Any]] | None = None) -> RunConfig:
    """Defaults < preset < ``overrides``; ``unet.cond_dim`` from the dataset, ``learn_sigma`` from the diffusion."""
    sections = config_sections(overrides or {})
    preset = TrainConfig.from_dict(sections.get("train", {}), source="train").preset
    recipe = RECIPES.get(preset, {})
    train = TrainConfig.from_dict({**recipe.get("train", {}), **sections.get("train", {})}, source="train")
    diffusion = DiffusionConfig.from_dict({**recipe.get("diffusion", {}), **sections.get("diffusion", {})},
                                          source="diffusion")
    unet = sections.get("unet", {})
    for key, want in (("cond_dim", cond_dim), ("learn_sigma", diffusion.learn_sigma)):
        if unet.get(key, want) != want:
            raise ConfigError(f"config sets unet.{key}={unet[key]!r} but the "
                              f"{'dataset' if key == 'cond_dim' else 'diffusion config'} needs {want!r}")
    unet = {**UNET_PRESETS[RECIPE_UNET.get(preset, preset)].to_dict(), **unet, "cond_dim": cond_dim,
            "learn_sigma": diffusion.learn_sigma}
    return RunConfig.from_dict({**sections, "train": train.to_dict(), "unet": unet, "diffusion": diffusion.to_dict()})


def train_stream(info: DatasetInfo, cfg: Any, accelerator: Any, position: dict[str, Any] | None) -> TrainStream:
    """The dataset's train split as this process's share of batches (``cfg``: batch_size, seed, num_workers,
    shuffle_buffer), resumed at ``position``; UNetTask's and DistillTask's data."""
    layout = StreamLayout(shards=tuple(str(p) for p in info.shard_paths("train")), batch_size=cfg.batch_size,
                          seed=cfg.seed, rank=accelerator.process_index, world_size=accelerator.num_processes,
                          num_workers=cfg.num_workers, shuffle_buffer=cfg.shuffle_buffer)
    return TrainStream(info, layout, position, pin_memory=accelerator.device.type == "cuda")


class UNetTask(Task):
    name, config_class, export_name = "unet", RunConfig, "pipeline"

    def __init__(self, run: Run, info: DatasetInfo):
        super().__init__(run)
        cfg, acc = run.config.train, run.accelerator
        self.info, self.train_config = info, cfg
        self.follows_frames = run.config.unet.follows_frames  # batches carry cond_seq [B, N, D] then
        _check_sequences(run.config.unet, info)  # again here: a resumed run may be pointed at another dataset
        if info.frame_rate is not None and not self.follows_frames:
            log.info("%s has frame sequences; seq_cond='none' ignores them (train with --seq-cond film or xattn to use them)",
                     info.root)
        self.diffusion = GaussianDiffusion(run.config.diffusion)
        torch.manual_seed(cfg.seed)  # identical initial weights on every process
        model = MelUNet(run.config.unet)
        model.gradient_checkpointing = cfg.gradient_checkpointing
        # This process's draws: t, noise and drop masks (self.gen), dropout (torch's global RNG).
        # mod 2^64: what torch's seeds hold, for any seed config.Seed allows (same values for small seeds)
        self.gen = torch.Generator().manual_seed((cfg.seed * 100_003 + acc.process_index + 1) % 2**64)
        torch.manual_seed((cfg.seed * 100_003 + acc.process_index + 50_000) % 2**64)
        self.prepare_with_ema(model, cfg.ema, cfg.weight_decay, cfg.ema_warmup)

    @classmethod
    def resolve_config(cls, overrides: dict[str, dict[str, Any]], data: dict[str, Any]) -> RunConfig:
        config = resolve_run_config(int(data["clip"]["dim"]), overrides)
        frames, factor = data["frames"], config.unet.downsample_factor
        if frames % factor:
            raise ClipsonicError(f"{data['dataset']} has clips of {frames} mel frames but preset "
                                 f"{config.train.preset!r} needs a multiple of {factor}; re-run preprocess with "
                                 "another --clip-seconds or use another preset")
        _check_sequences(config.unet, read_dataset_info(data["dataset"]))  # before anything is written
        return config

    @classmethod
    def check_data(cls, saved: dict[str, Any], data: dict[str, Any], run_dir: Path) -> None:
        """Refuse a dataset whose mel config, CLIP width or CLIP weights differ from the run's, naming both."""
        info, what = read_dataset_info(data["dataset"]), f"the run in {run_dir} (trained on {saved['dataset']})"
        info.check_compatible(MelConfig.from_dict(saved["mel"], source=f"{run_dir}/config.json:data.mel"),
                              clip_dim=int(saved["clip"]["dim"]), what=what)
        if saved["clip"]["fingerprint"] != info.clip.fingerprint:
            raise ClipsonicError(f"{info.root} was built with CLIP weights {info.clip.describe()} but {what} used "
                                 f"{saved['clip']['model']} (weights {saved['clip']['fingerprint'][:12]}); re-run "
                                 f"preprocess with --clip-model {saved['clip']['model']}")

    def generators(self) -> dict[str, torch.Generator]:
        return {"train": self.gen}

    def position(self) -> dict[str, Any]:
        return self.stream.position()

    def extra_state(self) -> dict[str, Any]:
        position = self.stream.position()
        return {"epoch": position["epoch"], "samples_seen": position["samples"] * self.accelerator.num_processes}

    def batches(self, position: dict[str, Any] | None) -> Iterator[list[dict[str, Any]]]:
        self.stream = train_stream(self.info, self.train_config, self.accelerator, position)
        micro = iter(self.stream)
        while True:
            yield [next(micro) for _ in range(self.train_config.grad_accum)]

    def train_step(self, batch: list[dict[str, Any]], step: int) -> dict[str, Any]:
        acc, device, chunks = self.accelerator, self.accelerator.device, []
        for i, micro in enumerate(batch):
            x0 = micro["mel"].to(device, non_blocking=True)  # [B, 1, 64, F]
            cond = micro["cond"].to(device, non_blocking=True)  # [B, D]
            seq = micro["cond_seq"].to(device, non_blocking=True) if self.follows_frames else None  # [B, N, D]
            with contextlib.nullcontext() if i == len(batch) - 1 else acc.no_sync(self.model):
                terms = self.diffusion.training_losses(self.model, x0, cond, generator=self.gen, cond_seq=seq)
                self.backward(terms["loss"], scale=1 / len(batch), describe=partial(_describe, micro["keys"], x0, cond))
            chunks.append({name: value.detach() for name, value in terms.items()})
        grad_norm = self.step_optimizer("model")
        self.ema.update(acc.unwrap_model(self.model), step)
        out = loss_terms(chunks, torch.cat([c["t"].cpu() for c in chunks]), self.diffusion.num_timesteps)
        return {**out, "grad_norm": grad_norm, "epoch": float(self.stream.position()["epoch"]),
                "clips": [key for micro in batch for key in micro["keys"]]}

    @cached_property
    def fixed(self) -> dict[str, Any]:
        """What validation and samples always use (main process): the first ``val_samples`` test clips with fixed
        t (bin midpoints of [0, T)) and noise, or None; the sample's condition (a test clip, else a train clip)."""
        cfg, info, val = self.train_config, self.info, None
        if cfg.val_every and info.num_clips("test"):
            val = load_fixed_samples(info, "test", cfg.val_samples)
            n = len(val["keys"])
            val["t"] = ((torch.arange(n) + 0.5) * self.diffusion.num_timesteps / n).long()  # [N], never T - 1
            val["noise"] = torch.randn(val["mel"].shape, generator=torch.Generator().manual_seed(cfg.seed))
        elif cfg.val_every:
            log.warning("%s has no test split: no validation loss (re-run preprocess with --test-fraction)", info.root)
        source = val if val is not None else load_fixed_samples(info, "train", 1)
        return {"val": val, "cond": source["cond"][:1], "frames": source["mel"].shape[-1],
                "caption": f"{source['keys'][0]} (label: {source['labels'][0]})"}

    @torch.no_grad()
    def validate(self, step: int) -> dict[str, float]:
        """Mean loss terms over the validation clips, and by quarter of t, of the weights and of the EMA."""
        val, out = self.fixed["val"], {}
        if val is None:
            return out
        device, b = self.accelerator.device, self.train_config.batch_size
        for prefix, model in (("", self.accelerator.unwrap_model(self.model)), ("ema_", self.ema.model)):
            model.eval()  # the trained model goes back to train() below
            gen, chunks = torch.Generator().manual_seed(self.train_config.seed + 1), []
            for lo in range(0, len(val["keys"]), b):
                part = {k: val[k][lo:lo + b].to(device) for k in ("mel", "cond", "t", "noise")}
                seq = val["cond_seq"][lo:lo + b].to(device) if self.follows_frames else None
                with self.accelerator.autocast():
                    chunks.append(self.diffusion.training_losses(model, part["mel"], part["cond"], t=part["t"],
                                                                 noise=part["noise"], generator=gen, cond_seq=seq))
            terms = loss_terms(chunks, val["t"], self.diffusion.num_timesteps)  # each [N]
            out.update({prefix + name: float(v.mean()) for name, v in terms.items() if v.numel()})
        self.model.train()
        return out

    @torch.no_grad()
    def sample(self, step: int) -> None:
        """Every ``sample_every`` steps: a short DDIM chain of the EMA from fixed noise → ``RUN/samples/step-N.png``
        and its Griffin-Lim ``.wav``, and TensorBoard (a ``seq_cond="film"`` model: its constant sequence)."""
        cfg, mel = self.train_config, self.info.mel
        if not cfg.sample_every or step % cfg.sample_every:
            return
        fixed = self.fixed
        x0 = self.diffusion.sample(self.ema.model, (1, 1, mel.n_mels, fixed["frames"]),
                                   fixed["cond"].to(self.accelerator.device), sampler="ddim",
                                   steps=min(cfg.sample_steps, self.diffusion.num_timesteps),
                                   guidance_scale=cfg.guidance_scale,
                                   generator=torch.Generator().manual_seed(cfg.seed + 7919))  # not training's noise
        logmel = denormalize(x0[0, 0].float().cpu(), mel)  # [64, F]
        png = self.run.dir / "samples" / f"step-{step:07d}.png"
        save_mel_image(logmel.numpy(), mel, png, title=f"step {step}: {fixed['caption']}")
        wav = np.clip(griffin_lim(logmel, mel).numpy().astype(np.float32), -1.0, 1.0)  # [samples]
        save_audio(png.with_suffix(".wav"), wav, mel.sample_rate)
        logs = self.run.logs
        logs.tensorboard.add_image("sample/mel", np.asarray(Image.open(png).convert("RGB")), step, dataformats="HWC")
        logs.tensorboard.add_audio("sample/audio", wav[None], step, sample_rate=mel.sample_rate)
        logs.tensorboard.add_text("sample/condition", fixed["caption"], step)
        logs.record(step, "sample", {"image": png.name, "condition": fixed["caption"]})

    def out_of_memory(self) -> str:
        cfg = self.train_config
        return (f"at --batch-size {cfg.batch_size} (per process, preset {cfg.preset}); lower --batch-size (e.g. "
                f"{max(1, cfg.batch_size // 2)}) and raise --grad-accum (e.g. {cfg.grad_accum * 2}) to keep the "
                "effective batch, or use --precision bf16")

    @classmethod
    def export(cls, run: Run, checkpoint: Checkpoint, out: Path, data: str | os.PathLike | None = None, *,
               bundle_clip: bool | None = None) -> Path:
        """The pipeline of the checkpoint's EMA weights, with the statistics of ``data`` (default: the run's) and,
        when ``bundle_clip`` (default: the run's ``train.bundle_clip``), a copy of the CLIP (:func:`bundled_clip`)."""
        info = read_dataset_info(data if data is not None else run.data["dataset"])
        cls.check_data(run.data, {"dataset": info.root}, run.dir)
        unet = MelUNet(run.config.unet)
        unet.load_state_dict(checkpoint.module("ema"))
        t, d = run.config.train, run.config.diffusion
        training = {"dataset": str(info.root.resolve()), "train_clips": info.num_clips("train"),
                    "steps": checkpoint.step, "checkpoint": str(checkpoint.path.resolve()), "preset": t.preset,
                    "batch_size": t.batch_size, "grad_accum": t.grad_accum, "lr": t.lr, "ema": t.ema,
                    "precision": t.precision, "prediction": d.prediction, "loss": d.loss,
                    "num_timesteps": d.num_timesteps, "seed": t.seed, "parameters": unet.num_parameters()}
        if run.config.unet.follows_frames:  # the rate generation embeds a video's frames at (pipeline.sequence)
            training["frame_rate"] = info.frame_rate
        bundle = t.bundle_clip if bundle_clip is None else bundle_clip
        return write_pipeline_dir(out, unet=unet, diffusion=d, mel=info.mel, clip=info.clip,
                                  stats=compute_dataset_stats(info, t.bank_size), training=training,
                                  extra_components=bundled_clip(info.clip) if bundle else None)


def _check_sequences(unet: MelUNetConfig, info: DatasetInfo) -> None:
    if unet.follows_frames and info.frame_rate is None:
        raise ClipsonicError(f"{info.root} has no frame sequences, which seq_cond={unet.seq_cond!r} trains on; re-run "
                             "preprocess with --frame-rate (e.g. --frame-rate 4), or train with --seq-cond none")


def loss_terms(chunks: list[dict[str, torch.Tensor]], t: torch.Tensor, num_timesteps: int) -> dict[str, torch.Tensor]:
    """The per-example terms of ``training_losses`` outputs joined, each ``[N]``, and the loss split by quarter
    of the timesteps ``t`` ``[N]``: ``loss_q1`` (least noise) … ``loss_q4``."""
    out = {name: torch.cat([c[name].float().cpu() for c in chunks]) for name in ("loss", "mse", "vlb")
           if name in chunks[0]}
    quarter = (t.cpu() * 4) // num_timesteps
    return {**out, **{f"loss_q{q + 1}": out["loss"][quarter == q] for q in range(4)}}


def compute_dataset_stats(info: DatasetInfo, bank_size: int, split: str = "train") -> PipelineStats:
    """One pass over a split's clip embeddings: their mean, and a bank of up to ``bank_size`` of them: the
    (key, frame) pairs with the smallest BLAKE2b hash of ``"key/frame"``, sorted by that hash (a uniform,
    deterministic choice independent of shard order)."""
    total: np.ndarray | None = None
    clips = embeddings = 0
    heap: list[tuple[int, str, np.ndarray, str | None]] = []  # max-heap by hash via negation
    for raw in iter_split(info, split, fields=("clip.npy", "json")):
        clip = raw["clip.npy"].astype(np.float64)  # [K, D]
        label = raw["json"].get("label")
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
        raise ClipsonicError(f"{info.root}: the {split!r} split has no clips to compute statistics from")
    chosen = sorted(heap, key=lambda item: -item[0])
    bank = np.stack([row for _, _, row, _ in chosen]) if chosen else np.zeros((0, total.shape[0]), np.float16)
    return PipelineStats(
        mean_image_embedding=torch.from_numpy((total / embeddings).astype(np.float32)),
        image_bank=torch.from_numpy(bank), bank_keys=[n for _, n, _, _ in chosen],
        bank_labels=[lab for _, _, _, lab in chosen],
        info={"dataset": str(info.root.resolve()), "split": split, "num_clips": clips, "num_embeddings": embeddings,
              "selection": "smallest blake2b-64 of 'key/frame'"})


def _describe(keys: list[str], mel: torch.Tensor, cond: torch.Tensor, bad: list[int]) -> list[str]:
    """The clips ``bad`` of a batch with a non-finite loss, and which of their inputs are not finite."""
    out = []
    for i in bad:
        why = [name for name, x in (("mel", mel[i]), ("embedding", cond[i])) if not bool(torch.isfinite(x).all())]
        out.append(keys[i] + (f" (NaN/inf in its {' and '.join(why)})" if why else ""))
    return out


def train(data_dir: str | os.PathLike, run_dir: str | os.PathLike, overrides: dict[str, dict[str, Any]] | None = None,
          *, resume: bool = False, restart: bool = False, progress: Progress | None = None) -> Path:
    """Train (or resume, or restart) a UNet run on a preprocessed dataset; returns ``run_dir`` (the pipeline in RUN/pipeline).

    ``overrides``: config sections ``{"train": {...}, "unet": {...}, "diffusion": {...}}`` (e.g. a run's
    config.json); on resume only :attr:`TrainConfig.RESUMABLE` fields may differ from the saved ones."""
    info = read_dataset_info(data_dir)
    if not info.shard_paths("train"):
        raise ClipsonicError(f"{info.root}: the train split has no shards; re-run preprocess")
    data = {"dataset": str(info.root.resolve()), "mel": info.mel.to_dict(), "clip": info.clip.to_dict(),
            "frames": info.mel.clip_frames, "train_clips": info.num_clips("train")}
    return fit(UNetTask, run_dir, overrides, data=data, resume=resume, restart=restart, progress=progress, info=info)
