"""Pipeline directories: what training exports and ``CLIPSonicPipeline`` loads (diffusers' layout).

    model_index.json   {"format": "clipsonic-pipeline", "version": 1, "_class_name": "CLIPSonicPipeline",
                        "clipsonic_version", "clip_model": {"model", "dim", "fingerprint"}, "mel": {MelConfig},
                        "components": {"unet": "unet", "scheduler": "scheduler", "stats": "stats",
                                       "prior": null, "vocoder": null, "clip": null},
                        "training": {dataset, steps, preset, ...}}
    unet/              config.json (MelUNetConfig) + model.safetensors: the EMA weights
    scheduler/         config.json: the DiffusionConfig
    stats/             config.json {"format": "clipsonic-stats", "version": 1, what they were computed from,
                       "bank_keys": [N], "bank_labels": [N]} + stats.safetensors ("mean_image_embedding"
                       [D] float32, "image_bank" [N, D] float16)
    prior/, vocoder/   optional components (clipsonic.prior, clipsonic.vocoder)
    clip/              the CLIP itself (configs, tokenizer, safetensors), so the folder loads offline anywhere:
                       bundled by export when this machine has that CLIP; absent: loaded from clip_model.model
    README.md          model card

JSON and safetensors only: loading never runs code. Unversioned files are version 1 (whose stats kept
the bank's keys and labels in ``bank.json``). ``mean_image_embedding`` is the mean of every training frame
embedding, NOT renormalised; ``image_bank`` holds the (clip key, frame) pairs with the smallest BLAKE2b hash
(a uniform sample independent of shard order).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from clipsonic import __version__
from clipsonic.audio import MelConfig
from clipsonic.config import ConfigError
from clipsonic.diffusion import DiffusionConfig
from clipsonic.encoders import (
    ClipModelRef,
    clip_weight_files,
    copy_clip,
    find_clip_dir,
    load_clip,
    weights_fingerprint,
)
from clipsonic.errors import ClipsonicError
from clipsonic.files import (
    atomic_directory,
    atomic_output,
    inside,
    lock_folder,
    read_json,
    read_safetensors_header,
    read_versioned_json,
    write_json_atomic,
)

log = logging.getLogger(__name__)

MODEL_INDEX_NAME = "model_index.json"
PIPELINE_CLASS = "CLIPSonicPipeline"
INDEX_FORMAT, INDEX_VERSION = "clipsonic-pipeline", 1
STATS_FORMAT, STATS_VERSION = "clipsonic-stats", 1
STANDARD_COMPONENTS = ("unet", "scheduler", "stats", "prior", "vocoder", "clip")
STATS_WEIGHTS = "stats.safetensors"


@dataclasses.dataclass(frozen=True)
class PipelineStats:
    """Training-set embedding statistics for the query bridges (see the module doc)."""

    mean_image_embedding: torch.Tensor  # [D] float32, not renormalised
    image_bank: torch.Tensor  # [N, D] float16, rows L2-normalised
    bank_keys: list[str]  # [N] "clip key/frame index"
    bank_labels: list[str | None]  # [N]
    info: dict[str, Any]  # num_clips, num_embeddings, split, dataset, selection

    def __post_init__(self) -> None:
        n, d = self.image_bank.shape
        if self.mean_image_embedding.shape != (d,) or len(self.bank_keys) != n or len(self.bank_labels) != n:
            raise ValueError(f"inconsistent stats: mean {list(self.mean_image_embedding.shape)}, bank {[n, d]}, "
                             f"{len(self.bank_keys)} keys, {len(self.bank_labels)} labels")

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"mean_image_embedding": self.mean_image_embedding.float().contiguous(),
                   "image_bank": self.image_bank.half().contiguous()}, str(directory / STATS_WEIGHTS))
        write_json_atomic(directory / "config.json", {
            "format": STATS_FORMAT, "version": STATS_VERSION, **self.info, "dim": int(self.image_bank.shape[1]),
            "bank_size": int(self.image_bank.shape[0]), "mean_renormalised": False,
            "bank_keys": self.bank_keys, "bank_labels": self.bank_labels})


@dataclasses.dataclass(frozen=True)
class ModelIndex:
    """A parsed ``model_index.json``; ``clip`` and ``mel`` are None only in an incomplete one."""

    root: Path
    clip: ClipModelRef | None
    mel: MelConfig | None
    components: dict[str, str | None]
    training: dict[str, Any]

    def component_dir(self, name: str) -> Path | None:
        """``root/<folder>`` of a listed component (None when absent); a folder leading outside ``root`` is refused."""
        sub = self.components.get(name)
        return None if sub is None else inside(self.root, sub, f"{self.root / MODEL_INDEX_NAME}: component {name!r}")


def write_pipeline_dir(out: str | os.PathLike, *, unet, diffusion: DiffusionConfig, mel: MelConfig,
                       clip: ClipModelRef, stats: PipelineStats | None = None, training: dict[str, Any] | None = None,
                       extra_components: Mapping[str, Callable[[Path], None]] | None = None) -> Path:
    """Write a pipeline directory whole, replacing ``out`` only if it is one; ``extra_components``:
    name → writer(folder), e.g. ``{"vocoder": vocoder.save_pretrained}``."""
    out = Path(out)
    if not (existing := next(p for p in (out, *out.parents) if p.exists())).is_dir():
        raise ClipsonicError(f"cannot write the pipeline to {out}: {existing} is a file (choose another --out)")
    if out.exists() and not (out / MODEL_INDEX_NAME).is_file():
        raise ClipsonicError(f"{out} exists and is not a pipeline directory; refusing to overwrite it")
    with atomic_directory(out) as tmp:
        unet.save_pretrained(tmp / "unet")
        diffusion.save(tmp / "scheduler" / "config.json")
        writers = {**({"stats": stats.save} if stats is not None else {}), **(extra_components or {})}
        for name, writer in writers.items():
            writer(tmp / name)
        components = {name: None for name in STANDARD_COMPONENTS} | {n: n for n in ("unet", "scheduler", *writers)}
        _write_index(ModelIndex(tmp, clip, mel, components, training or {}), stats)
    return out


def _write_index(index: ModelIndex, stats: PipelineStats | None) -> None:
    write_json_atomic(index.root / MODEL_INDEX_NAME, {
        "format": INDEX_FORMAT, "version": INDEX_VERSION, "_class_name": PIPELINE_CLASS,
        "clipsonic_version": __version__, "clip_model": index.clip and index.clip.to_dict(),
        "mel": index.mel and index.mel.to_dict(), "components": index.components, "training": index.training})
    with atomic_output(index.root / "README.md") as tmp:
        tmp.write_text(model_card(index, stats))


def set_component(pipeline_dir: str | os.PathLike, name: str, write: Callable[[Path], None]) -> Path:
    """Add or replace a component of a (possibly incomplete) pipeline: ``write(folder)`` fills a temporary
    folder that then replaces ``pipeline_dir/name`` whole; the index and model card follow. The pipeline is
    locked meanwhile: two attaches at once would each rewrite model_index.json without the other's component."""
    pipeline_dir = Path(pipeline_dir)
    with lock_folder(pipeline_dir, f"attach {name}"):
        index = read_model_index(pipeline_dir, complete=False)
        stats = load_stats(pipeline_dir) if index.component_dir("stats") is not None else None  # for the card;
        with atomic_directory(pipeline_dir / name) as tmp:  # first, so bad stats refuse before anything changes
            write(tmp)
        _write_index(dataclasses.replace(index, components={**index.components, name: name}), stats)
    return pipeline_dir / name


