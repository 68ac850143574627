"""CLIP (any transformers ``CLIPModel``: a local directory or a hub id): images and texts in,
L2-normalised ``[B, D]`` embeddings out. transformers is imported lazily (it is slow).

The weights' ``fingerprint`` (SHA-256 of the weight files' bytes, first 16 hex digits) goes into every
dataset, pipeline and prior (a :class:`ClipModelRef`) so that embeddings of different CLIPs never mix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError

from clipsonic.errors import ClipsonicError
from clipsonic.files import inside, read_json
from clipsonic.models.weights import check_shared_shapes

log = logging.getLogger(__name__)

CLIP_FILES = ["*.json", "*.txt", "model*.safetensors"]  # configs, tokenizer, weights: what loading reads


@dataclasses.dataclass(frozen=True)
class ClipModelRef:
    """Which CLIP made some embeddings: its id or path, its dimension and its weights' fingerprint."""

    model: str
    dim: int
    fingerprint: str

    def describe(self) -> str:
        return f"{self.model} ({self.dim}-d, weights {self.fingerprint[:12]})"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "clip_model") -> ClipModelRef:
        try:
            return cls(model=str(data["model"]), dim=int(data["dim"]), fingerprint=str(data["fingerprint"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ClipsonicError(f"{source}: not a CLIP reference {{model, dim, fingerprint}} ({exc!r})") from None


def load_clip(name_or_path: str | os.PathLike = "openai/clip-vit-large-patch14",
              device: str | torch.device | None = None, dtype: torch.dtype | str | None = None) -> ClipEncoder:
    """A CLIP from a ``save_pretrained`` directory or a hub id; by default on cuda in float16 when
    available, else on cpu in float32 (outputs are float32 either way)."""
    directory = _resolve(str(name_or_path))
    weights = clip_weight_files(directory)
    # Heavy (seconds), so lazy; the CLIP modules directly, not through transformers' lazy top level and its Auto maps.
    from transformers.models.clip.configuration_clip import CLIPConfig
    from transformers.models.clip.modeling_clip import CLIPModel

    try:  # transformers 5: CLIPTokenizer is the `tokenizers` one; CLIPImageProcessor would need torchvision
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as ImageProcessor
        from transformers.models.clip.tokenization_clip import CLIPTokenizer as Tokenizer
    except ImportError:  # transformers 4: the fast tokenizer (AutoTokenizer's choice); the PIL/numpy processor
        from transformers.models.clip.image_processing_clip import CLIPImageProcessor as ImageProcessor
        from transformers.models.clip.tokenization_clip_fast import CLIPTokenizerFast as Tokenizer

    device = default_device(device)
    dtype = parse_dtype(dtype) or (torch.float16 if device.type == "cuda" else torch.float32)
    try:
        check_shared_shapes(lambda: CLIPModel(CLIPConfig.from_pretrained(directory)), weights, "CLIP model")
        with quiet_transformers():
            model = CLIPModel.from_pretrained(directory, use_safetensors=True)
            tokenizer = Tokenizer.from_pretrained(directory)
            processor = ImageProcessor.from_pretrained(directory)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:  # corrupt or mismatched
        raise ClipsonicError(f"{directory}: cannot load the CLIP model ({exc})") from exc
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return ClipEncoder(model, tokenizer, processor, name=str(name_or_path), weight_files=weights)


class ClipEncoder:
    """A loaded CLIP: ``encode_images`` / ``encode_texts`` return float32 CPU ``[B, D]`` unit vectors."""

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, *, name: str,
                 weight_files: Sequence[Path]) -> None:
        self.model, self.tokenizer, self.image_processor = model, tokenizer, image_processor
        self.name = name
        self._weight_files = tuple(weight_files)

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_text_tokens(self) -> int:
        """Text context length in tokens, start and end tokens included (77 for OpenAI CLIP)."""
        return int(self.model.config.text_config.max_position_embeddings)

    @functools.cached_property
    def fingerprint(self) -> str:
        return weights_fingerprint(self._weight_files)

    def __repr__(self) -> str:
        return f"ClipEncoder({self.name!r}, dim={self.dim}, device={self.device})"

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Any], batch_size: int = 64) -> torch.Tensor:
        """Embed RGB images (``PIL.Image`` or uint8 ``[H, W, 3]`` arrays, any size) → ``[B, D]``."""
        pil = [_to_pil(im, i) for i, im in enumerate(images)]
        out = []
        for start in range(0, len(pil), batch_size):
            pixels = self.image_processor(images=pil[start:start + batch_size], return_tensors="pt")["pixel_values"]
            pixels = pixels.to(device=self.device, dtype=self.model.dtype)  # [b, 3, S, S]
            pooled = self.model.vision_model(pixel_values=pixels).pooler_output
            out.append(self.model.visual_projection(pooled).float().cpu())
        return _normalise(out, self.dim)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Embed texts → ``[B, D]``; texts over :attr:`max_text_tokens` are truncated (one warning)."""
        return _normalise([emb for emb, _, _ in self._text_batches(texts, batch_size)], self.dim)

    @torch.inference_mode()
    def text_token_states(self, texts: Sequence[str], batch_size: int = 256
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """unCLIP priors' (Karlo's) text condition, float32 CPU: the projected embedding ``[B, D]`` (not
        normalised), final token states ``[B, L, W]`` (L = :attr:`max_text_tokens`, end-token padded) and
        the attention mask ``[B, L]`` (True = real token)."""
        width, length = int(self.model.config.text_config.hidden_size), self.max_text_tokens
        empty = (torch.empty(0, self.dim), torch.empty(0, length, width), torch.empty(0, length, dtype=torch.bool))
        parts = [empty, *self._text_batches(texts, batch_size, with_states=True)]
        return tuple(torch.cat(p) for p in zip(*parts, strict=True))  # type: ignore[return-value]

    def _text_batches(self, texts: Sequence[str], batch_size: int, with_states: bool = False):
        """Per batch: the projected embeddings, the final token states (or None) and the attention mask."""
        if isinstance(texts, str):
            raise ClipsonicError("encode_texts takes a list of strings, got one string; wrap it in a list")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ClipsonicError(f"text {i} is a {type(text).__name__}, not a string")
        if not texts:
            return
        limit = self.max_text_tokens
        # Tokenising one past the limit tells which texts would lose tokens, without
        # tripping transformers' own "sequence is too long" warning.
        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=True, max_length=limit + 1)["input_ids"]]
        if over := sum(n > limit for n in lengths):
            log.warning("%d of %d text(s) exceed %s's %d-token context and were truncated",
                        over, len(texts), self.name, limit)
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[start:start + batch_size], padding="max_length",
                                    truncation=True, max_length=limit, return_tensors="pt")
            ids = tokens["input_ids"].to(self.device)
            mask = tokens["attention_mask"].to(self.device)
            # Causal attention: the pooled end-token state never sees the padding after it.
            output = self.model.text_model(input_ids=ids, attention_mask=mask)
            projected = self.model.text_projection(output.pooler_output).float().cpu()
            states = output.last_hidden_state.float().cpu() if with_states else None
            yield projected, states, mask.bool().cpu()


def weights_fingerprint(weight_files: Sequence[Path]) -> str:
    """SHA-256 of the weight files' bytes (in file-name order), first 16 hex digits."""
    digest = hashlib.sha256()
    for path in sorted(weight_files, key=lambda p: p.name):
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def find_clip_dir(name_or_path: str | os.PathLike) -> Path | None:
    """The local folder of a CLIP named by a path or a hub id (its snapshot in the HF cache), without ever
    downloading; None when this machine has no copy."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(repo_id=str(name_or_path), allow_patterns=CLIP_FILES, local_files_only=True))
    except (HFValidationError, OSError):  # not a hub id, or not in the cache (LocalEntryNotFoundError)
        return None


def copy_clip(source: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy what loading a CLIP folder needs (configs, tokenizer, safetensors weights; never a pickle) into ``dest``,
    hard-linked where both are on one filesystem (a bundle costs no space), copied otherwise; returns ``dest``."""
    source, dest = Path(source), Path(dest)
    weights = clip_weight_files(source)
    files = {*weights, *(p for p in source.iterdir() if p.is_file() and p.suffix in (".json", ".txt"))}
    for path in sorted(files):
        target = dest / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path.resolve(), target)  # resolve: the HF cache's snapshot files are symlinks to its blobs
        except OSError:  # another filesystem, or one without hard links
            shutil.copyfile(path, target)
    return dest


