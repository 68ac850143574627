"""Pretrained unCLIP priors: diffusers ``PriorTransformer`` checkpoints such as Karlo's (ViT-L/14).

Sampling follows diffusers' ``UnCLIPPipeline`` (prior part): the condition is the CLIP text embedding (projected,
*not* normalised) plus the 77 final-layer token states and their mask; the unconditional branch is the prompt "";
``UnCLIPScheduler`` runs 25 steps with guidance 4.0 in the standardised space and ``x · clip_std + clip_mean``
maps the result back; we L2-normalise it. Safetensors only; diffusers (~10 s to import) is imported for Karlo only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from clipsonic.diffusion.rng import randn_per_row
from clipsonic.encoders import ClipModelRef
from clipsonic.errors import ClipsonicError
from clipsonic.files import read_json
from clipsonic.models.weights import check_shared_shapes
from clipsonic.prior.base import CONFIG_NAME, TYPES, Prior

KARLO_CLIP = "openai/clip-vit-large-patch14"  # the text encoder Karlo's prior was trained with
# Karlo's prior_scheduler/scheduler_config.json and UnCLIPPipeline's prior defaults.
KARLO_SCHEDULER = {"_class_name": "UnCLIPScheduler", "num_train_timesteps": 1000,
                   "variance_type": "fixed_small_log", "clip_sample": True, "clip_sample_range": 5.0,
                   "prediction_type": "sample", "beta_schedule": "squaredcos_cap_v2"}
KARLO_STEPS, KARLO_GUIDANCE = 25, 4.0
SCHEDULER_FILE = "scheduler_config.json"


class KarloPrior(Prior):
    """A diffusers ``PriorTransformer`` (``net``) and ``UnCLIPScheduler``, sampled as UnCLIPPipeline does."""

    type_name = "karlo"

    def __init__(self, transformer, scheduler, clip: ClipModelRef, steps: int = KARLO_STEPS,
                 guidance_scale: float = KARLO_GUIDANCE) -> None:
        super().__init__(transformer, clip)
        self.scheduler, self.steps, self.guidance_scale = scheduler, steps, guidance_scale

    def _condition(self, texts: Sequence[str], encoder, guided: bool):
        """(projected text embeddings [B', D], token states [B', L, W], mask [B', L]); guided: B' = 2B, "" first."""
        if encoder is None:
            raise ClipsonicError("a Karlo prior reads CLIP token states: pass the pipeline's CLIP encoder")
        emb, states, mask = encoder.text_token_states(list(texts))
        length, width = int(self.net.config.num_embeddings), int(self.net.config.embedding_dim)
        if states.shape[1:] != (length, width):
            raise ClipsonicError(f"the prior expects {length} token states of width {width}; {encoder.name} gives "
                                 f"{states.shape[1]} of width {states.shape[2]}")
        if guided:
            u_emb, u_states, u_mask = encoder.text_token_states([""] * len(texts))
            emb, states, mask = torch.cat([u_emb, emb]), torch.cat([u_states, states]), torch.cat([u_mask, mask])
        return emb.to(self.device, self.net.dtype), states.to(self.device, self.net.dtype), mask.to(self.device)

    @torch.no_grad()
    def sample(self, texts: Sequence[str], text_emb: torch.Tensor, encoder=None, *,
               generators: Sequence[torch.Generator] | None = None, guidance_scale: float | None = None,
               steps: int | None = None) -> torch.Tensor:
        """Karlo's prior loop (UnCLIPPipeline, prior part); ``text_emb`` is unused (the prior takes
        the unnormalised projection and the token states, recomputed here from ``texts``)."""
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        guided = scale > 1.0  # UnCLIPPipeline's rule: no unconditional branch at scale <= 1
        emb, states, mask = self._condition(texts, encoder, guided)
        self.scheduler.set_timesteps(steps or self.steps, device=self.device)
        gens = list(generators) if generators else None
        latents = randn_per_row((len(texts), int(self.net.config.embedding_dim)), gens, self.device)
        latents = latents.to(self.net.dtype) * self.scheduler.init_noise_sigma
        timesteps = self.scheduler.timesteps
        for i, t in enumerate(timesteps):
            pred = self.net(torch.cat([latents] * 2) if guided else latents, timestep=t, proj_embedding=emb,
                            encoder_hidden_states=states, attention_mask=mask).predicted_image_embedding
            if guided:
                pred_uncond, pred_text = pred.chunk(2)
                pred = pred_uncond + scale * (pred_text - pred_uncond)
            prev = None if i + 1 == len(timesteps) else timesteps[i + 1]
            latents = self.scheduler.step(pred, timestep=t, sample=latents, generator=gens,
                                          prev_timestep=prev).prev_sample
        image_emb = self.net.post_process_latents(latents)
        return torch.nn.functional.normalize(image_emb.float(), dim=-1).cpu()

    def _save_weights(self, directory: Path) -> dict[str, Any]:
        self.net.save_pretrained(directory / "transformer", safe_serialization=True)
        self.scheduler.save_pretrained(directory / "scheduler")
        return {"steps": self.steps, "guidance_scale": self.guidance_scale}


def load_karlo(path: Path, config: dict[str, Any] | None = None, clip_model: str | None = None) -> KarloPrior:
    """Load a wrapped Karlo prior (``config`` = its config.json) or a raw diffusers prior at ``path``;
    ``clip_model`` names the CLIP of a raw prior (default :data:`KARLO_CLIP`), a wrapped one knows it."""
    # A Karlo download (kakaobrain/karlo-v1-alpha, CreativeML OpenRAIL-M), its ``prior/`` alone (then Karlo's published
    # scheduler settings), or the wrapped layout of a pipeline's ``prior/`` (config.json "type": "karlo", base.py).
    for transformer_dir, scheduler_dir in ((path / "prior", path / "prior_scheduler"),
                                           (path, path.parent / "prior_scheduler"),
                                           (path / "transformer", path / "scheduler")):
        marker = transformer_dir / CONFIG_NAME
        if marker.is_file() and _class_name(marker) == "PriorTransformer":
            scheduler_file = scheduler_dir / SCHEDULER_FILE
            break
    else:
        no_config = "" if config else f"no config.json with \"type\" in {list(TYPES)} here or in {path / 'prior'}, and "
        raise ClipsonicError(f"{path} is not a prior directory: {no_config}no diffusers PriorTransformer "
                             "(prior/config.json with \"_class_name\": \"PriorTransformer\", as in kakaobrain/"
                             "karlo-v1-alpha); train one with `clipsonic train-prior` or point at a Karlo download")
    from diffusers import PriorTransformer, UnCLIPScheduler

    if not (weights := sorted(transformer_dir.glob("*.safetensors"))):
        raise ClipsonicError(f"{transformer_dir}: no safetensors weights (pickled .bin files are not loaded); "
                             "download the .safetensors file of the prior")
    try:
        check_shared_shapes(lambda: PriorTransformer.from_config(PriorTransformer.load_config(str(transformer_dir))),
                            weights, "PriorTransformer")
        transformer = PriorTransformer.from_pretrained(str(transformer_dir), use_safetensors=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError) as exc:
        raise ClipsonicError(f"{transformer_dir}: cannot load the PriorTransformer ({exc})") from None
    settings = read_json(scheduler_file, "scheduler config") if scheduler_file.is_file() else KARLO_SCHEDULER
    if not isinstance(settings, dict):
        raise ClipsonicError(f"{scheduler_file}: not a scheduler config (a JSON object)")
    scheduler = UnCLIPScheduler.from_config(settings)
    config = config or {}
    dim = int(transformer.config.clip_embed_dim or transformer.config.embedding_dim)
    clip = (ClipModelRef.from_dict(config["clip_model"], f"{path / CONFIG_NAME}:clip_model") if "clip_model" in config
            else ClipModelRef(model=clip_model or KARLO_CLIP, dim=dim, fingerprint=""))
    if clip.dim != dim:
        raise ClipsonicError(f"the PriorTransformer outputs {dim}-d embeddings but its CLIP reference {clip.model} "
                             f"is {clip.dim}-d")
    return KarloPrior(transformer, scheduler, clip, steps=int(config.get("steps", KARLO_STEPS)),
                      guidance_scale=float(config.get("guidance_scale", KARLO_GUIDANCE)))


def _class_name(config: Path) -> object:
    data = read_json(config, CONFIG_NAME)
    return data.get("_class_name") if isinstance(data, dict) else None