def attach_clip(pipeline_dir: str | os.PathLike, clip_dir: str | os.PathLike) -> Path:
    """Copy the CLIP the pipeline was trained with (same fingerprint) into ``pipeline_dir/clip`` (offline use)."""
    index = read_model_index(pipeline_dir)
    encoder = load_clip(clip_dir, device="cpu")
    if encoder.fingerprint != index.clip.fingerprint or encoder.dim != index.clip.dim:
        raise ClipsonicError(f"{clip_dir} holds CLIP weights {encoder.fingerprint} ({encoder.dim}-d) but {pipeline_dir} "
                             f"was trained with {index.clip.describe()}; bundle the CLIP it was trained with")
    source = find_clip_dir(clip_dir)  # a hub id: its cached snapshot, which load_clip has just made sure of
    return set_component(pipeline_dir, "clip", lambda folder: copy_clip(source, folder))


def bundled_clip(clip: ClipModelRef) -> dict[str, Callable[[Path], None]]:
    """``write_pipeline_dir``'s ``extra_components`` that bundle the CLIP ``clip`` names, found on this machine (a
    folder, or a hub id's copy in the HF cache: never downloaded) with the same weights; {} and a warning when there
    is none, so the pipeline keeps only the reference (``clipsonic attach clip`` bundles it later)."""
    source = find_clip_dir(clip.model)
    try:
        found = source is not None and weights_fingerprint(clip_weight_files(source)) == clip.fingerprint
    except ClipsonicError:  # an incomplete folder: no copy of this CLIP either
        found = False
    if found:
        return {"clip": lambda folder: copy_clip(source, folder)}
    log.warning("the CLIP %s is not on this machine%s, so the pipeline references it instead of bundling it (then it "
                "loads only where that CLIP is); bundle it with `clipsonic attach clip PIPELINE CLIP_DIR`",
                clip.describe(), "" if source is None else f" ({source} holds other weights or is incomplete)")
    return {}


