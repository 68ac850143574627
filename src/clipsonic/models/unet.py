"""The mel diffusion network: a UNet over ``[B, 1, 64, frames]`` log-mels conditioned on a CLIP vector.

It knows nothing of diffusion (improved-diffusion's split): it maps a noisy mel, timestep indices and
a CLIP embedding to ``[ε, v]`` (``learn_sigma``) or ``ε``; ``clipsonic.diffusion`` gives them meaning.
It is improved-diffusion's unet.py (blocks in ``layers.py``) rather than diffusers' ``UNet2DModel``:
that one has one head count and group count for the whole network, no zero-init or patch stem, and
state-dict keys diffusers has renamed between the releases we accept.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.checkpoint import checkpoint

from clipsonic.config import Config, ConfigError
from clipsonic.errors import ClipsonicError
from clipsonic.models.layers import (
    AttentionBlock,
    Downsample,
    EmbedSequential,
    FrameAttention,
    ResBlock,
    Upsample,
    timestep_embedding,
    zero_module,
)
from clipsonic.models.weights import load_checked

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# Mel frames come in blocks of this many: every preset halves the mel three times (a 2×2 patch
# counts as one halving), so clips, generations and datasets are cut in whole blocks.
FRAME_BLOCK = 8


@dataclass(frozen=True)
class MelUNetConfig(Config):
    """Architecture of :class:`MelUNet`. Defaults are the ``"paper"`` preset (improved-diffusion's
    ImageNet-64 UNet: the paper trains Improved DDPM on 64-band mels and does not state the size)."""

    in_channels: int = 1  # one log-mel "image" channel
    learn_sigma: bool = True  # output [ε, v] (2·in channels): Improved DDPM's learned variance range
    cond_dim: int = 768  # CLIP ViT-L/14 embedding width (the public CLIP priors live in that space)
    base_channels: int = 128  # improved-diffusion 64×64: 128
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)  # per level; 64 bins → 64, 32, 16, 8 (3 downsamplings)
    num_res_blocks: int = 3  # per level on the way down; the way up has one more (skip of the resample)
    # Levels (0 = finest) that get self-attention after each res-block. If the coarsest level is
    # listed, the middle block gets attention too. Attention costs (H·W)²: keep it coarse.
    attention_levels: tuple[int, ...] = (2, 3)  # 16×F/4 and 8×F/8, as improved-diffusion's 16 and 8
    num_heads: int = 4  # improved-diffusion's fixed head count (ignored when head_channels > 0)
    head_channels: int = 0  # > 0: heads = channels // head_channels instead (guided-diffusion style)
    # improved-diffusion used 0.3 on CIFAR-10 and 0 on ImageNet-64; VGGSound (~200k clips) and
    # MUSIC (far fewer) are much smaller than ImageNet, so some dropout.
    dropout: float = 0.1
    norm_groups: int = 32  # GroupNorm groups; must divide every level's channel count
    # Pixel-unshuffle the input by this factor (1 = none): 2 turns [1, 64, F] into [4, 32, F/2]
    # before the first conv, so the full-resolution level costs 4× less (tiny preset: 0.31 instead
    # of 1.7 s per batch-16 step on 2 cores). The output is shuffled back: [2, 64, F] per mel.
    # Only the CPU-sized presets use it.
    patch_size: int = 1
    # "film": also condition on the clip's frame sequence cond_seq [B, N, D] (datasets made with preprocess
    # --frame-rate), modulating every res-block per frame (docs/architecture.md); "xattn": the same sequence through a
    # cross-attention after every res-block instead (the position learns which frames to hear); "none": the paper's.
    seq_cond: Literal["none", "film", "xattn"] = "none"

    def __post_init__(self) -> None:
        levels = len(self.channel_mult)
        sizes = (levels, self.in_channels, self.cond_dim, self.base_channels, self.num_res_blocks, self.norm_groups, self.patch_size, *self.channel_mult)
        if min(sizes) < 1:
            raise ConfigError(f"MelUNetConfig: channel counts, channel_mult, num_res_blocks and patch_size must be positive: {self}")
        if levels > 8 or self.num_res_blocks > 32:  # a mel has 64 bins; more blocks than this is a typo, not a model
            raise ConfigError(f"MelUNetConfig: at most 8 levels (channel_mult entries) and 32 num_res_blocks, got "
                              f"{levels} and {self.num_res_blocks}")
        bad_levels = [i for i in self.attention_levels if not 0 <= i < levels]
        if bad_levels:
            raise ConfigError(f"MelUNetConfig: attention_levels {bad_levels} outside 0..{levels - 1} (one per channel_mult entry)")
        for i, mult in enumerate(self.channel_mult):
            ch = self.base_channels * mult
            if ch % self.norm_groups:
                raise ConfigError(f"MelUNetConfig: level {i} has {ch} channels, not divisible by norm_groups={self.norm_groups}")
            heads = self.heads_at(ch)
            attends = i in self.attention_levels or self.seq_cond == "xattn"
            if attends and (heads < 1 or ch % heads or (self.head_channels > 0 and ch % self.head_channels)):
                raise ConfigError(f"MelUNetConfig: level {i} has {ch} channels, not divisible into attention heads ({self.num_heads=}, {self.head_channels=})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"MelUNetConfig: dropout must be in [0, 1), got {self.dropout}")

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def downsample_factor(self) -> int:
        """Mel bins and frames must be multiples of this (patching × 2^(levels − 1))."""
        return self.patch_size * 2 ** (len(self.channel_mult) - 1)

    @property
    def follows_frames(self) -> bool:
        """Whether the network takes a frame sequence ``cond_seq`` (``seq_cond`` "film" or "xattn")."""
        return self.seq_cond != "none"

    def heads_at(self, channels: int) -> int:
        return channels // self.head_channels if self.head_channels > 0 else self.num_heads


UNET_PRESETS: dict[str, MelUNetConfig] = {
    # improved-diffusion's 64×64 class model (~121M parameters with 4 heads): GPU only.
    "paper": MelUNetConfig(),
    # One GPU trains it in hours; 2 CPU cores can train it in the background (~1.7 s per batch-16
    # step of [1, 64, 128]) and sample from it. Patching as in "tiny"; attention only at 8×F/8
    # (and the middle): adding the 16×F/4 level (the paper's finer attention resolution) cost
    # ~40 % more per CPU step for 0.3M parameters.
    "small": MelUNetConfig(
        base_channels=64, channel_mult=(1, 2, 3), num_res_blocks=2, attention_levels=(2,),
        num_heads=4, dropout=0.1, norm_groups=32, patch_size=2,
    ),
    # CPU tests, demos and quick experiments: patching halves the resolution before the first conv
    # and attention only runs at 8×F/8 (and the middle): ~0.31 s per batch-16 step of [1, 64, 128] on 2 cores.
    "tiny": MelUNetConfig(
        base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_levels=(2,),
        num_heads=2, dropout=0.0, norm_groups=8, patch_size=2,
    ),
}


class MelUNet(nn.Module):
    """UNet mapping a noisy log-mel, timestep indices and a CLIP vector to ``[ε, v]`` (or ``ε``).

    Conditioning (improved-diffusion + classifier-free guidance): ``emb = MLP(sinusoid(t)) +
    Linear(√D · c)`` where ``c`` is the CLIP vector, or the learned ``null_cond`` where
    ``drop_cond`` is set; every res-block applies AdaGN from ``emb``. The ``√D`` makes an
    L2-normalised CLIP vector (components ~1/√D) a unit-RMS input, so the condition starts at the
    magnitude of improved-diffusion's N(0, 1) class embeddings instead of ~30× below the timestep's.

    With ``seq_cond="film"`` a frame sequence ``cond_seq [B, N, D]`` also enters, through its own zero-initialised
    ``Linear(√D · c)`` (a new model starts as the global one): ``emb [B, E, N] = emb[:, :, None] + seq_proj(√D ·
    cond_seq)``, which every res-block resamples by area to its own frame count, so AdaGN's scale and shift vary
    along time (per-time FiLM). ``cond_seq=None`` is the constant sequence ``cond`` (a text or single-image query).
    With ``seq_cond="xattn"`` the rows ``seq_proj(√D · cond_seq)`` ``[B, N, E]`` are read instead by a
    :class:`~clipsonic.models.layers.FrameAttention` after every res-block (zero-initialised output), each mel position
    choosing its frames by content and time; ``emb`` stays global.

    Set ``model.gradient_checkpointing = True`` to recompute each stage's activations in the
    backward pass (training only): it trades ~30 % more compute for far less memory.
    """

    def __init__(self, config: MelUNetConfig):
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False
        c = config
        emb_dim = 4 * c.base_channels
        self.time_mlp = nn.Sequential(nn.Linear(c.base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.cond_proj = nn.Linear(c.cond_dim, emb_dim)
        # Unit-norm random start, like the L2-normalised CLIP vectors it stands in for. In place: from_pretrained
        # builds on the meta device, where an out-of-place division imports torch._dynamo (2.5 s).
        self.null_cond = nn.Parameter(torch.randn(c.cond_dim).div_(c.cond_dim**0.5))
        if c.seq_cond == "film":  # only then: a "none" model keeps the parameter names of every older checkpoint
            self.seq_proj = zero_module(nn.Linear(c.cond_dim, emb_dim))
        elif c.seq_cond == "xattn":  # the rows each FrameAttention reads (its output starts at zero)
            self.seq_proj = nn.Linear(c.cond_dim, emb_dim)
        self.patch_in = nn.PixelUnshuffle(c.patch_size)  # [B, C, H, W] → [B, C·p², H/p, W/p]
        self.patch_out = nn.PixelShuffle(c.patch_size)  # inverse, on the output

        def res(in_ch: int, out_ch: int) -> ResBlock:
            return ResBlock(in_ch, out_ch, emb_dim, c.dropout, c.norm_groups)

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, c.heads_at(ch), c.norm_groups)

        def frames(ch: int) -> list[nn.Module]:
            return [FrameAttention(ch, emb_dim, c.heads_at(ch), c.norm_groups)] if c.seq_cond == "xattn" else []

        # Down path: every stage's output is kept as a skip for the up path (improved-diffusion).
        ch = c.base_channels
        self.conv_in = nn.Conv2d(c.in_channels * c.patch_size**2, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skip_chs = [ch]
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * c.base_channels)]
                ch = mult * c.base_channels
                layers += frames(ch)
                if level in c.attention_levels:
                    layers.append(attn(ch))
                self.down.append(EmbedSequential(*layers))
                skip_chs.append(ch)
            if level < len(c.channel_mult) - 1:
                self.down.append(EmbedSequential(Downsample(ch)))
                skip_chs.append(ch)

        coarse_attn = len(c.channel_mult) - 1 in c.attention_levels
        self.middle = EmbedSequential(res(ch, ch), *frames(ch), *([attn(ch)] if coarse_attn else []), res(ch, ch))

        # Up path: one more res-block per level than down, each eating one skip.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):
                layers = [res(ch + skip_chs.pop(), mult * c.base_channels)]
                ch = mult * c.base_channels
                layers += frames(ch)
                if level in c.attention_levels:
                    layers.append(attn(ch))
                if level > 0 and i == c.num_res_blocks:
                    layers.append(Upsample(ch))
                self.up.append(EmbedSequential(*layers))

        self.norm_out = nn.GroupNorm(c.norm_groups, ch)
        # Zero-init (improved-diffusion): the untrained network outputs exactly 0.
        self.conv_out = zero_module(nn.Conv2d(ch, c.out_channels * c.patch_size**2, 3, padding=1))
        if not self.conv_out.weight.is_meta:  # from_pretrained builds on the meta device, and logs once loaded
            log.info("MelUNet: %.2fM parameters", self.num_parameters() / 1e6)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        drop_cond: torch.Tensor | None = None,
        cond_seq: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the network output for a batch of noisy mels.

        Args:
            x: ``[B, C, 64, F]`` noisy log-mels; bins and frames multiples of ``config.downsample_factor``.
            t: ``[B]`` timestep indices (long; floats allowed), e.g. in ``[0, 4000)``.
            cond: ``[B, D]`` CLIP embeddings.
            drop_cond: optional ``[B]`` bool; where True the learned ``null_cond`` replaces ``cond``,
                so one batched call serves both branches of classifier-free guidance (and every row of
                ``cond_seq`` too).
            cond_seq: ``[B, N, D]`` (``seq_cond="film"`` only) the CLIP embeddings of N frames, frame i covering
                mel frames ``[i·F/N, (i+1)·F/N)``, any N ≥ 1; None: the constant sequence ``cond``.
        Returns:
            ``[B, 2C, 64, F]`` (``[ε, v]``) when ``learn_sigma``, else ``[B, C, 64, F]``.
        """
        self._check_inputs(x, t, cond, drop_cond, cond_seq)
        cond = cond.to(self.null_cond.dtype)
        if drop_cond is not None:
            cond = torch.where(drop_cond[:, None], self.null_cond[None, :], cond)  # [B, D]
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels))
        emb = emb + self.cond_proj(cond * self.config.cond_dim**0.5)  # [B, 4·base]
        context = None
        if self.config.seq_cond == "film":  # per-time FiLM: emb [B, E, N] (or [B, E] for the constant sequence)
            rows = self._sequence_rows(cond, drop_cond, cond_seq)
            emb = emb + rows[:, 0] if cond_seq is None else emb[:, :, None] + rows.transpose(1, 2)
        elif self.config.seq_cond == "xattn":
            context = self._sequence_rows(cond, drop_cond, cond_seq)

        h = self.conv_in(self.patch_in(x))
        skips = [h]
        for stage in self.down:
            h = self._run(stage, h, emb, context)
            skips.append(h)
        h = self._run(self.middle, h, emb, context)
        for stage in self.up:
            h = self._run(stage, torch.cat([h, skips.pop()], dim=1), emb, context)
        out = self.conv_out(nn.functional.silu(self.norm_out(h)))
        return self.patch_out(out).contiguous()  # NCHW for the caller even from channels-last weights

    def _sequence_rows(self, cond: torch.Tensor, drop_cond: torch.Tensor | None,
                       cond_seq: torch.Tensor | None) -> torch.Tensor:
        """``seq_proj(√D · rows)`` ``[B, N, E]``: the sequence with dropped rows nulled, or for None the one row
        ``cond`` (a constant sequence: exact for film, whose resampling keeps a constant, and cheaper)."""
        seq = cond[:, None] if cond_seq is None else cond_seq.to(self.null_cond.dtype)  # cond: already nulled
        if drop_cond is not None and cond_seq is not None:
            seq = torch.where(drop_cond[:, None, None], self.null_cond, seq)  # [B, N, D]
        return self.seq_proj(seq * self.config.cond_dim**0.5)

    def _run(self, stage: EmbedSequential, h: torch.Tensor, emb: torch.Tensor,
             context: torch.Tensor | None) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(stage, h, emb, context, use_reentrant=False)
        return stage(h, emb, context)

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, drop_cond: torch.Tensor | None,
                      cond_seq: torch.Tensor | None) -> None:
        c, m = self.config, self.config.downsample_factor
        if x.ndim != 4 or x.shape[1] != c.in_channels or x.shape[2] % m or x.shape[3] % m or x.shape[3] < m:
            raise ClipsonicError(f"MelUNet expects x of shape [B, {c.in_channels}, bins, frames] with bins "
                                 f"and frames positive multiples of {m}; got {list(x.shape)}: "
                                 f"crop or pad the mel to a multiple of {m} frames")
        b = x.shape[0]
        if t.shape != (b,):
            raise ClipsonicError(f"MelUNet expects t of shape [{b}] (one timestep per mel); got {list(t.shape)}")
        if cond.shape != (b, c.cond_dim):
            raise ClipsonicError(
                f"MelUNet expects cond of shape [{b}, {c.cond_dim}]; got {list(cond.shape)} "
                f"(a {cond.shape[-1]}-d CLIP embedding needs a model built with cond_dim={cond.shape[-1]})"
            )
        if drop_cond is not None and (drop_cond.shape != (b,) or drop_cond.dtype != torch.bool):
            raise ClipsonicError(f"MelUNet expects drop_cond as a bool tensor of shape [{b}]; got {drop_cond.dtype} {list(drop_cond.shape)}")
        if cond_seq is not None and c.seq_cond == "none":
            raise ClipsonicError("MelUNet got cond_seq but was built with seq_cond='none'; pass cond_seq=None, or "
                                 "train a model that follows frames (clipsonic train --seq-cond film or xattn)")
        if cond_seq is not None and (cond_seq.ndim != 3 or cond_seq.shape[::2] != (b, c.cond_dim)
                                     or not cond_seq.shape[1]):
            raise ClipsonicError(f"MelUNet expects cond_seq of shape [{b}, N, {c.cond_dim}] (N ≥ 1 frame embeddings); "
                                 f"got {list(cond_seq.shape)}")

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters (all, or only those with ``requires_grad``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> MelUNet:
        """Build a preset from :data:`UNET_PRESETS`, e.g. ``MelUNet.from_preset("tiny", cond_dim=512)``."""
        if name not in UNET_PRESETS:
            raise ConfigError(f"unknown MelUNet preset {name!r}; choose one of {sorted(UNET_PRESETS)}")
        try:
            config = dataclasses.replace(UNET_PRESETS[name], **overrides)
        except TypeError as exc:
            known = sorted(f.name for f in dataclasses.fields(MelUNetConfig))
            raise ConfigError(f"MelUNet preset {name!r}: {exc}; known keys are {known}") from None
        return cls(config)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` (no pickle) into ``directory``."""
        directory = Path(directory)
        self.config.save(directory / CONFIG_NAME)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "class": "MelUNet"})

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> MelUNet:
        """Load a directory written by :meth:`save_pretrained`; reads JSON and safetensors only."""
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise ClipsonicError(f"{directory}: no {path.name}; expected a folder written by MelUNet.save_pretrained")
        config = MelUNetConfig.load(config_path)
        model = load_checked(lambda: cls(config), weights_path, config_path, "UNet")
        log.info("MelUNet: %.2fM parameters", model.num_parameters() / 1e6)
        model = model.to(device)
        # NHWC weights make oneDNN's CPU convolutions 5-16 % faster here (the built-in UNet's guided forward of
        # [2, 1, 64, 32] / [2, 1, 64, 128], docs/benchmarks.md); checkpoints still save contiguous. GPUs: unmeasured.
        return model.to(memory_format=torch.channels_last) if model.conv_in.weight.device.type == "cpu" else model
