"""Mel → waveform: Griffin-Lim and BigVGAN (Lee et al. 2023) behind one interface, and their folders.

A vocoder folder (a pipeline's ``vocoder/``, a train-vocoder run's ``RUN/vocoder``) is ``config.json``
(``"format": "clipsonic-vocoder"``, ``"version"``, ``"type"``, ``"mel"``, the component's settings) plus,
for BigVGAN, ``bigvgan_generator.safetensors`` (weight norm removed); loading it runs no code from it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import torch
from safetensors.torch import save_file

from clipsonic import __version__
from clipsonic.audio import MelConfig, griffin_lim, mel_spectrogram
from clipsonic.config import Config, Range, Seed
from clipsonic.errors import ClipsonicError
from clipsonic.export import read_model_index, set_component
from clipsonic.files import atomic_output, inside, read_json, read_versioned_json, write_json_atomic
from clipsonic.media import load_audio, save_audio
from clipsonic.models.weights import check_fits, load_into

FORMAT, VERSION = "clipsonic-vocoder", 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "bigvgan_generator.safetensors"


@dataclasses.dataclass(frozen=True)
class GriffinLimConfig(Config):
    """Griffin-Lim settings (32 iterations: the knee of quality vs time on 2 CPU cores)."""

    n_iter: Annotated[int, Range(0, 10_000)] = 32  # beyond a few hundred nothing audible changes
    # Perraudin et al. 2013: 0.99 converges in far fewer iterations than plain Griffin-Lim.
    momentum: Annotated[float, Range(0, 1, high_open=True)] = 0.99
    seed: Seed = 0  # the initial random phase: the same mel always gives the same audio


@dataclasses.dataclass(frozen=True)
class BigVGANConfig(Config):
    """Generator hyper-parameters, named as in the bigvgan package's config files.

    Each mel frame becomes ``prod(upsample_rates)`` samples, which must be the hop; a transposed
    conv with kernel ``k`` and stride ``u`` needs ``k - u`` even to upsample exactly ``u`` times."""

    upsample_rates: tuple[int, ...] = (8, 8, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 4, 4, 4)
    upsample_initial_channel: int = 512
    # "1": AMPBlock1 (two convs per dilation, as all released BigVGANs); "2": one conv per dilation.
    resblock: Literal["1", "2"] = "1"
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    # Snake-beta: x + 1/β sin²(αx), the periodic inductive bias that makes BigVGAN generalise.
    activation: Literal["snake", "snakebeta"] = "snakebeta"
    snake_logscale: bool = True
    use_tanh_at_final: bool = True
    use_bias_at_final: bool = True

    def __post_init__(self) -> None:
        # JSON has no tuples and from_dict converts only the outer list
        object.__setattr__(self, "resblock_dilation_sizes", tuple(map(tuple, self.resblock_dilation_sizes)))
        if (not self.upsample_rates or len(self.upsample_rates) != len(self.upsample_kernel_sizes)
                or len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes)):
            raise ValueError("need as many upsample kernels as rates (at least one), "
                             "and of resblock dilations as kernels")
        for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes, strict=True):
            if u < 1 or k < u or (k - u) % 2:
                raise ValueError(f"upsample kernel {k} for rate {u}: need k >= u and k - u even")

    @property
    def hop_length(self) -> int:
        return math.prod(self.upsample_rates)


# Generators for 16 kHz / 64 bands / hop 512 (every product of upsample_rates is 512); paper and base keep the
# default resblocks (kernels 3, 7, 11, dilations 1, 3, 5).
VOCODER_PRESETS: dict[str, BigVGANConfig] = {
    # BigVGAN (v1 large / v2) width: 1536 channels, six stages [8,4,2,2,2,2]; ~120M parameters.
    "paper": BigVGANConfig((8, 4, 2, 2, 2, 2), (16, 8, 4, 4, 4, 4), 1536),
    # BigVGAN-base width (512 channels) with its [8,8,2,2] stages plus one more 2 for hop 512; ~14M.
    "base": BigVGANConfig((8, 8, 2, 2, 2), (16, 16, 4, 4, 4), 512),
    # CPU tests and demos: three x8 stages, one resblock kernel; ~0.1M, ~25x real time on 2 cores.
    "tiny": BigVGANConfig((8, 8, 8), (16, 16, 16), 64, resblock_kernel_sizes=(3,),
                          resblock_dilation_sizes=((1, 3, 5),)),
}


def build_generator(config: BigVGANConfig, mel: MelConfig) -> torch.nn.Module:
    """A fresh ``bigvgan.bigvgan.BigVGAN`` with weight norm (the training form) for ``mel``, with the pure-PyTorch
    anti-aliased activations (the CUDA kernel needs a compiler at run time and cannot train)."""
    if config.hop_length != mel.hop_length:
        raise ClipsonicError(f"generator upsample_rates {list(config.upsample_rates)} multiply to {config.hop_length} "
                             f"but the mel hop is {mel.hop_length}; pick upsample rates whose product is the hop")
    # bigvgan imports librosa and the hub client (seconds): only when a generator is built
    from bigvgan.bigvgan import BigVGAN
    from bigvgan.env import AttrDict

    with warnings.catch_warnings():  # bigvgan uses the deprecated torch.nn.utils.weight_norm
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        h = AttrDict({**config.to_dict(), "num_mels": mel.n_mels, "use_cuda_kernel": False})
        return BigVGAN(h, use_cuda_kernel=False)


class Vocoder:
    """Log-mel ``[B, n_mels, F]`` → float32 waveform ``[B, F * hop]`` for the mel config it was built for.

    A BigVGAN trained on other mels turns them into noise without any error, so the mel config
    travels with every vocoder and :meth:`check_compatible` refuses a mismatch."""

    type_name: ClassVar[str]  # config.json's "type"
    config_key: ClassVar[str]  # config.json's entry holding ``self.config``
    config_class: ClassVar[type[Config]]
    files: ClassVar[dict[str, str]] = {}  # config.json's entries naming the folder's other files

    def __init__(self, mel_config: MelConfig, config: Config) -> None:
        self.mel_config, self.config = mel_config, config
        self.device = torch.device("cpu")

    @property
    def sample_rate(self) -> int:
        return self.mel_config.sample_rate

    def to(self, device: str | torch.device) -> Vocoder:
        self.device = torch.device(device)
        return self

    def check_compatible(self, mel_config: MelConfig, what: str = "the pipeline") -> None:
        """Raise naming both configs unless ``mel_config`` makes the same log-mels as ours (``log_min``/``log_max``
        only scale the diffusion space, so they are not compared)."""
        diffs = self.mel_config.mismatch(mel_config.replace(log_min=self.mel_config.log_min,
                                                            log_max=self.mel_config.log_max))
        if diffs:
            raise ClipsonicError(
                f"this {self.type_name} vocoder was built for a different mel config than {what} uses "
                f"({'; '.join(diffs)}; vocoder vs {what}); train a vocoder on {what}'s mel config "
                "(clipsonic train-vocoder) or use --griffin-lim")

    def __call__(self, logmel: torch.Tensor) -> torch.Tensor:
        """``[B, n_mels, F]`` (or ``[n_mels, F]``) → ``[B, F * hop]`` (or ``[F * hop]``) on the input's device."""
        batch = logmel[None] if logmel.dim() == 2 else logmel
        if batch.dim() != 3 or batch.shape[1] != self.mel_config.n_mels:
            raise ClipsonicError(f"expected a log-mel [B, {self.mel_config.n_mels}, frames], "
                                 f"got shape {tuple(logmel.shape)}")
        if not torch.isfinite(batch).all():
            raise ClipsonicError("the log-mel contains NaN or infinite values; check the model that produced it")
        with torch.inference_mode():
            wav = self._synthesize(batch.to(self.device, torch.float32)).float().to(logmel.device)
        return wav[0] if logmel.dim() == 2 else wav

    def _synthesize(self, logmel: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` into ``directory``; returns it."""
        directory = Path(directory)
        write_json_atomic(directory / CONFIG_NAME, {
            "format": FORMAT, "version": VERSION, "type": self.type_name, "mel": self.mel_config.to_dict(),
            self.config_key: self.config.to_dict(), **self.files, "clipsonic_version": __version__})
        return directory


class GriffinLimVocoder(Vocoder):
    """Phase reconstruction (:func:`clipsonic.audio.griffin_lim`), no training: the fallback of a pipeline without
    a trained BigVGAN (audible but phasey; the paper's numbers use BigVGAN)."""

    type_name, config_key, config_class = "griffin-lim", "griffin_lim", GriffinLimConfig
    config: GriffinLimConfig

    def __init__(self, mel_config: MelConfig | None = None, config: GriffinLimConfig | None = None) -> None:
        super().__init__(mel_config or MelConfig(), config or GriffinLimConfig())

    def _synthesize(self, logmel: torch.Tensor) -> torch.Tensor:
        return griffin_lim(logmel, self.mel_config, **self.config.to_dict())  # n_iter, momentum, seed


class BigVGANVocoder(Vocoder):
    """A BigVGAN generator in inference form (weight norm folded, eval mode) with its mel config."""

    type_name, config_key, config_class = "bigvgan", "generator", BigVGANConfig
    files = {"weights": WEIGHTS_NAME}
    config: BigVGANConfig

    def __init__(self, mel_config: MelConfig, config: BigVGANConfig,
                 state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """``state_dict``: trained weights in the training form (weight norm on); None: random."""
        super().__init__(mel_config, config)
        generator = build_generator(config, mel_config)
        if state_dict is not None:
            generator.load_state_dict(state_dict)
        for m in generator.modules():
            if hasattr(m, "weight_g"):
                torch.nn.utils.remove_weight_norm(m)
        self.generator = generator.eval().requires_grad_(False)

    @classmethod
    def from_preset(cls, name: str, mel_config: MelConfig | None = None) -> BigVGANVocoder:
        """Randomly initialised vocoder of a preset (``paper``, ``base``, ``tiny``)."""
        if name not in VOCODER_PRESETS:
            raise ClipsonicError(f"unknown vocoder preset {name!r}; choose one of {sorted(VOCODER_PRESETS)}")
        return cls(mel_config or MelConfig(), VOCODER_PRESETS[name])

    def to(self, device: str | torch.device) -> BigVGANVocoder:
        self.generator.to(device)
        return super().to(device)

    def _synthesize(self, logmel: torch.Tensor) -> torch.Tensor:
        return self.generator(logmel)[:, 0]  # [B, 1, F * hop] → [B, F * hop]

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        state = {k: v.detach().cpu().contiguous() for k, v in self.generator.state_dict().items()}
        with atomic_output(Path(directory) / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt", "weight_norm": "removed"})
        return super().save_pretrained(directory)


def resolve_vocoder_dir(path: str | os.PathLike) -> Path:
    """The vocoder folder for ``path``: itself, or ``path/vocoder`` for a training run."""
    path = Path(path)
    for candidate in (path, path / "vocoder"):
        data = read_json(candidate / CONFIG_NAME, "vocoder config") if (candidate / CONFIG_NAME).is_file() else None
        if isinstance(data, dict) and "type" in data:
            return candidate
    if not path.exists():
        raise ClipsonicError(f"{path}: no such vocoder directory")
    raise ClipsonicError(f"{path} is not a vocoder directory (no config.json with a \"type\" here or in "
                         f"{path / 'vocoder'}); train one with `clipsonic train-vocoder`")


def load_vocoder(path: str | os.PathLike, *, device: str | torch.device | None = None,
                 mel_config: MelConfig | None = None) -> Vocoder:
    """A vocoder folder (or a training run's ``vocoder/``); with ``mel_config``, refuse one built for other mels."""
    directory = resolve_vocoder_dir(path)
    source = str(directory / CONFIG_NAME)
    data = read_versioned_json(source, FORMAT, VERSION, unversioned=1)  # version 1 had no format field
    if "mel" not in data:
        raise ClipsonicError(f"{source}: no \"mel\" entry; re-export the vocoder")
    kinds: dict[str, type[Vocoder]] = {cls.type_name: cls for cls in (BigVGANVocoder, GriffinLimVocoder)}
    if not isinstance(data["type"], str) or data["type"] not in kinds:
        raise ClipsonicError(f"{source}: unknown vocoder type {data['type']!r} (this clipsonic knows "
                             f"{', '.join(map(repr, kinds))})")
    cls = kinds[data["type"]]
    mel = MelConfig.from_dict(data["mel"], source=f"{source}:mel")
    config = cls.config_class.from_dict(data.get(cls.config_key, {}), source=f"{source}:{cls.config_key}")
    if cls is BigVGANVocoder:
        weights = inside(directory, str(data.get("weights", WEIGHTS_NAME)), f"{source}: weights file")
        if not weights.is_file():
            raise ClipsonicError(f"{directory}: weights file {weights.name} is missing; re-export the vocoder")
        check_fits(lambda: BigVGANVocoder(mel, config).generator, weights, source, "vocoder")
    vocoder = cls(mel, config)
    if isinstance(vocoder, BigVGANVocoder):
        load_into(vocoder.generator, weights, "vocoder")
    if mel_config is not None:
        vocoder.check_compatible(mel_config)
    return vocoder.to(device) if device is not None else vocoder


def attach_vocoder(pipeline_dir: str | os.PathLike, vocoder_dir: str | os.PathLike) -> Path:
    """Copy a vocoder (folder or run) into ``pipeline_dir/vocoder`` once it loads and fits the pipeline's mels."""
    source = resolve_vocoder_dir(vocoder_dir)
    load_vocoder(source, mel_config=read_model_index(pipeline_dir, complete=False).mel)
    return set_component(pipeline_dir, "vocoder", lambda folder: shutil.copytree(source, folder, dirs_exist_ok=True))


def vocode_file(input_path: str | os.PathLike, output_path: str | os.PathLike, vocoder: Vocoder,
                start: float | None = None, duration: float | None = None) -> float:
    """Audio/video file → log-mel → ``vocoder`` → audio file; returns the seconds written: the input's rounded
    down to whole hops (frame t covers ``[t*hop, (t+1)*hop)``)."""
    mel = vocoder.mel_config
    audio = load_audio(input_path, sample_rate=mel.sample_rate, start=start, duration=duration)
    if audio.shape[-1] <= mel.n_fft // 2:
        raise ClipsonicError(f"{input_path}: only {audio.shape[-1]} samples of audio; need more than {mel.n_fft // 2}")
    frames = audio.shape[-1] // mel.hop_length
    wav = vocoder(mel_spectrogram(torch.from_numpy(audio[: frames * mel.hop_length]), mel))
    save_audio(output_path, wav.cpu().numpy(), mel.sample_rate)
    return wav.shape[-1] / mel.sample_rate
