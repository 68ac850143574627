"""BigVGAN (Lee et al. 2023) for the paper's 16 kHz / 64-band / hop-512 mels.

The generator is the ``bigvgan`` package's own class, built from an ``AttrDict`` of
hyper-parameters (our frozen :class:`BigVGANConfig`), always with the pure-PyTorch anti-aliased
activations (``use_cuda_kernel=False``: the CUDA kernel needs a compiler at run time and cannot
train). No released BigVGAN speaks 16 kHz / 64 bands, so there is no hub loading here: a
vocoder directory is written by :meth:`BigVGANVocoder.save_pretrained` or by training.

Upsampling: the product of ``upsample_rates`` must equal the hop (512), since each mel frame
becomes ``hop`` samples. Each transposed conv uses kernel ``k`` and stride ``u`` with even
``k - u`` so that the output is exactly ``u`` times longer.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path
from typing import Any

import torch

from clipsonic.audio import MelConfig
from clipsonic.config import Config
from clipsonic.vocoder.base import Vocoder, VocoderError

WEIGHTS_NAME = "bigvgan_generator.safetensors"


def _nested_tuple(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_nested_tuple(v) for v in value)
    return value


@dataclasses.dataclass(frozen=True)
class BigVGANConfig(Config):
    """Generator hyper-parameters, named as in the bigvgan package's config files."""

    upsample_rates: tuple[int, ...] = (8, 8, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 4, 4, 4)
    upsample_initial_channel: int = 512
    # "1": AMPBlock1 (two convs per dilation, as all released BigVGANs); "2": one conv per dilation.
    resblock: str = "1"
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    # Snake-beta: x + 1/β sin²(αx), the periodic inductive bias that makes BigVGAN generalise.
    activation: str = "snakebeta"
    snake_logscale: bool = True
    use_tanh_at_final: bool = True
    use_bias_at_final: bool = True

    def __post_init__(self) -> None:
        for name in ("upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes", "resblock_dilation_sizes"):
            object.__setattr__(self, name, _nested_tuple(getattr(self, name)))
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes) or not self.upsample_rates:
            raise ValueError("upsample_rates and upsample_kernel_sizes must be non-empty and of equal length")
        for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes, strict=False):
            if u < 1 or k < u or (k - u) % 2:
                raise ValueError(f"upsample kernel {k} for rate {u}: need k >= u and k - u even")
        if self.upsample_initial_channel % (2 ** len(self.upsample_rates)):
            raise ValueError(
                f"upsample_initial_channel {self.upsample_initial_channel} must be divisible by "
                f"2**{len(self.upsample_rates)} (channels halve at every upsampling stage)"
            )
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("resblock_kernel_sizes and resblock_dilation_sizes must have equal length")
        if self.resblock not in ("1", "2"):
            raise ValueError(f"resblock must be '1' or '2', got {self.resblock!r}")
        if self.activation not in ("snake", "snakebeta"):
            raise ValueError(f"activation must be 'snake' or 'snakebeta', got {self.activation!r}")

    @property
    def hop_length(self) -> int:
        return math.prod(self.upsample_rates)

    def hparams(self, num_mels: int) -> Any:
        """The bigvgan package's ``AttrDict`` for this generator on ``num_mels`` bands."""
        from bigvgan.env import AttrDict

        return AttrDict({**self.to_dict(), "num_mels": num_mels, "use_cuda_kernel": False})


_RESBLOCKS = dict(resblock_kernel_sizes=(3, 7, 11), resblock_dilation_sizes=((1, 3, 5),) * 3)

# Generators for 16 kHz / 64 bands / hop 512 (every product of upsample_rates is 512).
VOCODER_PRESETS: dict[str, BigVGANConfig] = {
    # BigVGAN (v1 large / v2) width: 1536 channels, six stages [8,4,2,2,2,2]; ~120M parameters.
    "paper": BigVGANConfig((8, 4, 2, 2, 2, 2), (16, 8, 4, 4, 4, 4), 1536, **_RESBLOCKS),
    # BigVGAN-base width (512 channels) with its [8,8,2,2] stages plus one more 2 for hop 512; ~14M.
    "base": BigVGANConfig((8, 8, 2, 2, 2), (16, 16, 4, 4, 4), 512, **_RESBLOCKS),
    # CPU tests and demos: three x8 stages, one resblock kernel; ~0.1M, ~25x real time on 2 cores.
    "tiny": BigVGANConfig((8, 8, 8), (16, 16, 16), 64, resblock_kernel_sizes=(3,),
                          resblock_dilation_sizes=((1, 3, 5),)),
}


