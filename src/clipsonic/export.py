"""Pipeline directories (DESIGN.md): what training exports and ``CLIPSonicPipeline`` loads.

Layout (diffusers-style; JSON and safetensors only, so loading never runs code from the folder)::

    model_index.json        {"_class_name": "CLIPSonicPipeline", "clipsonic_version",
                             "clip_model": {"model", "dim", "fingerprint"}, "mel": {MelConfig},
                             "components": {"unet": "unet", "scheduler": "scheduler", "stats": "stats",
                                            "prior": null, "vocoder": null},
                             "training": {dataset, steps, preset, ...}}
    unet/                   config.json + model.safetensors   (MelUNet.save_pretrained; the EMA weights)
    scheduler/config.json   the DiffusionConfig (DiffusionConfig.load reads it)
    stats/config.json       what the statistics were computed from
    stats/stats.safetensors "mean_image_embedding" [D] float32; "image_bank" [N, D] float16
    stats/bank.json         {"keys": [N], "labels": [N] (null when unknown)} of the bank's rows
    clip/                   optional: the CLIP itself (an HF CLIPModel directory), so the folder is
                            self-contained; ``clip_model.model`` then names where it came from
    README.md               model card

``mean_image_embedding`` is the plain mean of every frame embedding of every training clip; it is
NOT renormalised (its norm < 1 says how spread the embeddings are; the modality-gap bridge
renormalises after adding it). ``image_bank`` holds up to ``bank_size`` of those frame embeddings
(each L2-normalised, as stored), chosen deterministically: the (clip key, frame) pairs with the
smallest BLAKE2b hash, i.e. a uniform sample that does not depend on shard order.

A component is a subfolder named in ``components`` (null = absent). Other components (a prior, a
vocoder) are written by callables passed to :func:`write_pipeline_dir`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from clipsonic import __version__
from clipsonic.audio import MelConfig
from clipsonic.config import ConfigError
from clipsonic.data.dataset import ClipModelRef
from clipsonic.errors import ClipsonicError
from clipsonic.files import atomic_directory, write_json_atomic

MODEL_INDEX_NAME = "model_index.json"
PIPELINE_CLASS = "CLIPSonicPipeline"
STANDARD_COMPONENTS = ("unet", "scheduler", "stats", "prior", "vocoder", "clip")
STATS_WEIGHTS = "stats.safetensors"
BANK_NAME = "bank.json"


class PipelineDirError(ClipsonicError):
    """A folder is not a (complete, valid) pipeline directory."""


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
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(directory / "config.json", {**self.info, "dim": int(self.image_bank.shape[1]),
                                                      "bank_size": int(self.image_bank.shape[0]),
                                                      "mean_renormalised": False})
        save_file({"mean_image_embedding": self.mean_image_embedding.float().contiguous(),
                   "image_bank": self.image_bank.half().contiguous()}, str(directory / STATS_WEIGHTS))
        write_json_atomic(directory / BANK_NAME, {"keys": self.bank_keys, "labels": self.bank_labels})


@dataclasses.dataclass(frozen=True)
class ModelIndex:
    """A parsed, validated ``model_index.json``."""

    root: Path
    clipsonic_version: str
    clip: ClipModelRef
    mel: MelConfig
    components: dict[str, str | None]
    training: dict[str, Any]

    def component_dir(self, name: str) -> Path | None:
        """The component's folder, or None when the pipeline has none."""
        sub = self.components.get(name)
        return None if sub is None else self.root / sub


