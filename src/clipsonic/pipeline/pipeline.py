"""``CLIPSonicPipeline``: text, image or video in; audio out.

    pipe = CLIPSonicPipeline.from_pretrained("runs/vgg/pipeline")
    out = pipe(text="dog barking", mode="pd", guidance_scale=1.5, num_inference_steps=50, seed=0)
    out.audios, out.mels, out.condition  # [B, samples], log-mel [B, 64, frames], [B, D]; float32
    pipe(text="rain", audio="room.wav", strength=0.5)        # a variation; mask=(1.5, 2.5) regenerates a span

Modes: clipsonic.bridges; what a pipeline can run and its default: ``modes``, ``default_mode``.
``negative_text`` is bridged like a text query and replaces the null condition of classifier-free
guidance: ``eps = eps(neg) + w · (eps(query) − eps(neg))`` (no effect at w = 1). Output row i draws its
noise from its own generator (``seed + i``), so a batch gives what its queries give one at a time.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from clipsonic import bridges
from clipsonic.audio import MelConfig, denormalize
from clipsonic.diffusion import DEFAULT_GUIDANCE_SCALE, SAMPLERS, DiffusionConfig, GaussianDiffusion
from clipsonic.diffusion.guidance import NegativeConditioned
from clipsonic.diffusion.rng import randn_per_row
from clipsonic.diffusion.windows import WindowedModel
from clipsonic.encoders import ClipModelRef, default_device, load_clip, parse_dtype
from clipsonic.errors import ClipsonicError
from clipsonic.export import load_stats, read_model_index, write_pipeline_dir
from clipsonic.models import MelUNet
from clipsonic.pipeline import edits, queries, sequence
from clipsonic.pipeline.paths import PROMPTS_NAME, model_path
from clipsonic.prior import load_prior
from clipsonic.vocoder import GriffinLimVocoder, load_vocoder

log = logging.getLogger(__name__)

# Not the paper's sampler: CLIPSonic samples 1000 ancestral DDPM steps (`--sampler ddpm --steps 1000`, 2000 network
# passes). The default is the best measured (docs/benchmarks.md, "Few-step solvers"): UniPC at 8 steps (16 passes with
# guidance) has the built-in model's 1000-step DDPM relevance (1.000) and a lower FAD (11.7 against 13.5; DDIM-25/50
# 11.1-11.2, within seed noise ~0.4), 125x fewer passes; 4-5 steps drift (FAD +0.6 to +1.0).
DEFAULT_STEPS = 8
DEFAULT_SAMPLER = "unipc"
# Strength of the guidance rescale (clipsonic.diffusion.guidance.rescaled_guidance) that keeps guided mels at the
# conditional branch's level and spread. Fully (1), the built-in model's clips over full scale at w = 3 went from
# 9-12 of 24 to 0-1 in pd, knn and iq at unchanged relevance, and zs's from 24 to 4 (benchmarks/bench_levels.py).
DEFAULT_GUIDANCE_RESCALE = 1.0


@dataclasses.dataclass
class CLIPSonicOutput:
    """What a pipeline call returns; B = queries × num_samples rows, query-major."""

    audios: np.ndarray  # float32 [B, frames * hop]
    sample_rate: int
    mels: np.ndarray  # float32 log-mel [B, n_mels, frames]
    condition: np.ndarray  # float32 [B, D]: the (bridged) embeddings the mel model was conditioned on
    mode: str
    queries: list[str]  # [B] a short name of each row's query
    seeds: list[int] | None  # [B] per-row seeds (None when generators were passed)
    durations: list[float] | None = None  # [B] seconds of each row's video, for video queries
    mel_config: MelConfig | None = None  # the front end of ``mels``
    sampling: dict[str, Any] | None = None  # what ran: CLIPSonicPipeline.sampling's resolved settings


class CLIPSonicPipeline:
    """The components of a pipeline directory, and the one way to run them: :meth:`__call__`."""

    def __init__(self, *, unet: nn.Module, diffusion: DiffusionConfig, encoder, mel: MelConfig, clip: ClipModelRef,
                 stats=None, prior=None, vocoder=None, training: dict[str, Any] | None = None,
                 dtype: torch.dtype | None = None) -> None:
        self.unet = unet.eval().requires_grad_(False)
        self.diffusion = GaussianDiffusion(diffusion)
        self.encoder, self.mel, self.clip = encoder, mel, clip
        self.stats, self.prior = stats, prior
        self.vocoder_is_fallback = vocoder is None
        self.vocoder = vocoder if vocoder is not None else GriffinLimVocoder(mel).to(self.device)
        self.training = dict(training or {})
        self.dtype = dtype  # autocast dtype of the mel model (None: float32)
        self._mean_text: dict[tuple[str, ...], torch.Tensor] = {}
        self.known_prompts: list[str] = []  # texts the model knows (its prompts.txt), for far-prompt warnings
        self._known_emb: torch.Tensor | None = None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, device: str | torch.device | None = None,
                        dtype: torch.dtype | str | None = None, *, clip_model: str | None = None,
                        vocoder: str | os.PathLike | None = None) -> CLIPSonicPipeline:
        """Load a pipeline directory (see clipsonic.export for its layout) or ``builtin:NAME``; no ``path``: the
        built-in StampWorld model (:data:`~clipsonic.pipeline.paths.BUILTIN_DIR`). A pipeline made for another CLIP is refused with both names.

        Args:
            device: default cuda when available, else cpu.
            dtype: float16 / bfloat16 run the mel model under autocast (GPU); default float32.
            clip_model: load the CLIP from here instead of the name in model_index.json (e.g. a local
                copy); its weights must be the same (fingerprint checked).
            vocoder: a vocoder directory to use instead of the pipeline's, or "griffin-lim".
        """
        path = model_path(path)
        index, device = read_model_index(path), default_device(device)
        unet = MelUNet.from_pretrained(index.component_dir("unet"), device=device)
        diffusion = DiffusionConfig.load(index.component_dir("scheduler") / "config.json")
        if unet.config.cond_dim != index.clip.dim:
            raise ClipsonicError(f"{path}: the UNet takes {unet.config.cond_dim}-d conditions but the pipeline's CLIP "
                                 f"{index.clip.model} is {index.clip.dim}-d; the directory mixes two models")
        if unet.config.learn_sigma != diffusion.learn_sigma:
            raise ClipsonicError(f"{path}: unet learn_sigma={unet.config.learn_sigma} but the scheduler's is "
                                 f"{diffusion.learn_sigma}")
        # a bundled clip/ makes the folder self-contained; --clip-model still wins
        clip_source = clip_model or index.component_dir("clip") or index.clip.model
        encoder = load_clip(clip_source, device=device)
        if encoder.dim != index.clip.dim or encoder.fingerprint != index.clip.fingerprint:
            raise ClipsonicError(f"{path} was trained with {index.clip.describe()} but the CLIP loaded from "
                                 f"{clip_source} is {encoder.dim}-d with weights {encoder.fingerprint[:12]}; "
                                 "pass the CLIP the pipeline was trained with (--clip-model)")
        prior = None
        if index.component_dir("prior") is not None:
            prior = load_prior(index.component_dir("prior"), device=device)
            prior.check_compatible(index.clip, what=str(index.root))
        vocoder = vocoder or index.component_dir("vocoder")  # None: the Griffin-Lim fallback
        if vocoder is not None:
            vocoder = (GriffinLimVocoder(index.mel).to(device) if str(vocoder) == "griffin-lim"
                       else load_vocoder(vocoder, device=device, mel_config=index.mel))
        pipe = cls(unet=unet, diffusion=diffusion, encoder=encoder, mel=index.mel, clip=index.clip, prior=prior,
                   stats=load_stats(path) if index.component_dir("stats") is not None else None,
                   vocoder=vocoder, training=index.training, dtype=parse_dtype(dtype))
        if (index.root / PROMPTS_NAME).is_file():
            pipe.known_prompts = queries.read_prompts(index.root / PROMPTS_NAME)
        return pipe

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write this pipeline as a directory ``from_pretrained`` reads (the Griffin-Lim fallback is not saved)."""
        extra = {"prior": self.prior.save_pretrained} if self.prior is not None else {}
        if not self.vocoder_is_fallback:
            extra["vocoder"] = self.vocoder.save_pretrained
        return write_pipeline_dir(directory, unet=self.unet, diffusion=self.diffusion.config, mel=self.mel,
                                  clip=self.clip, stats=self.stats, training=self.training, extra_components=extra)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def sample_rate(self) -> int:
        return self.mel.sample_rate

    @property
    def modes(self) -> tuple[str, ...]:
        """The modes this pipeline can run (pd needs a prior; shift and knn the stats component)."""
        have = {"iq": True, "zs": True, "pd": self.prior is not None, "shift": self.stats is not None,
                "knn": self.stats is not None and len(self.stats.image_bank) > 0}
        return tuple(m for m in bridges.MODES if have[m])

    def default_mode(self, kind: str) -> str:
        """iq for image, video and embedding queries; for text pd with a prior, else the best-measured
        training-free bridge the pipeline can run: knn (image bank), then shift (stats), then zs. knn led both
        objectives on relevance and FAD, shift came second (docs/benchmarks.md, "Objective on a CPU")."""
        return "iq" if kind != "text" else next(m for m in ("pd", *bridges.NO_PRIOR_TEXT_MODES) if m in self.modes)

    def _bridge(self, mode: str, texts: list[str], emb: torch.Tensor, generators: list[torch.Generator], *,
                prior_guidance_scale: float | None, prior_steps: int | None, knn_k: int) -> torch.Tensor:
        """Text embeddings [B, D] → image-space embeddings [B, D] by ``mode`` (iq: unchanged)."""
        if mode in ("iq", "zs"):
            return bridges.zero_shot(emb)
        if mode == "pd":
            return self.prior.sample(texts, emb, self.encoder, generators=generators,
                                     guidance_scale=prior_guidance_scale, steps=prior_steps)
        if mode == "shift":
            prompts = tuple(bridges.shift_prompts(self.stats.bank_labels))
            if prompts not in self._mean_text:
                self._mean_text[prompts] = bridges.mean_text_embedding(self.encoder, prompts)
            return bridges.modality_shift(emb, self.stats.mean_image_embedding, self._mean_text[prompts])
        return bridges.nearest_images(emb, self.stats.image_bank, knn_k)

    @torch.no_grad()
    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        image: Any = None,
        video: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        image_embeds: torch.Tensor | np.ndarray | None = None,
        *,
        mode: str | None = None,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        sampler: str | None = None,
        seed: int | Sequence[int] | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        num_samples: int = 1,
        seconds: float | None = None,
        negative_text: str | None = None,
        video_frames: str = "mean",
        num_frames: int = queries.DEFAULT_VIDEO_FRAMES,
        eta: float = 0.0,
        prior_guidance_scale: float | None = None,
        prior_steps: int | None = None,
        knn_k: int = bridges.DEFAULT_KNN_K,
        guidance_rescale: float | None = None,
        audio: str | os.PathLike | np.ndarray | None = None,
        strength: float | None = None,
        mask: tuple[float, float | None] | None = None,
        long: str | None = None,
        progress: Callable[[int, int], None] | None = None,
        sequence_embeds: torch.Tensor | np.ndarray | None = None,
    ) -> CLIPSonicOutput:
        """Generate ``num_samples`` clips per query (see the module docstring for modes, seeds, negatives).

        Exactly one query: ``text``, ``image`` (path / PIL / uint8 array, or a list), ``video`` (path(s)),
        or ``image_embeds`` (precomputed CLIP image embeddings ``[Q, D]``, conditioned on as IQ).

        ``seconds`` rounds to a multiple of the UNet's downsampling (8 frames = 0.256 s); default:
        the video's length for video queries, else one training clip. At most MAX_SECONDS (60 s).
        ``video_frames``: "mean" of ``num_frames`` frames, "first" or "middle". ``guidance_rescale``: how far the
        guided mel takes the conditional branch's level and spread (clipsonic.diffusion.guidance.rescaled_guidance;
        0: plain guidance, whose mels overshoot full scale as w grows). ``guidance_scale``, ``num_inference_steps``,
        ``sampler``, ``guidance_rescale``: None takes the pipeline's own (:meth:`sampling`).

        Editing a sound (one source for every row; clipsonic.pipeline.edits): ``audio`` (a file, or float32 samples at
        :attr:`sample_rate`) sets the length when ``seconds`` is None. ``strength`` in [0, 1] makes a variation
        (SDEdit: 0 gives the audio back, 1 a new sound; required without a mask). ``mask=(start_s, end_s)`` regenerates
        that span (end None: to the end) and keeps the rest exactly; ``strength`` then defaults to 1. ``seconds`` past
        the audio's end continues it (the mask defaults to (its end, None), less the last 2 frames, whose mel saw past
        the end: edits.edge_frames). ``long``: how a mel longer than the
        training length is made: "windows" (default; MultiDiffusion, overlapping training-length windows averaged at
        every step), "continuation" (window after window, each inpainting its first half from the one before) or
        "single" (one long mel, which drifts from what the UNet learned). ``sequence_embeds`` ``[Q, N, D]``: with
        ``image_embeds`` on a film pipeline, each query's frames taken at its ``training.frame_rate`` to follow.
        """
        # 1. Check inputs
        query = queries.parse_query(text, image, video, image_embeds)
        mode = bridges.check_mode(query.kind, mode or self.default_mode(query.kind), self.modes)
        run = self.sampling(guidance_scale, num_inference_steps, sampler, guidance_rescale, eta=eta,
                            negative_text=negative_text)
        guidance_scale, num_inference_steps = run["guidance_scale"], run["num_inference_steps"]
        sampler, guidance_rescale = run["sampler"], run["guidance_rescale"]
        for name, w in (("guidance_scale", guidance_scale), ("prior_guidance_scale", prior_guidance_scale or 0)):
            if isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w < math.inf:
                raise ClipsonicError(f"{name} must be a finite number >= 0, got {w!r}")
        queries.check_positive_int("num_inference_steps", num_inference_steps, self.diffusion.num_timesteps)
        if sampler not in SAMPLERS:
            raise ClipsonicError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
        queries.check_positive_int("num_samples", num_samples, queries.MAX_ROWS)
        if negative_text is not None and not (isinstance(negative_text, str) and negative_text.strip()):
            raise ClipsonicError("negative_text must be a non-empty string")
        if prior_steps is not None:
            queries.check_positive_int("prior_steps", prior_steps)
        queries.check_positive_int("knn_k", knn_k)
        if not (isinstance(guidance_rescale, (int, float)) and 0.0 <= guidance_rescale <= 1.0):
            raise ClipsonicError(f"guidance_rescale must be in [0, 1], got {guidance_rescale!r}")
        if audio is not None and run["distilled"]:
            raise ClipsonicError(f"this pipeline is distilled to {self.diffusion.config.distilled_steps} step(s) from "
                                 "noise and cannot edit audio; use "
                                 + self.training.get("distilled", {}).get("from", "the pipeline it was distilled from"))
        src, length = edits.load_source(audio, self.mel, strength=strength, mask=mask, long=long, seconds=seconds)
        if sequence_embeds is not None and (query.kind != "embedding" or not self.unet.config.follows_frames):
            raise ClipsonicError("sequence_embeds goes with image_embeds on a pipeline that follows frames (seq_cond 'film' or 'xattn'); drop it")
        follows = self.unet.config.follows_frames and (query.kind == "video" or sequence_embeds is not None)
        frame_rate = sequence.training_frame_rate(self.training, long) if follows else None
        multiple = self.unet.config.downsample_factor
        if query.kind != "video" or length is not None:  # lengths are checked before any slow work
            frames = queries.resolve_frames(length, None, self.mel, multiple)

        # 2. Encode the query with CLIP: [Q, D]
        emb, durations = queries.encode_query(query, self.encoder, pooling=video_frames, num_frames=num_frames,
                                              max_seconds=length or queries.MAX_SECONDS)
        if query.kind == "video" and length is None:
            frames = queries.resolve_frames(None, durations, self.mel, multiple)
        if query.kind == "text":
            self._warn_far(query.items, emb)
        edit = None if src is None else edits.plan_edit(src, frames, self.mel, multiple, strength=strength, mask=mask,
                                                         seconds=seconds)

        # 3. One row per output (query-major) and one generator per row; x_T first, so a seed gives
        #    the same initial noise in every mode
        batch = len(query) * num_samples
        rows = torch.arange(len(query)).repeat_interleave(num_samples)  # [B] query index of each row
        gens, seeds = queries.expand_seeds(seed, generator, batch)
        x_T = randn_per_row((batch, self.unet.config.in_channels, self.mel.n_mels, frames), gens)  # [B, 1, n_mels, F]

        # 4. Bridge to the image-embedding space: [B, D]
        texts = [query.items[int(r)] for r in rows] if query.kind == "text" else []
        bridge = dict(prior_guidance_scale=prior_guidance_scale, prior_steps=prior_steps, knn_k=knn_k)
        cond = self._bridge(mode, texts, emb[rows], gens, **bridge)
        cond_seq = None if query.kind != "video" or not follows else torch.stack([  # [B, F, D], one row per mel frame
            sequence.video_sequence(path, self.encoder, frame_rate, frames, self.mel) for path in query.items])[rows]
        if sequence_embeds is not None:
            cond_seq = sequence.stored_sequence(sequence_embeds, len(query), frames, frame_rate, self.mel)[rows]
        negative = None
        if negative_text is not None:
            neg_mode = mode if mode != "iq" else self.default_mode("text")
            neg_emb = self.encoder.encode_texts([negative_text.strip()]).expand(batch, -1)
            negative = self._bridge(neg_mode, [negative_text.strip()] * batch, neg_emb, gens, **bridge)

        # 5. Denoise: x_0 [B, 1, n_mels, F] in [-1, 1]; past the training length in windows of it
        denoise = functools.partial(self._denoise, cond, negative, gens, cond_seq, sampler=sampler,
                                    steps=num_inference_steps, guidance_scale=float(guidance_scale), eta=eta,
                                    guidance_rescale=guidance_rescale)
        window = queries.resolve_frames(None, None, self.mel, multiple)  # the training length
        if long == "continuation" and frames > window:
            x0 = edits.continue_in_windows(denoise, x_T, window, edits.edge_frames(self.mel), edit=edit,
                                           progress=progress)
        else:
            x0 = denoise(x_T, progress=progress, window=window if long in (None, "windows") else None,
                         **(edit.sample_args() if edit is not None else {}))

        # 6. Post-process: log-mel → waveform
        logmel = denormalize(x0[:, 0].float(), self.mel)  # [B, n_mels, F]
        audio = self.vocoder(logmel.to(self.vocoder.device))  # [B, F * hop]
        if query.kind == "video" and length is None:  # F was rounded up to the UNet's multiple: back to the video's
            audio = audio[:, :round(max(durations) * self.sample_rate)]
        return CLIPSonicOutput(
            audios=audio.float().cpu().numpy(), sample_rate=self.sample_rate, mels=logmel.cpu().numpy(),
            condition=cond.float().cpu().numpy(), mode=mode, queries=[query.describe(int(r)) for r in rows],
            seeds=seeds, durations=[durations[int(r)] for r in rows] if durations else None, mel_config=self.mel,
            sampling=run)

    @property
    def known_texts(self) -> list[str]:
        """The texts far prompts are measured against: its prompts.txt, then its training labels' captions
        (:func:`bridges.shift_prompts`, less the generic ones)."""
        labels = [] if self.stats is None else bridges.shift_prompts(self.stats.bank_labels)
        return self.known_prompts + [t for t in labels if t not in bridges.GENERIC_PROMPTS]

    def _warn_far(self, texts: list[str], emb: torch.Tensor) -> None:
        """Say, in one line per text, when a text ``emb`` ``[Q, D]`` is far from every text the model knows (its
        prompts.txt, and its training labels): the model still answers, with the nearest of its own sounds. Only
        for a pipeline with a prompts.txt: labels alone ("goat", "the sound of goat") are too few to tell a new
        caption of a known thing from an unknown thing (a StampWorld run's held-out captions scored 0.85-0.90)."""
        known = self.known_texts
        if self.known_prompts and len(known) > 1:  # one caption has no spread to centre on
            self._known_emb = self.encoder.encode_texts(known) if self._known_emb is None else self._known_emb
            bridges.warn_far(texts, emb, known, self._known_emb)

    def sampling(self, guidance_scale: float | None = None, num_inference_steps: int | None = None,
                 sampler: str | None = None, guidance_rescale: float | None = None, *, eta: float = 0.0,
                 negative_text: str | None = None) -> dict[str, Any]:
        """The settings a call runs with: those given, None taking the defaults (:data:`DEFAULT_STEPS` …, or a
        distilled pipeline's own: its K DDIM steps with the guidance folded in, clipsonic.train.distill); a distilled
        pipeline refuses, in one line, what it was not distilled for. ``distilled``: whether it is one."""
        c = self.diffusion.config
        distilled = c.distilled_steps is not None
        defaults = {"guidance_scale": c.distilled_guidance_scale, "num_inference_steps": c.distilled_steps,
                    "sampler": "ddim", "guidance_rescale": c.distilled_guidance_rescale} if distilled else {
                    "guidance_scale": DEFAULT_GUIDANCE_SCALE, "num_inference_steps": DEFAULT_STEPS,
                    "sampler": DEFAULT_SAMPLER, "guidance_rescale": DEFAULT_GUIDANCE_RESCALE}
        given = {"guidance_scale": guidance_scale, "num_inference_steps": num_inference_steps, "sampler": sampler,
                 "guidance_rescale": guidance_rescale}
        run = {name: defaults[name] if value is None else value for name, value in given.items()}
        if distilled:
            what = next((f"{k}={v!r}" for k, v in run.items() if v != defaults[k]), None)
            what = what or (f"eta={eta!r}" if eta else "negative_text" if negative_text is not None else None)
            if what:
                source = self.training.get("distilled", {}).get("from", "the pipeline it was distilled from")
                raise ClipsonicError(
                    f"this pipeline is distilled to {c.distilled_steps} ddim step(s) at guidance_scale "
                    f"{c.distilled_guidance_scale:g}, guidance_rescale {c.distilled_guidance_rescale:g} (one "
                    f"conditional pass per step); it cannot run {what}: drop it, or use {source}")
        return {**run, "distilled": distilled}

    def _denoise(self, cond: torch.Tensor, negative: torch.Tensor | None, gens: list[torch.Generator],
                 cond_seq: torch.Tensor | None, x_T: torch.Tensor, *, sampler: str, steps: int,
                 guidance_scale: float, eta: float, guidance_rescale: float, progress: Callable[[int, int], None] | None, window: int | None = None,
                 x_init: torch.Tensor | None = None, strength: float = 1.0, known: torch.Tensor | None = None,
                 keep: torch.Tensor | None = None) -> torch.Tensor:
        """Run the sampler on all rows at once, or row by row when it draws noise at every step (ddpm,
        ddim with eta > 0), so that each row's noise comes from its own generator (slower on a GPU).
        ``cond_seq`` [B, F, D]: a film UNet's frame-aligned sequence (pipeline.sequence), or None.
        ``window``: run the UNet on windows of that many frames (diffusion.windows); ``x_init``, ``strength``,
        ``known``, ``keep`` [1 or B, ...]: GaussianDiffusion.sample's x_init, strength, known and known_mask."""
        device, c = self.device, self.diffusion.config
        if c.distilled_steps is not None:  # the student: conditional only, on the grid it was distilled on
            guidance_scale, guidance_rescale = c.conditional_scale, 0.0
        stochastic = sampler == "ddpm" or (sampler == "ddim" and eta > 0)
        groups = [[i] for i in range(len(cond))] if stochastic else [list(range(len(cond)))]
        outputs, unet = [], self.unet if window is None else WindowedModel(self.unet, window)

        def pick(value, rows):  # a [1 or B, ...] edit tensor's rows, as [len(rows), ...] on the device
            return None if value is None else value.expand(len(cond), *value.shape[1:])[rows].to(device)

        for n, rows in enumerate(groups):
            model = unet if negative is None else NegativeConditioned(unet, negative[rows].to(device))
            if cond_seq is not None:
                model = sequence.SequenceConditioned(model, cond_seq[rows].to(device))
            report = None if progress is None else (lambda i, k, n=n: progress(n * k + i, len(groups) * k))
            with torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype not in (None, torch.float32)):
                outputs.append(self.diffusion.sample(
                    model, tuple(x_T[rows].shape), cond[rows].to(device), sampler=sampler, steps=steps,
                    guidance_scale=guidance_scale, generator=gens[rows[0]], eta=eta, progress=report,
                    x_T=x_T[rows].to(device), guidance_rescale=guidance_rescale,
                    spacing="trailing" if c.distilled_steps is not None else None, x_init=pick(x_init, rows),
                    strength=strength, known=pick(known, rows), known_mask=pick(keep, rows)))
        return torch.cat(outputs)

    def __repr__(self) -> str:
        return (f"CLIPSonicPipeline(clip={self.clip.model!r}, modes={list(self.modes)}, "
                f"vocoder={'griffin-lim (fallback)' if self.vocoder_is_fallback else self.vocoder!r})")