def read_model_index(directory: str | os.PathLike, *, complete: bool = True) -> ModelIndex:
    """Read ``model_index.json``; ``complete``: also require what loading needs (CLIP, mel config, UNet,
    scheduler, and a config.json for every listed component)."""
    root = Path(directory)
    path = root / MODEL_INDEX_NAME
    if not path.is_file():
        raise ClipsonicError(f"{root} is not a clipsonic pipeline directory (no {MODEL_INDEX_NAME}); "
                             "export one with `clipsonic export RUN_DIR`")
    data = read_versioned_json(path, INDEX_FORMAT, INDEX_VERSION, unversioned=1)
    if data.get("_class_name") != PIPELINE_CLASS:
        raise ClipsonicError(f"{path}: _class_name is {data.get('_class_name')!r}, not {PIPELINE_CLASS}")
    components, training = data.get("components") or {}, data.get("training") or {}
    if not isinstance(components, dict) or not all(isinstance(v, str | None) for v in components.values()):
        raise ClipsonicError(f"{path}: \"components\" must map names to folder names or null, got {components!r:.80}")
    if not isinstance(training, dict):
        raise ClipsonicError(f"{path}: \"training\" must be a JSON object, got {training!r:.80}")
    try:
        index = ModelIndex(
            root=root, components=dict(components), training=dict(training),
            clip=ClipModelRef.from_dict(data["clip_model"], f"{path}:clip_model") if data.get("clip_model") else None,
            mel=MelConfig.from_dict(data["mel"], source=f"{path}:mel") if data.get("mel") else None)
    except (TypeError, ValueError, ConfigError) as exc:
        raise ClipsonicError(f"{path}: malformed ({type(exc).__name__}: {exc})") from None
    if complete:
        for name, value in (("clip_model", index.clip), ("mel", index.mel), ("unet", index.components.get("unet")),
                            ("scheduler", index.components.get("scheduler"))):
            if value is None:
                raise ClipsonicError(f"{path}: the pipeline has no {name!r}; re-export it (clipsonic export RUN_DIR)")
    for name in index.components:
        folder = index.component_dir(name)  # refuses folders outside the pipeline
        if complete and folder is not None and not (folder / "config.json").is_file():
            raise ClipsonicError(f"{root}: component {name!r} is listed but {folder / 'config.json'} is missing")
    return index


def model_fingerprint(model_dir: str | os.PathLike,
                      components: tuple[str, ...] = ("unet", "scheduler", "prior", "stats", "vocoder")) -> str:
    """SHA-256 (first 16 hex digits) of what shapes a pipeline's audio: its mel config and every weight and config
    file of ``components`` (by default all but the CLIP, which has its own fingerprint)."""
    index = read_model_index(model_dir)
    digest = hashlib.sha256(repr(dataclasses.asdict(index.mel)).encode())
    for name in components:
        folder = index.component_dir(name)
        for path in sorted(folder.iterdir()) if folder is not None else ():
            if path.suffix in (".json", ".safetensors") and path.is_file():
                digest.update(f"{name}/{path.name}".encode())
                _digest_file(digest, path)
    return digest.hexdigest()[:16]


def _digest_file(digest, path: Path) -> None:
    """Feed a file to ``digest``, a safetensors header by content (the same tensors saved twice, as a demo's rerun
    re-attaching its prior, may differ in header order only)."""
    with open(path, "rb") as fh:
        if path.suffix == ".safetensors":
            digest.update(read_safetensors_header(fh, path))
        while chunk := fh.read(1 << 24):
            digest.update(chunk)


