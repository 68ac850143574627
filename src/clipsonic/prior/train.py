"""``train_prior``: our diffusion prior on image–caption pairs, a task of the training loop; exported to ``RUN/prior``.

The pairs (:func:`collect_pairs`) are embedded once into ``RUN/pairs.safetensors``. Every process draws the same
global batch of pair indices from a shared seeded generator and trains on its slice, so the data never depend on
timing and a resumed run continues the exact index stream. Validation on held-out clips/images reports the modality
gap closing: the mean cosine between a pair's image embedding and (a) the raw text embedding (``cos_zs``, what ZS
conditions on), (b) the shift bridge (``cos_shift``) and (c) a prior sample (``cos_prior``, what PD uses).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from safetensors import safe_open
from safetensors.torch import save_file

from clipsonic.bridges import modality_shift
from clipsonic.config import Config, NonNegative, NonNegativeInt, Positive, PositiveInt, Range
from clipsonic.data.dataset import read_dataset_info
from clipsonic.data.loader import iter_split
from clipsonic.data.sources import read_jsonl
from clipsonic.diffusion import GaussianDiffusion
from clipsonic.encoders import ClipModelRef, load_clip
from clipsonic.errors import ClipsonicError
from clipsonic.files import atomic_directory, atomic_output, read_json
from clipsonic.prior.ours import DiffusionPrior, PriorConfig, PriorNet, prior_preset
from clipsonic.train.checkpoint import Checkpoint
from clipsonic.train.harness import LoopConfig, Progress, Run, Task, fit
from clipsonic.train.logs import read_metrics

log = logging.getLogger(__name__)

DEFAULT_TEMPLATES = ("the sound of {label}", "a photo of {label}")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclasses.dataclass
class PairSet:
    """Embedded pairs, stored as embeddings and index pairs (L2-normalised float32 on the CPU)."""

    image_emb: torch.Tensor  # [N_img, D]
    text_emb: torch.Tensor  # [N_cap, D]
    captions: list[str]  # N_cap
    pairs: torch.Tensor  # [P, 2] long: (image row, caption row)
    group: torch.Tensor  # [N_img] long: the clip / image file a row came from, so validation holds out whole clips
    clip: ClipModelRef
    source: str

    def __len__(self) -> int:
        return int(self.pairs.shape[0])

    def split(self, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(train pair indices, validation pair indices): whole groups go to validation by a hash of their id."""
        n_groups = int(self.group.max()) + 1
        in_val = torch.tensor([zlib.crc32(str(g).encode()) % 10_000 < val_fraction * 10_000 for g in range(n_groups)],
                              dtype=torch.bool)
        if val_fraction > 0 and n_groups >= 2 and not bool(in_val.any()):
            in_val[n_groups - 1] = True  # a tiny set still gets one validation group
        val = in_val[self.group[self.pairs[:, 0]]]
        return torch.nonzero(~val).flatten(), torch.nonzero(val).flatten()

    def save(self, path: Path) -> None:
        meta = {"captions": json.dumps(self.captions), "clip": json.dumps(self.clip.to_dict()), "source": self.source}
        save_file({"image_emb": self.image_emb.contiguous(), "text_emb": self.text_emb.contiguous(),
                   "pairs": self.pairs.contiguous(), "group": self.group.contiguous()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: Path) -> PairSet:
        try:
            with safe_open(str(path), "pt") as fh:
                meta = fh.metadata()
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
            return cls(captions=json.loads(meta["captions"]), clip=ClipModelRef.from_dict(json.loads(meta["clip"])),
                       source=meta["source"], **tensors)
        except Exception as exc:  # SafetensorError, missing metadata, wrong tensors: a damaged cache
            raise ClipsonicError(f"{path}: unreadable embedded pairs ({type(exc).__name__}: {exc}); delete it to "
                                 "embed the pairs again") from None


def collect_pairs(source: str | os.PathLike, load_encoder: Callable[[str | None], object], *,
                  clip_model: str | None = None, templates: Sequence[str] = DEFAULT_TEMPLATES) -> PairSet:
    """Read and embed the pairs of ``source``: a **preprocessed dataset** (the K frame embeddings of every clip of
    its train split, never its test clips, with captions made from its label through ``templates``; unlabelled clips
    are skipped); a **CSV file** with an image column (image/path/file) and a caption column (caption/text); a
    **JSONL file**, one object per line with the same keys; a **COCO captions JSON** (``{"images": [{"id",
    "file_name"}], "annotations": [{"image_id", "caption"}]}``); a **folder** of images (any format PIL opens), each
    with a sidecar ``NAME.txt``, one caption per line. Image paths in a file are relative to that file's folder
    (or absolute), as the manifests of preprocess.

    ``load_encoder(name)`` returns a :class:`~clipsonic.encoders.ClipEncoder` (``name`` None for a dataset = the
    dataset's own CLIP); it is called once, only when something needs encoding."""
    source = Path(source)
    if not source.exists():
        raise ClipsonicError(f"{source}: no such pair source (a dataset folder, a CSV/JSONL file, a COCO captions "
                             "JSON, or a folder of images + .txt captions)")
    if bad := [template for template in templates if "{label}" not in template]:
        raise ClipsonicError(f"caption template {bad[0]!r} has no {{label}} placeholder")
    if (source / "dataset.json").is_file():
        return _from_dataset(source, load_encoder, clip_model, templates)
    readers = {".csv": _read_csv, ".jsonl": _read_jsonl, ".json": _read_coco}
    if source.is_file() and source.suffix.lower() in readers:
        items = readers[source.suffix.lower()](source)
    elif source.is_dir():
        items = _read_folder(source)
    else:
        raise ClipsonicError(f"{source}: not a dataset folder (no dataset.json), a .csv/.jsonl/.json (COCO) file, "
                             "or a folder of images")
    if clip_model is None:
        raise ClipsonicError(f"{source}: images must be embedded: pass the CLIP model (--clip-model) the pipeline uses")
    return _embed_images(items, load_encoder(clip_model), str(source))


def _from_dataset(root: Path, load_encoder, clip_model: str | None, templates: Sequence[str]) -> PairSet:
    info = read_dataset_info(root)
    if "train" not in info.splits:
        raise ClipsonicError(f"{root}: no 'train' split (has {sorted(info.splits)}); the prior learns from training "
                             "clips only, so re-run preprocess with train/ videos")
    images, labels, groups = [], [], []
    for raw in iter_split(info, "train", fields=("clip.npy", "json")):  # the test clips stay unseen (evaluation)
        if label := raw["json"].get("label"):
            emb = torch.from_numpy(raw["clip.npy"])  # [K, D] float32
            labels.extend([label] * len(emb))
            groups.extend([len(images)] * len(emb))
            images.append(emb)
    if not images:
        raise ClipsonicError(
            f"{root}: no training clip has a label, so there are no captions; train the prior on captioned images "
            "(`clipsonic train-prior CAPTIONS --clip-model DIR`: a folder of images with NAME.txt, a CSV or JSONL of "
            "image,caption, or a COCO captions JSON), use a text mode without a prior (`generate --mode knn` or "
            "`--mode shift`), or attach a pretrained prior (`clipsonic attach prior PIPELINE KARLO_DIR`)")
    encoder = load_encoder(clip_model or info.clip.model)
    if encoder.dim != info.clip.dim or encoder.fingerprint != info.clip.fingerprint:
        raise ClipsonicError(f"{root} was embedded with {info.clip.describe()} but the caption encoder is "
                             f"{encoder.name} ({encoder.dim}-d, weights {encoder.fingerprint[:12]})")
    names = sorted(set(labels))
    captions = [t.format(label=name) for name in names for t in templates]
    first_caption = {name: i * len(templates) for i, name in enumerate(names)}
    pairs = [(row, first_caption[label] + k) for row, label in enumerate(labels) for k in range(len(templates))]
    log.info("%s: %d clips with labels, %d classes, %d pairs", root, len(images), len(names), len(pairs))
    return PairSet(image_emb=F.normalize(torch.cat(images), dim=-1),
                   text_emb=encoder.encode_texts(captions), captions=captions,
                   pairs=torch.tensor(pairs, dtype=torch.long), group=torch.tensor(groups, dtype=torch.long),
                   clip=info.clip, source=str(root))


def _read_csv(path: Path) -> list[tuple[Path, list[str]]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ClipsonicError(f"{path}: not a readable CSV file ({exc})") from None
    return _rows_by_image(path, rows)


def _read_jsonl(path: Path) -> list[tuple[Path, list[str]]]:
    rows = read_jsonl(path)
    if bad := next((row["__bad__"] for row in rows if "__bad__" in row), None):
        raise ClipsonicError(f"{bad}: not a JSON object; each line holds one {{\"image\": …, \"caption\": …}}")
    return _rows_by_image(path, rows)


def _rows_by_image(path: Path, rows: list[dict]) -> list[tuple[Path, list[str]]]:
    """Rows of an image column/key (image/path/file) and a caption column/key (caption/text), captions by image."""
    header = list(rows[0]) if rows else []
    image_key = next((c for c in ("image", "path", "file") if c in header), None)
    text_key = next((c for c in ("caption", "text") if c in header), None)
    if image_key is None or text_key is None:
        raise ClipsonicError(f"{path}: need an image column (image/path/file) and a caption column (caption/text); "
                             f"found {header or 'no rows'}")
    by_image: dict[Path, list[str]] = {}
    for row in rows:
        image, caption = row.get(image_key), row.get(text_key)
        if isinstance(image, str) and image and isinstance(caption, str) and caption.strip():
            by_image.setdefault(path.parent / image, []).append(caption.strip())
    return list(by_image.items())


def _read_coco(path: Path) -> list[tuple[Path, list[str]]]:
    """COCO captions: images by ``file_name`` in the JSON's folder (put the JSON beside the images)."""
    data = read_json(path, "COCO captions JSON")
    try:
        names = {image["id"]: str(image["file_name"]) for image in data["images"]}
        by_name: dict[str, list[str]] = {}
        for note in data["annotations"]:
            by_name.setdefault(names[note["image_id"]], []).append(str(note["caption"]).strip())
    except (KeyError, TypeError) as exc:
        raise ClipsonicError(f"{path}: not a COCO captions JSON (no {exc}); expected {{\"images\": [{{\"id\", "
                             "\"file_name\"}}], \"annotations\": [{{\"image_id\", \"caption\"}}]}}") from None
    items = [(path.parent / name, kept) for name, captions in sorted(by_name.items())
             if (kept := [c for c in captions if c])]
    if not items:
        raise ClipsonicError(f"{path}: no annotation holds a caption")
    if not items[0][0].is_file():
        raise ClipsonicError(f"{path}: image {items[0][0]} not found; COCO file names are read relative to the JSON's "
                             "folder, so put the JSON beside the images (e.g. cp annotations/captions_train2017.json "
                             "train2017/)")
    return items


def _read_folder(root: Path) -> list[tuple[Path, list[str]]]:
    items = []
    for image in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        sidecar = image.with_suffix(".txt")
        lines = sidecar.read_text(encoding="utf-8").splitlines() if sidecar.is_file() else []
        if captions := [line.strip() for line in lines if line.strip()]:
            items.append((image, captions))
    if not items:
        raise ClipsonicError(f"{root}: no image with a caption file (photo.jpg + photo.txt, one caption per line)")
    return items


def _embed_images(items: list[tuple[Path, list[str]]], encoder, source: str, batch: int = 64) -> PairSet:
    """Open and embed the images (unreadable ones are skipped with a warning) and their captions."""
    kept, embs = [], []
    for start in range(0, len(items), batch):
        pictures = []
        for path, captions in items[start:start + batch]:
            try:
                with Image.open(path) as im:
                    pictures.append(im.convert("RGB"))
                kept.append(captions)
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                log.warning("skipping %s: not a readable image (%s)", path, exc)
        if pictures:
            embs.append(encoder.encode_images(pictures))
    if not kept:
        raise ClipsonicError(f"{source}: none of the {len(items)} images could be read")
    captions = sorted({c for cs in kept for c in cs})
    row = {c: i for i, c in enumerate(captions)}
    pairs = [(i, row[c]) for i, cs in enumerate(kept) for c in cs]
    log.info("%s: %d images, %d captions, %d pairs", source, len(kept), len(captions), len(pairs))
    return PairSet(image_emb=torch.cat(embs), text_emb=encoder.encode_texts(captions), captions=captions,
                   pairs=torch.tensor(pairs, dtype=torch.long), group=torch.arange(len(kept)),
                   clip=ClipModelRef(encoder.name, encoder.dim, encoder.fingerprint), source=str(source))


UnitInterval = Annotated[float, Range(0, 1, high_open=True)]  # [0, 1)


@dataclasses.dataclass(frozen=True)
class PriorTrainConfig(LoopConfig):
    """The prior's ``train`` section (defaults sized for a preprocessed dataset on one GPU or a CPU)."""

    RESUMABLE: ClassVar[tuple[str, ...]] = LoopConfig.RESUMABLE + ("val_pairs",)

    max_steps: PositiveInt = 20_000
    lr: Positive = 3e-4
    warmup_steps: NonNegativeInt = 100
    save_every: PositiveInt = 2000
    keep_last: PositiveInt = 2
    log_every: PositiveInt = 100
    preset: Literal["tiny", "small", "base"] = "small"  # PriorNet size
    batch_size: PositiveInt = 256  # pairs per step, over all processes
    weight_decay: NonNegative = 0.05  # DALL-E 2's prior used 6e-2
    ema: UnitInterval = 0.999  # EMA decay of the exported weights, warmed up as the UNet's
    p_uncond: UnitInterval = 0.1  # probability of dropping the text, for guidance (DALL-E 2: 10 %)
    val_fraction: UnitInterval = 0.1  # of clips/images held out
    val_pairs: PositiveInt = 256  # validation pairs sampled per evaluation (fixed seeds)
    templates: tuple[str, ...] = DEFAULT_TEMPLATES  # caption templates with {label}, for a dataset's labels
    sample_steps: PositiveInt = 64  # the exported prior's default sampling chain
    guidance_scale: NonNegative = 1.0  # the exported prior's default guidance

    def prior_config(self, dim: int) -> PriorConfig:
        return PriorConfig(network=prior_preset(self.preset, dim),
                           diffusion=PriorConfig().diffusion.replace(p_uncond=self.p_uncond),
                           steps=self.sample_steps, guidance_scale=self.guidance_scale)


@dataclasses.dataclass(frozen=True)
class PriorRunConfig(Config):  # a prior run's config.json sections
    train: PriorTrainConfig = PriorTrainConfig()


class PriorTask(Task):
    name, config_class, export_name = "prior", PriorRunConfig, "prior"

    def __init__(self, run: Run, source: str | os.PathLike, clip_model: str | None,
                 load_encoder: Callable[[str | None], Any] | None):
        super().__init__(run)
        cfg, acc = run.config.train, run.accelerator
        if cfg.batch_size % acc.num_processes:
            raise ClipsonicError(f"batch_size {cfg.batch_size} is not divisible by the {acc.num_processes} processes")
        path, main = run.dir / "pairs.safetensors", acc.is_main_process  # embedded once (main process), read by all
        reused = path.is_file()
        if main and not reused:
            pairs = collect_pairs(source, load_encoder or (lambda name: load_clip(name, device=acc.device)),
                                  clip_model=clip_model, templates=cfg.templates)
            with atomic_output(path) as tmp:
                pairs.save(tmp)
        acc.wait_for_everyone()
        self.pairs = PairSet.load(path)
        if Path(self.pairs.source).resolve() != Path(source).resolve():
            raise ClipsonicError(f"{run.dir} holds the pairs of {self.pairs.source}, not {source}; "
                                 "use a new run directory")
        if main and reused:
            log.info("reusing the %d embedded pairs in %s", len(self.pairs), path)
        run.data.update(clip=self.pairs.clip.to_dict(), pairs=len(self.pairs))
        self.train_idx, self.val_idx = self.pairs.split(cfg.val_fraction)
        if len(self.train_idx) == 0:
            raise ClipsonicError(f"{source}: no training pairs left after holding out {cfg.val_fraction:.0%}")
        self.prior_config = cfg.prior_config(self.pairs.clip.dim)
        self.diffusion = GaussianDiffusion(self.prior_config.diffusion)
        torch.manual_seed(cfg.seed)  # the initial weights: the same on every process
        net = PriorNet(self.prior_config.network)
        self.gens = {"data": torch.Generator().manual_seed(cfg.seed),
                     "noise": torch.Generator().manual_seed(cfg.seed + 1 + acc.process_index)}
        self.prepare_with_ema(net, cfg.ema, cfg.weight_decay)
        self.image_emb, self.text_emb = self.pairs.image_emb.to(acc.device), self.pairs.text_emb.to(acc.device)

    def generators(self) -> dict[str, torch.Generator]:
        return self.gens

    def batches(self, position: dict[str, Any] | None) -> Iterator[torch.Tensor]:
        """Each step's global batch of pair indices from the shared generator; this process's slice ``[b, 2]``."""
        acc, n = self.accelerator, self.config.train.batch_size
        while True:
            chosen = self.train_idx[torch.randint(len(self.train_idx), (n,), generator=self.gens["data"])]
            yield self.pairs.pairs[chosen[acc.process_index::acc.num_processes]].to(acc.device)  # (image, caption) rows

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, Any]:
        scale = math.sqrt(self.pairs.clip.dim)  # the scaled space √D · e the prior diffuses in (ours.py)
        with self.accelerator.autocast():
            losses = self.diffusion.training_losses(self.model, self.image_emb[batch[:, 0]] * scale,
                                                    self.text_emb[batch[:, 1]], generator=self.gens["noise"])
        self.backward(losses["loss"])
        grad_norm = self.step_optimizer("model")
        self.ema.update(self.accelerator.unwrap_model(self.model), step)
        return {"loss": losses["loss"].detach(), "grad_norm": grad_norm}

    @torch.no_grad()
    def validate(self, step: int) -> dict[str, float]:
        """The EMA prior's loss and image–condition cosines (zs, shift, prior) on ≤ val_pairs held-out pairs."""
        if len(self.val_idx) == 0:
            return {}
        pairs, seed = self.pairs, self.config.train.seed
        prior = DiffusionPrior(self.ema.model, self.prior_config, pairs.clip)
        chosen = self.val_idx[torch.randperm(len(self.val_idx), generator=torch.Generator().manual_seed(seed))]
        chosen = chosen[:self.config.train.val_pairs]
        img, txt = pairs.image_emb[pairs.pairs[chosen, 0]], pairs.text_emb[pairs.pairs[chosen, 1]]  # [n, D]
        mse = prior.diffusion.training_losses(prior.net, img.to(prior.device) * math.sqrt(pairs.clip.dim),
                                              txt.to(prior.device), generator=torch.Generator().manual_seed(seed))
        shifted = modality_shift(txt, pairs.image_emb[pairs.pairs[self.train_idx, 0]].mean(0),
                                 pairs.text_emb[pairs.pairs[self.train_idx, 1]].mean(0))
        gens = [torch.Generator().manual_seed(seed + i) for i in range(len(chosen))]
        sampled = prior.sample([], txt, generators=gens)
        m = {"loss": float(mse["mse"].mean()), "cos_zs": float(F.cosine_similarity(txt, img).mean()),
             "cos_shift": float(F.cosine_similarity(shifted, img).mean()),
             "cos_prior": float(F.cosine_similarity(sampled, img).mean()), "pairs": float(len(chosen))}
        log.info("step %d: val loss %.4f, cosine image·text %.3f (zs) %.3f (shift) %.3f (prior)",
                 step, m["loss"], m["cos_zs"], m["cos_shift"], m["cos_prior"])
        return m

    @classmethod
    def export(cls, run: Run, checkpoint: Checkpoint, out: Path, data: str | os.PathLike | None = None) -> Path:
        """The prior directory of the checkpoint's EMA weights, with the run's last logged loss and validation."""
        cfg, clip = run.config.train, ClipModelRef.from_dict(run.data["clip"])
        prior_config = cfg.prior_config(clip.dim)
        net = PriorNet(prior_config.network)
        net.load_state_dict(checkpoint.module("ema"))
        train, val = ([r for r in read_metrics(run.dir, kind) if r["step"] <= checkpoint.step]
                      for kind in ("train", "val"))
        training = {"source": run.data["source"], "pairs": run.data["pairs"], "steps": checkpoint.step,
                    "train_loss": train[-1]["loss"] if train else None,
                    "validation": {k: v for k, v in val[-1].items() if k not in ("step", "kind")} if val else {},
                    "config": cfg.to_dict()}
        with atomic_directory(out) as tmp:
            DiffusionPrior(net, prior_config, clip, training=training).save_pretrained(tmp)
        log.info("saved the prior to %s", out)
        return out


def train_prior(source: str | os.PathLike, run_dir: str | os.PathLike,
                overrides: dict[str, dict[str, Any]] | None = None, *, resume: bool = False, restart: bool = False,
                clip_model: str | None = None, cpu: bool = False,
                load_encoder: Callable[[str | None], Any] | None = None, progress: Progress | None = None) -> Path:
    """Train (or resume) a prior on the pairs of ``source``; returns ``run_dir`` (the prior in RUN/prior).

    ``overrides``: ``{"train": {...}}`` (PriorTrainConfig fields); ``clip_model`` embeds a CSV or a folder (a
    dataset's own CLIP by default); ``load_encoder(name)`` defaults to :func:`load_clip`."""
    return fit(PriorTask, run_dir, overrides, data={"source": str(Path(source).resolve())}, resume=resume,
               restart=restart, progress=progress, cpu=cpu, source=source, clip_model=clip_model, load_encoder=load_encoder)
