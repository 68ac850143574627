"""Image–caption pairs for ``train-prior``, as CLIP embeddings held in memory.

Three sources, chosen by what ``source`` is:

- a **preprocessed dataset** (a folder with ``dataset.json``): every clip's K frame embeddings
  (already computed by preprocess) paired with captions made from its label through templates
  ("the sound of {label}", "a photo of {label}"); clips without a label are skipped;
- a **CSV file** with a header naming an image column (``image`` or ``path``) and a caption column
  (``caption`` or ``text``); image paths are relative to the CSV's folder;
- a **folder** of images (any format PIL opens), each with a sidecar ``NAME.txt`` holding one
  caption per line (several lines = several captions of that image).

A prior only needs embeddings, so pairs are stored as image embeddings ``[N_img, D]``, caption
embeddings ``[N_cap, D]`` and index pairs ``[P, 2]``; ``group`` ``[N_img]`` names the clip or image
each embedding came from, so validation holds out whole clips.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from safetensors import safe_open
from safetensors.torch import save_file

from clipsonic.data.dataset import read_dataset_info
from clipsonic.data.loader import iter_split
from clipsonic.encoders import ClipModelRef
from clipsonic.errors import ClipsonicError

log = logging.getLogger(__name__)

DEFAULT_TEMPLATES = ("the sound of {label}", "a photo of {label}")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
PAIRS_NAME = "pairs.safetensors"


@dataclasses.dataclass
class PairSet:
    """Embedded pairs. All embeddings L2-normalised float32 on the CPU."""

    image_emb: torch.Tensor  # [N_img, D]
    text_emb: torch.Tensor  # [N_cap, D]
    captions: list[str]  # N_cap
    pairs: torch.Tensor  # [P, 2] long: (image row, caption row)
    group: torch.Tensor  # [N_img] long: id of the clip / image file an embedding belongs to
    clip: ClipModelRef
    source: str

    def __len__(self) -> int:
        return int(self.pairs.shape[0])

    def split(self, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(train pair indices, validation pair indices): whole groups go to validation by a hash of their id."""
        if not 0.0 <= val_fraction < 1.0:
            raise ClipsonicError(f"val_fraction must be in [0, 1), got {val_fraction}")
        groups = self.group[self.pairs[:, 0]]
        n_groups = int(self.group.max()) + 1 if len(self.group) else 0
        in_val = torch.tensor([zlib.crc32(str(g).encode()) % 10_000 < val_fraction * 10_000 for g in range(n_groups)],
                              dtype=torch.bool)
        if val_fraction > 0 and n_groups >= 2 and not bool(in_val.any()):
            in_val[n_groups - 1] = True  # a tiny set still gets one validation group
        val = in_val[groups] if n_groups else torch.zeros(0, dtype=torch.bool)
        return torch.nonzero(~val).flatten(), torch.nonzero(val).flatten()

    def save(self, path: Path) -> None:
        meta = {"captions": json.dumps(self.captions), "clip": json.dumps(dataclasses.asdict(self.clip)),
                "source": self.source}
        save_file({"image_emb": self.image_emb.contiguous(), "text_emb": self.text_emb.contiguous(),
                   "pairs": self.pairs.contiguous(), "group": self.group.contiguous()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: Path) -> PairSet:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata()
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        return cls(captions=json.loads(meta["captions"]), clip=ClipModelRef(**json.loads(meta["clip"])),
                   source=meta["source"], **tensors)


def collect_pairs(source: str | os.PathLike, load_encoder: Callable[[str | None], object], *,
                  clip_model: str | None = None, templates: Sequence[str] = DEFAULT_TEMPLATES) -> PairSet:
    """Read ``source`` (see module docstring) and embed what needs embedding.

    ``load_encoder(name)`` returns a :class:`~clipsonic.encoders.ClipEncoder` (``name`` None for a
    dataset = the dataset's own CLIP); it is called once, only when something needs encoding.
    """
    source = Path(source)
    if not source.exists():
        raise ClipsonicError(f"{source}: no such pair source (a dataset folder, a CSV file, or a folder of images + .txt captions)")
    for template in templates:
        if "{label}" not in template:
            raise ClipsonicError(f"caption template {template!r} has no {{label}} placeholder")
    if (source / "dataset.json").is_file():
        return _from_dataset(source, load_encoder, clip_model, templates)
    if source.is_file() and source.suffix.lower() == ".csv":
        items = _read_csv(source)
    elif source.is_dir():
        items = _read_folder(source)
    else:
        raise ClipsonicError(f"{source}: not a dataset folder (no dataset.json), a .csv file, or a folder of images")
    if clip_model is None:
        raise ClipsonicError(f"{source}: images must be embedded: pass the CLIP model (--clip-model) the pipeline uses")
    return _embed_images(items, load_encoder(clip_model), str(source))


def _from_dataset(root: Path, load_encoder, clip_model: str | None, templates: Sequence[str]) -> PairSet:
    info = read_dataset_info(root)
    images, labels, groups = [], [], []
    for split in info.splits:
        for raw in iter_split(info, split, fields=("clip.npy", "json")):
            label = raw["json"].get("label")
            if not label:
                continue
            emb = torch.from_numpy(raw["clip.npy"])  # [K, D] float32
            images.append(emb)
            labels.extend([label] * emb.shape[0])
            groups.extend([len(images) - 1] * emb.shape[0])
    if not images:
        raise ClipsonicError(f"{root}: no clip has a label, so there are no captions; train the prior on a CSV or "
                         "a folder of captioned images instead")
    encoder = load_encoder(clip_model or info.clip.model)
    if encoder.dim != info.clip.dim or encoder.fingerprint != info.clip.fingerprint:
        raise ClipsonicError(f"{root} was embedded with {info.clip.describe()} but the caption encoder is "
                         f"{encoder.name} ({encoder.dim}-d, weights {encoder.fingerprint[:12]})")
    names = sorted(set(labels))
    captions = [t.format(label=name) for name in names for t in templates]
    caption_row = {name: i * len(templates) for i, name in enumerate(names)}
    pairs = [(row, caption_row[label] + k) for row, label in enumerate(labels) for k in range(len(templates))]
    log.info("%s: %d clips with labels, %d classes, %d pairs", root, len(images), len(names), len(pairs))
    return PairSet(image_emb=torch.nn.functional.normalize(torch.cat(images), dim=-1),
                   text_emb=encoder.encode_texts(captions), captions=captions,
                   pairs=torch.tensor(pairs, dtype=torch.long), group=torch.tensor(groups, dtype=torch.long),
                   clip=info.clip, source=str(root))


def _read_csv(path: Path) -> list[tuple[Path, list[str]]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ClipsonicError(f"{path}: not a readable CSV file ({exc})") from None
    header = list(rows[0]) if rows else []
    image_col = next((c for c in ("image", "path", "file") if c in header), None)
    text_col = next((c for c in ("caption", "text") if c in header), None)
    if image_col is None or text_col is None:
        raise ClipsonicError(f"{path}: need a header with an image column (image/path/file) and a caption column "
                         f"(caption/text); found {header or 'no rows'}")
    by_image: dict[Path, list[str]] = {}
    for row in rows:
        caption = (row.get(text_col) or "").strip()
        if row.get(image_col) and caption:
            by_image.setdefault(path.parent / row[image_col], []).append(caption)
    return list(by_image.items())


def _read_folder(root: Path) -> list[tuple[Path, list[str]]]:
    items = []
    for image in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        sidecar = image.with_suffix(".txt")
        if sidecar.is_file():
            captions = [line.strip() for line in sidecar.read_text(encoding="utf-8").splitlines() if line.strip()]
            if captions:
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
    clip = ClipModelRef(model=encoder.name, dim=encoder.dim, fingerprint=encoder.fingerprint)
    log.info("%s: %d images, %d captions, %d pairs", source, len(kept), len(captions), len(pairs))
    return PairSet(image_emb=torch.cat(embs), text_emb=encoder.encode_texts(captions), captions=captions,
                   pairs=torch.tensor(pairs, dtype=torch.long), group=torch.arange(len(kept)),
                   clip=clip, source=source)
