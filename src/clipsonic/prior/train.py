"""``train_prior``: our diffusion prior on image–caption pairs (``clipsonic train-prior``).

Run directory (``--out RUN``)::

    RUN/train_config.json     PriorTrainConfig + the CLIP reference of the pairs
    RUN/pairs.safetensors     the embedded pairs (computed once; a resumed run reuses them)
    RUN/checkpoints/step-N/   model, EMA, AdamW state, RNG states (clipsonic.train.checkpoint)
    RUN/metrics.jsonl         train loss every log_every steps; validation metrics (+ TensorBoard)
    RUN/prior/                the finished prior (EMA weights): load_prior(RUN) / `clipsonic prior attach`

The same loop runs on CPU, one GPU or many (``accelerate launch``): every process draws the same
global batch of pair indices from a shared seeded generator and trains on its slice, so the data
never depend on timing, and a resumed run continues the exact index stream.

Validation (held-out clips/images) reports the modality gap closing: the mean cosine between a
pair's image embedding and (a) the raw text embedding (``cos_zs``, what ZS conditions on), (b) the
training-free shift bridge (``cos_shift``) and (c) a prior sample (``cos_prior``, what PD uses).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from clipsonic.config import Config, ConfigError
from clipsonic.diffusion import GaussianDiffusion
from clipsonic.files import atomic_directory, write_json_atomic
from clipsonic.prior.base import PriorError
from clipsonic.prior.data import DEFAULT_TEMPLATES, PAIRS_NAME, PairSet, collect_pairs
from clipsonic.prior.network import PRIOR_PRESETS, PriorNet, prior_preset
from clipsonic.prior.ours import DiffusionPrior, PriorConfig, _prior_diffusion, embedding_scale

log = logging.getLogger(__name__)

CONFIG_NAME = "train_config.json"
# May change when a run resumes: they decide how long and how often, not what is learned.
RESUMABLE_FIELDS = ("max_steps", "val_every", "val_pairs", "save_every", "keep_last", "log_every")


@dataclasses.dataclass(frozen=True)
class PriorTrainConfig(Config):
    """The prior's training loop (defaults sized for a preprocessed dataset on one GPU or a CPU)."""

    preset: str = "small"  # PriorNet preset: tiny | small | base
    batch_size: int = 256  # pairs per optimizer step, over all processes
    lr: float = 3e-4
    weight_decay: float = 0.05  # DALL-E 2's prior used 6e-2
    warmup_steps: int = 100
    max_steps: int = 20_000
    grad_clip: float = 1.0
    ema: float = 0.999  # with warm-up: min(ema, (1 + n)/(10 + n)) after n updates
    p_uncond: float = 0.1  # text dropped for classifier-free guidance (DALL-E 2: 10 %)
    val_fraction: float = 0.1  # of clips/images held out
    val_every: int = 1000
    val_pairs: int = 256  # validation pairs sampled per evaluation (fixed seeds)
    save_every: int = 2000
    keep_last: int = 2
    log_every: int = 100
    seed: int = 0
    precision: str = "no"  # accelerate: no | bf16 | fp16
    templates: tuple[str, ...] = DEFAULT_TEMPLATES  # label → captions, for a dataset source
    sample_steps: int = 64  # the exported prior's default sampling chain
    guidance_scale: float = 1.0  # the exported prior's default guidance

    def __post_init__(self) -> None:
        if self.preset not in PRIOR_PRESETS:
            raise ConfigError(f"unknown prior preset {self.preset!r}; choose one of {sorted(PRIOR_PRESETS)}")
        if self.precision not in ("no", "bf16", "fp16"):
            raise ConfigError(f"precision must be no, bf16 or fp16, got {self.precision!r}")
        for name in ("batch_size", "max_steps", "save_every", "keep_last", "log_every", "val_pairs", "sample_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.warmup_steps < 0 or self.val_every < 0:
            raise ConfigError("warmup_steps and val_every must be >= 0")
        if not self.lr > 0 or self.weight_decay < 0 or self.grad_clip < 0 or not 0 <= self.ema < 1:
            raise ConfigError("need lr > 0, weight_decay >= 0, grad_clip >= 0, 0 <= ema < 1")
        if not 0 <= self.p_uncond < 1 or not 0 <= self.val_fraction < 1:
            raise ConfigError("p_uncond and val_fraction must be in [0, 1)")

    def prior_config(self, dim: int) -> PriorConfig:
        return PriorConfig(network=prior_preset(self.preset, dim),
                           diffusion=_prior_diffusion().replace(p_uncond=self.p_uncond),
                           steps=self.sample_steps, guidance_scale=self.guidance_scale)

    def lr_at(self, step: int) -> float:
        return self.lr * min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else self.lr


@dataclasses.dataclass
class PriorTrainResult:
    run_dir: Path
    prior_dir: Path
    steps: int
    metrics: dict[str, float]  # the last validation record (empty on processes other than the main one)
    main_process: bool = True


def run_config(run_dir: Path, flags: dict[str, Any], resume: bool) -> PriorTrainConfig:
    """The config of a new run (defaults + ``flags``), or of a resumed one: its saved config with
    the given ``flags`` applied, where only :data:`RESUMABLE_FIELDS` may differ."""
    path = run_dir / CONFIG_NAME
    if not resume:
        if path.is_file() or (run_dir / "checkpoints").is_dir():
            raise PriorError(f"{run_dir} already holds a prior run; pass --resume to continue it or choose a new --out")
        try:
            return PriorTrainConfig(**flags)
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
    if not path.is_file():
        raise PriorError(f"{run_dir}: nothing to resume (no {CONFIG_NAME}); drop --resume to start a run there")
    saved = PriorTrainConfig.from_dict(_read_json(path)["train"], source=str(path))
    changed = {k: v for k, v in flags.items() if v != getattr(saved, k)}
    fixed = sorted(set(changed) - set(RESUMABLE_FIELDS))
    if fixed:
        raise PriorError(f"{run_dir} was trained with {', '.join(f'{k}={getattr(saved, k)!r}' for k in fixed)}; "
                         f"resuming with other values would not continue the same run (only "
                         f"{', '.join(RESUMABLE_FIELDS)} may change): drop those flags or use a new --out")
    return saved.replace(**changed)


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PriorError(f"{path}: not readable JSON ({exc})") from None


def prepare_pairs(source, run_dir: Path, config: PriorTrainConfig, clip_model: str | None,
                  load_encoder: Callable[[str | None], Any]) -> PairSet:
    """The run's pairs: reused from ``RUN/pairs.safetensors`` when present, else embedded and saved."""
    path = run_dir / PAIRS_NAME
    if path.is_file():
        pairs = PairSet.load(path)
        if Path(pairs.source).resolve() != Path(source).resolve():
            raise PriorError(f"{run_dir} was trained on {pairs.source}, not {source}; use a new --out")
        log.info("reusing the %d embedded pairs in %s", len(pairs), path)
        return pairs
    pairs = collect_pairs(source, load_encoder, clip_model=clip_model, templates=config.templates)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    pairs.save(tmp)
    os.replace(tmp, path)
    return pairs


@torch.no_grad()
def evaluate(prior: DiffusionPrior, pairs: PairSet, train_idx: torch.Tensor, val_idx: torch.Tensor,
             n: int, seed: int) -> dict[str, float]:
    """Validation loss and the mean image–condition cosines (zs, shift, prior) on ≤ ``n`` held-out pairs."""
    chosen = val_idx[torch.randperm(len(val_idx), generator=torch.Generator().manual_seed(seed))[:n]]
    img, txt = pairs.image_emb[pairs.pairs[chosen, 0]], pairs.text_emb[pairs.pairs[chosen, 1]]  # [n, D]
    gen = torch.Generator().manual_seed(seed)
    device = prior.device
    x0 = img.to(device) * embedding_scale(prior.dim)
    mse = prior.diffusion.training_losses(prior.net, x0, txt.to(device), generator=gen)["mse"].mean()
    train_img = pairs.image_emb[pairs.pairs[train_idx, 0]].mean(0)
    train_txt = pairs.text_emb[pairs.pairs[train_idx, 1]].mean(0)
    shifted = torch.nn.functional.normalize(txt + train_img - train_txt, dim=-1)
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(chosen))]
    sampled = prior.sample([], txt, generators=generators)
    cos = torch.nn.functional.cosine_similarity
    return {"loss": float(mse), "cos_zs": float(cos(txt, img).mean()), "cos_shift": float(cos(shifted, img).mean()),
            "cos_prior": float(cos(sampled, img).mean()), "pairs": float(len(chosen))}