def preset_config(name: str) -> BigVGANConfig:
    """The generator config of a preset, or :class:`VocoderError` listing the presets."""
    if name not in VOCODER_PRESETS:
        raise VocoderError(f"unknown vocoder preset {name!r}; choose one of {sorted(VOCODER_PRESETS)}")
    return VOCODER_PRESETS[name]


def check_generator_fits(config: BigVGANConfig, mel: MelConfig) -> None:
    """The generator must turn one mel frame into exactly ``mel.hop_length`` samples."""
    if config.hop_length != mel.hop_length:
        raise VocoderError(
            f"generator upsample_rates {list(config.upsample_rates)} multiply to {config.hop_length} "
            f"but the mel hop is {mel.hop_length}; pick upsample rates whose product is the hop"
        )


def build_generator(config: BigVGANConfig, num_mels: int) -> torch.nn.Module:
    """A fresh ``bigvgan.bigvgan.BigVGAN`` with weight norm (the training form)."""
    from bigvgan.bigvgan import BigVGAN

    with warnings.catch_warnings():
        # torch.nn.utils.weight_norm is deprecated in favour of parametrizations; bigvgan uses it.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        return BigVGAN(config.hparams(num_mels), use_cuda_kernel=False)


def strip_weight_norm(module: torch.nn.Module) -> torch.nn.Module:
    """Fold every weight-norm (g, v) pair into a plain weight, in place (the inference form)."""
    for m in module.modules():
        if hasattr(m, "weight_g") and hasattr(m, "weight_v"):
            torch.nn.utils.remove_weight_norm(m)
    return module


def has_weight_norm(module: torch.nn.Module) -> bool:
    return any(hasattr(m, "weight_g") for m in module.modules())


class BigVGANVocoder(Vocoder):
    """A BigVGAN generator (weight norm removed, eval mode) with its mel config."""

    type_name = "bigvgan"

    def __init__(self, mel_config: MelConfig, config: BigVGANConfig,
                 generator: torch.nn.Module | None = None) -> None:
        """``generator``: trained weights to use (copied, so a training model is left as it is);
        ``None`` builds randomly initialised weights."""
        super().__init__(mel_config)
        check_generator_fits(config, mel_config)
        self.config = config
        trained, generator = generator, build_generator(config, mel_config.n_mels)
        if trained is not None:
            # a state-dict copy, not deepcopy: a weight-normed module that has run forward holds
            # non-leaf weight tensors, which deepcopy refuses
            generator.load_state_dict(trained.state_dict())
        self.generator = strip_weight_norm(generator).eval().requires_grad_(False)

    @classmethod
    def from_preset(cls, name: str, mel_config: MelConfig | None = None) -> BigVGANVocoder:
        """Randomly initialised vocoder of a preset (``paper``, ``base``, ``tiny``)."""
        return cls(mel_config or MelConfig(), preset_config(name))

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def to(self, device: str | torch.device) -> BigVGANVocoder:
        self.generator.to(device)
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.generator.parameters())

    def _synthesize(self, logmel: torch.Tensor) -> torch.Tensor:
        return self.generator(logmel)[:, 0]  # [B, 1, frames * hop] → [B, frames * hop]

    def component_config(self) -> dict[str, Any]:
        return {"generator": self.config.to_dict(), "weights": WEIGHTS_NAME}

    def _save_weights(self, directory: Path) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.generator.state_dict().items()}
        tmp = directory / f".{WEIGHTS_NAME}.tmp"
        save_file(state, str(tmp), metadata={"format": "pt", "weight_norm": "removed"})
        tmp.replace(directory / WEIGHTS_NAME)

    @classmethod
    def from_config_dict(cls, data: dict[str, Any], directory: Path, source: str = "config.json") -> BigVGANVocoder:
        from safetensors.torch import load_file

        mel = MelConfig.from_dict(data["mel"], source=f"{source}:mel")
        config = BigVGANConfig.from_dict(data.get("generator", {}), source=f"{source}:generator")
        weights = directory / data.get("weights", WEIGHTS_NAME)
        if not weights.is_file():
            raise VocoderError(f"{directory}: weights file {weights.name} is missing; re-export the vocoder")
        vocoder = cls(mel, config)
        try:
            vocoder.generator.load_state_dict(load_file(str(weights)), strict=True)
        except RuntimeError as exc:
            raise VocoderError(f"{weights} does not fit the generator in {source}: {str(exc)[:300]}") from None
        return vocoder