def load_stats(directory: str | os.PathLike) -> PipelineStats:
    """The ``stats`` component of a pipeline directory (tensors on CPU, dtypes as stored)."""
    index = read_model_index(directory, complete=False)
    if (folder := index.component_dir("stats")) is None:
        raise ClipsonicError(f"{directory}: the pipeline has no 'stats' component (re-export it from its run)")
    data = read_versioned_json(folder / "config.json", STATS_FORMAT, STATS_VERSION, unversioned=STATS_VERSION)
    try:
        if "bank_keys" not in data:  # written before the version field: the bank's keys and labels are in bank.json
            data |= {f"bank_{k}": v for k, v in read_json(folder / "bank.json", "stats bank").items()}
        tensors = load_file(str(folder / STATS_WEIGHTS))
        if index.clip is not None and tensors["image_bank"].shape[-1] != index.clip.dim:
            raise ValueError(f"{tensors['image_bank'].shape[-1]}-d embeddings, but the CLIP is {index.clip.dim}-d")
        return PipelineStats(mean_image_embedding=tensors["mean_image_embedding"], image_bank=tensors["image_bank"],
                             bank_keys=list(data["bank_keys"]), bank_labels=list(data["bank_labels"]),
                             info={k: v for k, v in data.items() if k in ("dataset", "split", "num_clips",
                                                                          "num_embeddings", "selection")})
    except Exception as exc:  # missing file, SafetensorError, a key or shape that does not fit
        raise ClipsonicError(f"{folder}: unreadable stats ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
                             "re-export the pipeline from its run (clipsonic export RUN_DIR)") from None


def model_card(index: ModelIndex, stats: PipelineStats | None) -> str:
    """README.md of a pipeline directory: data, CLIP, mel config, training, usage."""
    t, mel, clip = index.training, index.mel, index.clip
    lines = [
        "# CLIPSonic pipeline", "",
        "A diffusion model that generates the log-mel spectrogram of a sound from a CLIP embedding (CLIPSonic, "
        "Dong et al., WASPAA 2023): trained on video frames' CLIP image embeddings, queried by images, or by "
        "text (zero-shot, or through a diffusion prior).", "", "## Data", "",
        f"- dataset: `{t.get('dataset', 'unknown')}` ({t.get('train_clips', '?')} training clips)",
        f"- CLIP: `{clip.model}` ({clip.dim}-d, weights fingerprint `{clip.fingerprint[:12]}`)" if clip else "- CLIP: ?",
        f"- mel: {mel.sample_rate} Hz, {mel.n_mels} bands, n_fft {mel.n_fft}, hop {mel.hop_length}, {mel.clip_seconds:.3f} s "
        f"clips; diffusion space = log-mel mapped from [{mel.log_min:.3f}, {mel.log_max}] to [-1, 1]" if mel else "- mel: ?",
        "", "## Training", "", *(f"- {k}: {v}" for k, v in t.items() if k not in ("dataset", "train_clips"))]
    if stats is not None:
        lines += ["", "## Statistics", "", f"- mean image embedding over {stats.info.get('num_embeddings')} frame "
                  f"embeddings of {stats.info.get('num_clips')} clips (not renormalised)",
                  f"- image bank: {stats.image_bank.shape[0]} embeddings for the retrieval bridge"]
    # Only what model_index.json lists: a component nulled there (e.g. a vocoder left out) is absent here too.
    present = ", ".join(k for k, v in index.components.items() if v is not None)
    absent = ", ".join(k for k, v in index.components.items() if v is None) or "none"
    vocoder = ("It vocodes with its `vocoder/` (BigVGAN)." if index.components.get("vocoder") is not None
               else "It has no vocoder: it vocodes with Griffin-Lim (pass `vocoder=` to `from_pretrained` to change that).")
    return "\n".join(lines + [
        "", "## Components", "", f"present: {present}; absent: {absent}", "", "## Use", "", "```python",
        "from clipsonic.pipeline import CLIPSonicPipeline", 'pipe = CLIPSonicPipeline.from_pretrained("path/to/this/folder")',
        'out = pipe(text="dog barking", mode="zs", guidance_scale=1.5, seed=0)', "```", "", vocoder, ""])