def write_pipeline_dir(out: str | os.PathLike, *, unet, diffusion, mel: MelConfig, clip: ClipModelRef,
                       stats: PipelineStats | None = None, training: dict[str, Any] | None = None,
                       extra_components: Mapping[str, Callable[[Path], None]] | None = None) -> Path:
    """Write a pipeline directory atomically (into a temporary sibling, then renamed over ``out``).

    ``unet``: a MelUNet (saved with ``save_pretrained``); ``diffusion``: its DiffusionConfig;
    ``extra_components``: name → writer(folder), e.g. ``{"vocoder": vocoder.save_pretrained}``.
    An existing ``out`` is replaced only if it is a pipeline directory.
    """
    out = Path(out)
    if out.exists() and not (out / MODEL_INDEX_NAME).is_file():
        raise PipelineDirError(f"{out} exists and is not a pipeline directory; refusing to overwrite it")
    with atomic_directory(out) as tmp:
        components: dict[str, str | None] = {name: None for name in STANDARD_COMPONENTS}
        unet.save_pretrained(tmp / "unet")
        diffusion.save(tmp / "scheduler" / "config.json")
        components.update(unet="unet", scheduler="scheduler")
        if stats is not None:
            stats.save(tmp / "stats")
            components["stats"] = "stats"
        for name, writer in (extra_components or {}).items():
            writer(tmp / name)
            components[name] = name
        index = {"_class_name": PIPELINE_CLASS, "clipsonic_version": __version__,
                 "clip_model": dataclasses.asdict(clip), "mel": mel.to_dict(),
                 "components": components, "training": training or {}}
        write_json_atomic(tmp / MODEL_INDEX_NAME, index)
        (tmp / "README.md").write_text(model_card(index, stats))
    return out


def set_component(pipeline_dir: str | os.PathLike, name: str, write: Callable[[Path], None]) -> Path:
    """Write component ``name`` of an existing pipeline: ``write(folder)`` fills a temporary sibling,
    which then replaces ``pipeline_dir/name``; ``model_index.json`` and the model card follow.

    Readers see the old component or the new one, never a half-written folder.
    """
    pipeline_dir = Path(pipeline_dir)
    index = read_model_index(pipeline_dir)
    target = pipeline_dir / name
    with atomic_directory(target) as tmp:
        write(tmp)
    data = json.loads((pipeline_dir / MODEL_INDEX_NAME).read_text())
    data["components"][name] = name
    write_json_atomic(pipeline_dir / MODEL_INDEX_NAME, data)
    stats = load_stats(pipeline_dir) if index.component_dir("stats") is not None else None
    (pipeline_dir / "README.md").write_text(model_card(data, stats))
    return target


def attach_clip(pipeline_dir: str | os.PathLike, clip_dir: str | os.PathLike) -> Path:
    """Copy the pipeline's own CLIP (a local HF directory) into ``pipeline_dir/clip``.

    The pipeline then loads offline wherever it is moved. The copy must have the weights the
    pipeline was trained with (same fingerprint), else :class:`PipelineDirError`.
    """
    from clipsonic.encoders import load_clip

    index = read_model_index(pipeline_dir)
    encoder = load_clip(clip_dir, device="cpu")
    if encoder.fingerprint != index.clip.fingerprint or encoder.dim != index.clip.dim:
        raise PipelineDirError(f"{clip_dir} holds CLIP weights {encoder.fingerprint} ({encoder.dim}-d) but {pipeline_dir} "
                               f"was trained with {index.clip.describe()}; bundle the CLIP it was trained with")
    return set_component(pipeline_dir, "clip", lambda folder: shutil.copytree(clip_dir, folder))


