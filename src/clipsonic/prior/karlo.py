"""Pretrained unCLIP priors: diffusers ``PriorTransformer`` checkpoints such as Karlo's (ViT-L/14).

Sampling follows diffusers' ``UnCLIPPipeline`` (prior part): the condition is the CLIP text embedding
(projected, *not* normalised) plus the 77 final-layer token states and their mask; the unconditional
branch is the prompt ""; ``UnCLIPScheduler`` runs 25 steps with guidance 4.0 in the standardised space
and ``x · clip_std + clip_mean`` maps the result back; we L2-normalise it.

Sources (:func:`load_karlo`): a Karlo download (kakaobrain/karlo-v1-alpha, CreativeML OpenRAIL-M:
``prior/`` + ``prior_scheduler/``), its ``prior/`` alone (Karlo's published scheduler settings then),
or the wrapped layout a pipeline's ``prior/`` holds: config.json (base.py; "type": "karlo", "steps",
"guidance_scale"), ``transformer/`` and ``scheduler/scheduler_config.json``. Safetensors only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from clipsonic.diffusion.rng import randn_per_row
from clipsonic.encoders import ClipModelRef
from clipsonic.errors import ClipsonicError
from clipsonic.files import read_json, write_json_atomic
from clipsonic.prior.base import CONFIG_NAME, Prior

TYPE_NAME = "karlo"
KARLO_CLIP = "openai/clip-vit-large-patch14"  # the text encoder Karlo's prior was trained with
# Karlo's prior_scheduler/scheduler_config.json and UnCLIPPipeline's prior defaults.
KARLO_SCHEDULER = {"_class_name": "UnCLIPScheduler", "num_train_timesteps": 1000,
                   "variance_type": "fixed_small_log", "clip_sample": True, "clip_sample_range": 5.0,
                   "prediction_type": "sample", "beta_schedule": "squaredcos_cap_v2"}
KARLO_STEPS, KARLO_GUIDANCE = 25, 4.0
SCHEDULER_FILE = "scheduler_config.json"


def _is_transformer_dir(path: Path) -> bool:
    return (path / CONFIG_NAME).is_file() and read_json(path / CONFIG_NAME).get("_class_name") == "PriorTransformer"


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
            raise ClipsonicError(f"the PriorTransformer outputs {transformer.config.clip_embed_dim}-d embeddings "
                             f"but its CLIP reference {clip.model} is {clip.dim}-d")

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> KarloPrior:
        self.transformer.to(device=device, dtype=dtype)
        return self

    def _scheduler(self):
        # diffusers takes ~10 s to import: only for Karlo priors
        from diffusers import UnCLIPScheduler

        return UnCLIPScheduler.from_config({k: v for k, v in self.scheduler_config.items() if not k.startswith("_")})

    def _condition(self, texts: Sequence[str], encoder, guided: bool):
        """(projected text embeddings [B', D], token states [B', L, W], mask [B', L]); B' = 2B when guided
        (the "" prompt first, as UnCLIPPipeline orders them)."""
        if encoder is None:
            raise ClipsonicError("a Karlo prior reads CLIP token states: pass the pipeline's CLIP encoder")
        emb, states, mask = encoder.text_token_states(list(texts))
        expected = int(self.transformer.config.num_embeddings)
        if states.shape[1] != expected or states.shape[2] != int(self.transformer.config.embedding_dim):
            raise ClipsonicError(f"the prior expects {expected} token states of width "
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
        latents = randn_per_row((batch, dim), gens, self.device).to(self.transformer.dtype)
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

    def _save_weights(self, directory: Path) -> dict[str, Any]:
        self.transformer.save_pretrained(directory / "transformer", safe_serialization=True)
        write_json_atomic(directory / "scheduler" / SCHEDULER_FILE, self.scheduler_config)
        return {"steps": self.steps, "guidance_scale": self.guidance_scale}


def load_karlo(path: Path, config: dict[str, Any] | None = None, clip_model: str | None = None) -> KarloPrior:
    """Load a wrapped Karlo prior (``config`` = its config.json) or a raw diffusers prior at ``path``.

    ``clip_model`` names the CLIP of a raw prior (default :data:`KARLO_CLIP`); a wrapped one knows it.
    """
    from diffusers import PriorTransformer  # (~10 s to import: only here)

    found = find_karlo(path)
    if found is None:
        raise ClipsonicError(f"{path}: no diffusers PriorTransformer here (expected prior/config.json with "
                         "\"_class_name\": \"PriorTransformer\", as in kakaobrain/karlo-v1-alpha)")
    transformer_dir, scheduler_dir = found
    if not any(transformer_dir.glob("*.safetensors")):
        raise ClipsonicError(f"{transformer_dir}: no safetensors weights (pickled .bin files are not loaded); "
                         "download the .safetensors file of the prior")
    try:
        transformer = PriorTransformer.from_pretrained(str(transformer_dir), use_safetensors=True)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ClipsonicError(f"{transformer_dir}: cannot load the PriorTransformer ({exc})") from None
    scheduler_config = KARLO_SCHEDULER if scheduler_dir is None else read_json(scheduler_dir / SCHEDULER_FILE)
    config = config or {}
    if "clip_model" in config:
        clip = ClipModelRef.from_dict(config["clip_model"], f"{path / CONFIG_NAME}:clip_model")
    else:
        dim = int(transformer.config.clip_embed_dim or transformer.config.embedding_dim)
        clip = ClipModelRef(model=clip_model or KARLO_CLIP, dim=dim, fingerprint="")
    return KarloPrior(transformer, scheduler_config, clip, steps=int(config.get("steps", KARLO_STEPS)),
                      guidance_scale=float(config.get("guidance_scale", KARLO_GUIDANCE)))