def train_prior(source: str | os.PathLike, run_dir: str | os.PathLike, config: PriorTrainConfig | None = None, *,
                resume: bool = False, clip_model: str | None = None, cpu: bool = False,
                load_encoder: Callable[[str | None], Any] | None = None,
                progress: Callable[[int, int, dict[str, float]], None] | None = None) -> PriorTrainResult:
    """Train a prior in ``run_dir`` on the pairs of ``source`` (or continue it: ``resume``); returns where it was saved.

    With ``resume``, ``config`` (if given) may differ from the run's only in :data:`RESUMABLE_FIELDS`.

    ``load_encoder(name)`` defaults to :func:`clipsonic.encoders.load_clip`; ``progress(step,
    max_steps, last_metrics)`` is called on the main process after every step.
    """
    from accelerate import Accelerator

    from clipsonic.train import checkpoint as ckpt
    from clipsonic.train.ema import EMA
    from clipsonic.train.logs import MetricsLog

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    flags = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)} if config is not None else {}
    config = run_config(run_dir, flags, resume)
    accelerator = Accelerator(mixed_precision=config.precision, cpu=cpu)
    rank, world = accelerator.process_index, accelerator.num_processes
    if config.batch_size % world:
        raise PriorError(f"batch_size {config.batch_size} is not divisible by the {world} processes")
    if load_encoder is None:
        from clipsonic.encoders import load_clip

        def load_encoder(name):
            return load_clip(name, device=accelerator.device)

    if accelerator.is_main_process:
        pairs = prepare_pairs(source, run_dir, config, clip_model, load_encoder)
        write_json_atomic(run_dir / CONFIG_NAME, {"train": config.to_dict(), "clip_model": dataclasses.asdict(pairs.clip),
                                                  "source": str(source)})
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        pairs = PairSet.load(run_dir / PAIRS_NAME)
    train_idx, val_idx = pairs.split(config.val_fraction)
    if len(train_idx) == 0:
        raise PriorError(f"{source}: no training pairs left after holding out {config.val_fraction:.0%}")

    prior_config = config.prior_config(pairs.clip.dim)
    diffusion = GaussianDiffusion(prior_config.diffusion)
    torch.manual_seed(config.seed)  # the initial weights: the same on every process
    net = PriorNet(prior_config.network)
    ema = EMA(net)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gens = {"data": torch.Generator().manual_seed(config.seed),
            "noise": torch.Generator().manual_seed(config.seed + 1 + rank)}
    if accelerator.is_main_process:
        ckpt.remove_stale_temporaries(run_dir)
    step = 0
    found = ckpt.load_latest_checkpoint(run_dir, rank)
    if found is not None:
        net.load_state_dict(found.model)
        ema.model.load_state_dict(found.ema)
        optimizer.load_state_dict(found.optimizer)
        if found.rng is not None:
            ckpt.restore_rng(found.rng, gens)
        step = found.step
        log.info("resuming %s from step %d", run_dir, step)
    logs = MetricsLog(run_dir, step, enabled=accelerator.is_main_process)
    model, optimizer = accelerator.prepare(net, optimizer)
    ema.to(accelerator.device)
    scale = embedding_scale(pairs.clip.dim)
    image_emb, text_emb = pairs.image_emb.to(accelerator.device), pairs.text_emb.to(accelerator.device)

    def save(at: int) -> None:
        def write_main(tmp: Path) -> dict[str, Any]:
            from safetensors.torch import save_file

            for name, module in (("model", accelerator.unwrap_model(model)), ("ema", ema.model)):
                (tmp / name).mkdir()
                save_file({k: v.detach().float().cpu().contiguous() for k, v in module.state_dict().items()},
                          str(tmp / name / "model.safetensors"))
                write_json_atomic(tmp / name / "config.json", prior_config.network.to_dict())
            tensors, meta = ckpt.flatten_optimizer_state(optimizer.state_dict())
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            write_json_atomic(tmp / "optimizer.json", meta)
            return {"train": config.to_dict()}

        ckpt.save_checkpoint(run_dir, at, rank=rank, world_size=world, barrier=accelerator.wait_for_everyone,
                             rank_state=ckpt.RankState(ckpt.capture_rng(gens), {"step": at}),
                             write_main=write_main if accelerator.is_main_process else None,
                             keep_last=config.keep_last)

    def validate(at: int) -> dict[str, float]:
        if not accelerator.is_main_process or len(val_idx) == 0:
            return {}
        ema_prior = DiffusionPrior(ema.model, prior_config, pairs.clip)
        metrics = evaluate(ema_prior, pairs, train_idx, val_idx, config.val_pairs, config.seed)
        ema.model.eval()
        logs.scalars(at, "val", metrics)
        log.info("step %d: val loss %.4f, cosine image·text %.3f (zs) %.3f (shift) %.3f (prior)",
                 at, metrics["loss"], metrics["cos_zs"], metrics["cos_shift"], metrics["cos_prior"])
        return metrics

    last: dict[str, float] = {}
    running, count = 0.0, 0
    model.train()
    while step < config.max_steps:
        batch = train_idx[torch.randint(len(train_idx), (config.batch_size,), generator=gens["data"])]
        batch = pairs.pairs[batch[rank::world]].to(accelerator.device)  # [b, 2] (image row, caption row)
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(step)
        with accelerator.autocast():
            losses = diffusion.training_losses(model, image_emb[batch[:, 0]] * scale, text_emb[batch[:, 1]],
                                               generator=gens["noise"])
        loss = losses["loss"].mean()
        if not torch.isfinite(loss):
            raise PriorError(f"step {step}: the loss is {float(loss)}; lower --lr or check the pairs")
        accelerator.backward(loss)
        if config.grad_clip:
            accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        ema.update(accelerator.unwrap_model(model), min(config.ema, (1 + step) / (10 + step)))
        running, count = running + float(loss.detach()), count + 1
        if step % config.log_every == 0 or step == config.max_steps:
            last = {"loss": running / count, "lr": config.lr_at(step - 1)}
            logs.scalars(step, "train", last)
            running, count = 0.0, 0
        if config.val_every and step % config.val_every == 0 and step < config.max_steps:
            validate(step)
            model.train()
        if step % config.save_every == 0 or step == config.max_steps:
            save(step)
        if progress is not None and accelerator.is_main_process:
            progress(step, config.max_steps, last)

    metrics = validate(step)
    prior_dir = run_dir / "prior"
    if accelerator.is_main_process:
        training = {"source": str(pairs.source), "pairs": len(pairs), "steps": step,
                    "train_loss": last.get("loss"), "validation": metrics, "config": config.to_dict()}
        _export(DiffusionPrior(ema.model, prior_config, pairs.clip, training=training), prior_dir)
    logs.close()
    accelerator.wait_for_everyone()
    return PriorTrainResult(run_dir=run_dir, prior_dir=prior_dir, steps=step, metrics=metrics,
                            main_process=accelerator.is_main_process)


def _export(prior: DiffusionPrior, target: Path) -> None:
    """Write the prior into a temporary sibling, then swap it in: never half a prior directory."""
    with atomic_directory(target) as tmp:
        prior.save_pretrained(tmp)
    log.info("saved the prior to %s", target)