def read_model_index(directory: str | os.PathLike) -> ModelIndex:
    """Read and validate ``model_index.json``; a :class:`PipelineDirError` naming what is wrong otherwise."""
    root = Path(directory)
    path = root / MODEL_INDEX_NAME
    if not path.is_file():
        raise PipelineDirError(f"{root} is not a clipsonic pipeline directory (no {MODEL_INDEX_NAME}); "
                               "export one with `clipsonic train export RUN_DIR`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PipelineDirError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("_class_name") != PIPELINE_CLASS:
        raise PipelineDirError(f"{path}: _class_name is {data.get('_class_name') if isinstance(data, dict) else data!r}, "
                               f"not {PIPELINE_CLASS}")
    try:
        index = ModelIndex(root=root, clipsonic_version=str(data["clipsonic_version"]),
                           clip=ClipModelRef(**data["clip_model"]),
                           mel=MelConfig.from_dict(data["mel"], source=f"{path}:mel"),
                           components=dict(data["components"]), training=dict(data.get("training") or {}))
    except (KeyError, TypeError, ConfigError) as exc:
        raise PipelineDirError(f"{path}: malformed ({type(exc).__name__}: {exc})") from None
    for name in ("unet", "scheduler"):
        if index.components.get(name) is None:
            raise PipelineDirError(f"{path}: the pipeline has no {name!r} component")
    for name, sub in index.components.items():
        if sub is not None and not (root / sub / "config.json").is_file():
            raise PipelineDirError(f"{root}: component {name!r} is listed but {root / sub / 'config.json'} is missing")
    return index


def load_stats(directory: str | os.PathLike) -> PipelineStats:
    """The ``stats`` component of a pipeline directory (tensors on CPU, dtypes as stored)."""
    from safetensors.torch import load_file

    index = read_model_index(directory)
    folder = index.component_dir("stats")
    if folder is None:
        raise PipelineDirError(f"{directory}: the pipeline has no 'stats' component (re-export it from its run)")
    try:
        info = json.loads((folder / "config.json").read_text())
        bank = json.loads((folder / BANK_NAME).read_text())
        tensors = load_file(str(folder / STATS_WEIGHTS))
        return PipelineStats(mean_image_embedding=tensors["mean_image_embedding"], image_bank=tensors["image_bank"],
                             bank_keys=list(bank["keys"]), bank_labels=list(bank["labels"]),
                             info={k: v for k, v in info.items() if k not in ("dim", "bank_size", "mean_renormalised")})
    except Exception as exc:  # missing file, SafetensorError, JSON, shape mismatch
        raise PipelineDirError(f"{folder}: unreadable stats ({type(exc).__name__}: {exc})") from None


def load_scheduler_config(directory: str | os.PathLike):
    """The pipeline's DiffusionConfig."""
    from clipsonic.diffusion import DiffusionConfig

    return DiffusionConfig.load(read_model_index(directory).component_dir("scheduler") / "config.json")


def model_card(index: dict[str, Any], stats: PipelineStats | None) -> str:
    """README.md of a pipeline directory: data, CLIP, mel config, training, usage."""
    t, mel, clip = index["training"], index["mel"], index["clip_model"]
    lines = [
        "# CLIPSonic pipeline", "",
        "A diffusion model that generates the log-mel spectrogram of a sound from a CLIP embedding "
        "(CLIPSonic, Dong et al., WASPAA 2023): trained on video frames' CLIP image embeddings, queried "
        "by images, or by text (zero-shot, or through a diffusion prior).", "",
        "## Data", "",
        f"- dataset: `{t.get('dataset', 'unknown')}` ({t.get('train_clips', '?')} training clips)",
        f"- CLIP: `{clip['model']}` ({clip['dim']}-d, weights fingerprint `{clip['fingerprint'][:12]}`)",
        f"- mel: {mel['sample_rate']} Hz, {mel['n_mels']} bands, n_fft {mel['n_fft']}, hop {mel['hop_length']}, "
        f"{mel['clip_samples'] / mel['sample_rate']:.3f} s clips; diffusion space = log-mel mapped from "
        f"[{mel['log_min']:.3f}, {mel['log_max']}] to [-1, 1]", "",
        "## Training", "",
    ]
    lines += [f"- {k}: {v}" for k, v in t.items() if k not in ("dataset", "train_clips")]
    if stats is not None:
        lines += ["", "## Statistics", "",
                  f"- mean image embedding over {stats.info.get('num_embeddings')} frame embeddings of "
                  f"{stats.info.get('num_clips')} clips (not renormalised)",
                  f"- image bank: {stats.image_bank.shape[0]} embeddings for the retrieval bridge"]
    present = [k for k, v in index["components"].items() if v is not None]
    lines += ["", "## Components", "", f"present: {', '.join(present)}; absent: "
              f"{', '.join(k for k, v in index['components'].items() if v is None) or 'none'}", "",
              "## Use", "", "```python", "from clipsonic.pipeline import CLIPSonicPipeline",
              "pipe = CLIPSonicPipeline.from_pretrained(\"path/to/this/folder\")",
              "out = pipe(text=\"dog barking\", mode=\"zs\", guidance_scale=1.5, num_inference_steps=50, seed=0)",
              "```", "", "Without a trained vocoder the pipeline falls back to Griffin-Lim.", ""]
    return "\n".join(lines)
