"""Pretrained unCLIP priors: diffusers ``PriorTransformer`` checkpoints such as Karlo's (ViT-L/14).

Karlo (kakaobrain/karlo-v1-alpha; CreativeML OpenRAIL-M) keeps its prior in the ``prior/`` and
``prior_scheduler/`` subfolders of the pipeline repository. Sampling follows diffusers'
``UnCLIPPipeline`` (deprecated there, but the classes import): the condition is the CLIP text
embedding (projected, *not* normalised) plus the 77 final-layer token states and their mask; the
unconditional branch is the empty prompt ""; ``UnCLIPScheduler`` (fixed_small_log variance,
predicts the sample, clip range 5.0) runs 25 steps with guidance 4.0 in the standardised space,
and ``x · clip_std + clip_mean`` maps the result back; we L2-normalise it.

Accepted sources (:func:`load_karlo`): our wrapped layout (below), a Karlo download's root
(``prior/`` + ``prior_scheduler/``), or its ``prior/`` folder alone (the scheduler is then taken from
the sibling ``prior_scheduler/`` or Karlo's published settings). Weights must be safetensors.

Wrapped layout (what a pipeline's ``prior/`` holds after ``clipsonic prior attach``)::

    config.json                      {"type": "karlo", "clip_model": {...}, "steps": 25, "guidance_scale": 4.0}
    transformer/config.json + diffusion_pytorch_model.safetensors
    scheduler/scheduler_config.json
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from clipsonic import __version__
from clipsonic.data.dataset import ClipModelRef
from clipsonic.files import write_json_atomic
from clipsonic.prior.base import CONFIG_NAME, Prior, PriorError, per_sample_noise

TYPE_NAME = "karlo"
KARLO_CLIP = "openai/clip-vit-large-patch14"  # the text encoder Karlo's prior was trained with
# Karlo's prior_scheduler/scheduler_config.json and UnCLIPPipeline's prior defaults.
KARLO_SCHEDULER = {"_class_name": "UnCLIPScheduler", "num_train_timesteps": 1000,
                   "variance_type": "fixed_small_log", "clip_sample": True, "clip_sample_range": 5.0,
                   "prediction_type": "sample", "beta_schedule": "squaredcos_cap_v2"}
KARLO_STEPS, KARLO_GUIDANCE = 25, 4.0
SCHEDULER_FILE = "scheduler_config.json"


def _is_transformer_dir(path: Path) -> bool:
    try:
        return json.loads((path / CONFIG_NAME).read_text()).get("_class_name") == "PriorTransformer"
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def find_karlo(path: Path) -> tuple[Path, Path | None] | None:
    """``(transformer dir, scheduler dir or None)`` of a raw diffusers prior at ``path``, else None."""
    for transformer, scheduler in ((path / "prior", path / "prior_scheduler"),
                                   (path, path.parent / "prior_scheduler"),
                                   (path / "transformer", path / "scheduler")):
        if _is_transformer_dir(transformer):
            return transformer, scheduler if (scheduler / SCHEDULER_FILE).is_file() else None
    return None


class KarloPrior(Prior):
    """A diffusers ``PriorTransformer`` + ``UnCLIPScheduler`` settings, sampled as UnCLIPPipeline does."""

    type_name = TYPE_NAME

    def __init__(self, transformer, scheduler_config: dict[str, Any], clip: ClipModelRef,
                 steps: int = KARLO_STEPS, guidance_scale: float = KARLO_GUIDANCE) -> None:
        super().__init__(clip)
        self.transformer = transformer.eval().requires_grad_(False)
        self.scheduler_config = dict(scheduler_config)
        self.steps, self.guidance_scale = steps, guidance_scale
        if int(transformer.config.clip_embed_dim or transformer.config.embedding_dim) != clip.dim:
            raise PriorError(f"the PriorTransformer outputs {transformer.config.clip_embed_dim}-d embeddings "
                             f"but its CLIP reference {clip.model} is {clip.dim}-d")

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> KarloPrior:
        self.transformer.to(device=device, dtype=dtype)
        return self

    def _scheduler(self):
        from diffusers import UnCLIPScheduler

        return UnCLIPScheduler.from_config({k: v for k, v in self.scheduler_config.items() if not k.startswith("_")})

    def _condition(self, texts: Sequence[str], encoder, guided: bool):
        """(projected text embeddings [B', D], token states [B', L, W], mask [B', L]); B' = 2B when guided
        (the "" prompt first, as UnCLIPPipeline orders them)."""
        if encoder is None:
            raise PriorError("a Karlo prior reads CLIP token states: pass the pipeline's CLIP encoder")
        emb, states, mask = encoder.text_token_states(list(texts))
        expected = int(self.transformer.config.num_embeddings)
        if states.shape[1] != expected or states.shape[2] != int(self.transformer.config.embedding_dim):
            raise PriorError(f"the prior expects {expected} token states of width "
                             f"{self.transformer.config.embedding_dim}; {encoder.name} gives "
                             f"{states.shape[1]} of width {states.shape[2]}")
        if guided:
            u_emb, u_states, u_mask = encoder.text_token_states([""] * len(texts))
            emb, states, mask = torch.cat([u_emb, emb]), torch.cat([u_states, states]), torch.cat([u_mask, mask])
        dtype = self.transformer.dtype
        return emb.to(self.device, dtype), states.to(self.device, dtype), mask.to(self.device)

    @torch.no_grad()
    def sample(self, texts: Sequence[str], text_emb: torch.Tensor, encoder=None, *,
               generators: Sequence[torch.Generator] | None = None, guidance_scale: float | None = None,
               steps: int | None = None) -> torch.Tensor:
        """Karlo's prior loop (UnCLIPPipeline, prior part); ``text_emb`` is unused (the prior takes
        the unnormalised projection and the token states, recomputed here from ``texts``)."""
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        guided = scale > 1.0  # UnCLIPPipeline's rule: no unconditional branch at scale <= 1
        emb, states, mask = self._condition(texts, encoder, guided)
        scheduler = self._scheduler()
        scheduler.set_timesteps(steps or self.steps, device=self.device)
        batch, dim = len(texts), int(self.transformer.config.embedding_dim)
        gens = list(generators) if generators else None
        latents = per_sample_noise((batch, dim), gens, self.device).to(self.transformer.dtype)
        latents = latents * scheduler.init_noise_sigma
        timesteps = scheduler.timesteps
        for i, t in enumerate(timesteps):
            model_in = torch.cat([latents] * 2) if guided else latents
            pred = self.transformer(model_in, timestep=t, proj_embedding=emb, encoder_hidden_states=states,
                                    attention_mask=mask).predicted_image_embedding
            if guided:
                pred_uncond, pred_text = pred.chunk(2)
                pred = pred_uncond + scale * (pred_text - pred_uncond)
            prev = None if i + 1 == len(timesteps) else timesteps[i + 1]
            latents = scheduler.step(pred, timestep=t, sample=latents, generator=gens, prev_timestep=prev).prev_sample
        image_emb = self.transformer.post_process_latents(latents)
        return torch.nn.functional.normalize(image_emb.float(), dim=-1).cpu()

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.transformer.save_pretrained(directory / "transformer", safe_serialization=True)
        write_json_atomic(directory / "scheduler" / SCHEDULER_FILE, self.scheduler_config)
        write_json_atomic(directory / CONFIG_NAME, {
            "type": TYPE_NAME, "clip_model": dataclasses.asdict(self.clip), "steps": self.steps,
            "guidance_scale": self.guidance_scale, "clipsonic_version": __version__})
        return directory


def load_karlo(path: Path, config: dict[str, Any] | None = None, clip_model: str | None = None) -> KarloPrior:
    """Load a wrapped Karlo prior (``config`` = its config.json) or a raw diffusers prior at ``path``.

    ``clip_model`` names the CLIP of a raw prior (default :data:`KARLO_CLIP`); a wrapped one knows it.
    """
    from diffusers import PriorTransformer

    found = find_karlo(path)
    if found is None:
        raise PriorError(f"{path}: no diffusers PriorTransformer here (expected prior/config.json with "
                         "\"_class_name\": \"PriorTransformer\", as in kakaobrain/karlo-v1-alpha)")
    transformer_dir, scheduler_dir = found
    if not any(transformer_dir.glob("*.safetensors")):
        raise PriorError(f"{transformer_dir}: no safetensors weights (pickled .bin files are not loaded); "
                         "download the .safetensors file of the prior")
    try:
        transformer = PriorTransformer.from_pretrained(str(transformer_dir), use_safetensors=True)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise PriorError(f"{transformer_dir}: cannot load the PriorTransformer ({exc})") from None
    scheduler_config = dict(KARLO_SCHEDULER)
    if scheduler_dir is not None:
        scheduler_config = json.loads((scheduler_dir / SCHEDULER_FILE).read_text())
    config = config or {}
    if "clip_model" in config:
        clip = ClipModelRef(**config["clip_model"])
    else:
        dim = int(transformer.config.clip_embed_dim or transformer.config.embedding_dim)
        clip = ClipModelRef(model=clip_model or KARLO_CLIP, dim=dim, fingerprint="")
    return KarloPrior(transformer, scheduler_config, clip, steps=int(config.get("steps", KARLO_STEPS)),
                      guidance_scale=float(config.get("guidance_scale", KARLO_GUIDANCE)))