def _normalise(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.cat([torch.empty(0, dim), *parts]), dim=-1)  # no parts: [0, dim]


def _to_pil(image: Any, index: int) -> Image.Image:
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
            raise ClipsonicError(f"image {index}: expected a uint8 array [H, W, 3], got {image.dtype} {list(image.shape)}")
        # Converting arrays to PIL ourselves keeps the processor from guessing channel order
        # (a [3, 3, 3] array is ambiguous to it).
        return Image.fromarray(np.ascontiguousarray(image))
    raise ClipsonicError(f"image {index}: expected a PIL.Image or a uint8 numpy array, got {type(image).__name__}")


@contextlib.contextmanager
def quiet_transformers():
    """No tqdm bars from inside the library (transformers 5 shows one per weight load)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def default_device(device: str | torch.device | None) -> torch.device:
    """``device``, by default cuda when available, else cpu."""
    return torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A torch dtype from itself or a name ("float16", "fp16", "torch.bfloat16" …); None stays None."""
    if not isinstance(dtype, str):
        return dtype
    name = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}.get(dtype, dtype.removeprefix("torch."))
    if name not in ("float32", "float16", "bfloat16"):
        raise ClipsonicError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")
    return getattr(torch, name)


def _resolve(name: str) -> Path:
    """A local directory as given, or a hub id's snapshot in the HF cache (downloaded if online)."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    if path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name:
        raise ClipsonicError(f"CLIP model directory {name} does not exist")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError

    hint = (f"On a connected machine run `hf download {name} --include '*.json' --include '*.txt' "
            f"--include 'model*.safetensors' --local-dir DIR` (older huggingface_hub: "
            f"`huggingface-cli download`) and pass DIR instead of the hub id.")
    try:  # configs, tokenizer and the transformers safetensors only (repos also hold pytorch/tf/flax copies)
        return Path(snapshot_download(repo_id=name, allow_patterns=CLIP_FILES))
    except HFValidationError:
        raise ClipsonicError(f"CLIP model {name!r} is neither an existing directory nor a hub id") from None
    except RepositoryNotFoundError:
        raise ClipsonicError(f"CLIP model {name!r}: no such directory, and the hub has no such model") from None
    except Exception as exc:  # offline mode, no network, partial cache: the same advice applies
        raise ClipsonicError(f"CLIP model {name!r} is not in the local Hugging Face cache and could not be "
                           f"downloaded ({type(exc).__name__}). {hint}") from None


def clip_weight_files(directory: Path) -> list[Path]:
    """Refuse anything that is not a complete transformers CLIP checkpoint; return its weight files."""
    if not directory.is_dir():
        raise ClipsonicError(f"{directory} is not a directory; pass a CLIP model directory or a hub id")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ClipsonicError(f"{directory} is not a CLIP model directory: it has no config.json "
                             "(expected the files CLIPModel/CLIPProcessor.save_pretrained write)")
    config = read_json(config_path, "CLIP config.json")
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != "clip":
        raise ClipsonicError(f"{directory} does not hold a CLIP model (its config.json model_type is {model_type!r}, "
                             "not 'clip'); pass a CLIP model directory")
    weights = _weight_files(directory)
    missing = [] if weights else ["weights (model.safetensors)"]
    if not (directory / "tokenizer.json").is_file() and not (
            (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file()):
        missing.append("tokenizer (tokenizer.json, or vocab.json + merges.txt)")
    if not (directory / "preprocessor_config.json").is_file():
        missing.append("image processor (preprocessor_config.json)")
    if missing:
        raise ClipsonicError(f"CLIP model directory {directory} is missing its {', '.join(missing)}; "
                           "save the complete model with CLIPModel.save_pretrained and "
                           "CLIPProcessor.save_pretrained")
    return weights


def _weight_files(directory: Path) -> list[Path]:
    """The safetensors weight files (one, or the shards an index lists); pickled ``.bin`` files can run code when
    loaded, so a folder that has only those is refused outright."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(map(str, read_json(index, "weight index")["weight_map"].values())))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ClipsonicError(f"{index} is not a valid weight index ({exc!r})") from None
        paths = [inside(directory, s, f"{index}: weight shard") for s in shards]
        if absent := [p.name for p in paths if not p.is_file()]:
            raise ClipsonicError(f"CLIP model directory {directory} is missing weight shard(s) {absent}")
        return paths
    if (directory / "model.safetensors").is_file():
        return [directory / "model.safetensors"]
    if any(directory.glob("pytorch_model*.bin")):
        raise ClipsonicError(f"{directory}: CLIP loading needs model.safetensors; this folder has only pickled "
                             "pytorch_model.bin weights, which are never loaded (unpickling can run code): download "
                             "the model's model.safetensors (or convert the .bin where you trust it)")
    return []

