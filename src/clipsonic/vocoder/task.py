"""``train-vocoder``: BigVGAN as a GAN task of the shared training loop (``clipsonic.train.harness``).

One step, as ``bigvgan/train.py``: the discriminators (MPD + MRD by default) on real vs the detached fake,
then the generator on λ_mel · L1 of the log-mels + least-squares adversarial + feature matching (Kong et al.
2020; Lee et al. 2023, λ_mel = 45). The log-mel is the paper's front end (:func:`clipsonic.audio.mel_spectrogram`),
in float32 even under AMP. Validation is BigVGAN's "validation mel spectrogram error", with audio examples in
TensorBoard. The export (``RUN/vocoder``) is the generator with weight norm folded.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from clipsonic.audio import MelConfig, mel_spectrogram
from clipsonic.config import Config, ConfigError, NonNegative, NonNegativeInt, PositiveInt, Range
from clipsonic.data.dataset import read_dataset_info
from clipsonic.files import atomic_directory
from clipsonic.train.checkpoint import Checkpoint
from clipsonic.train.harness import LoopConfig, Progress, Run, Task, fit
from clipsonic.vocoder.data import AudioCorpus, training_batches, validation_audio
from clipsonic.vocoder.discriminators import DiscriminatorConfig, build_discriminator
from clipsonic.vocoder.vocoders import VOCODER_PRESETS, BigVGANConfig, BigVGANVocoder, build_generator

log = logging.getLogger(__name__)


Beta = Annotated[float, Range(0, 1, high_open=True)]  # an Adam beta: [0, 1)


@dataclasses.dataclass(frozen=True)
class VocoderTrainConfig(LoopConfig):
    """The vocoder's ``train`` section (defaults: BigVGAN v1's recipe, sized for one GPU)."""

    RESUMABLE: ClassVar[tuple[str, ...]] = LoopConfig.RESUMABLE + ("num_workers", "audio_examples")

    preset: Literal["paper", "base", "tiny"] = "base"  # generator size: ~120M, ~14M, ~0.1M (CPU) parameters
    max_steps: PositiveInt = 500_000
    log_every: PositiveInt = 10  # a 500k-step run stays a few MB of logs
    grad_clip: NonNegative = 500.0  # bigvgan's clip_grad_norm (per optimizer)
    adam_b1: Beta = 0.8
    adam_b2: Beta = 0.99
    lr_decay: Annotated[float, Range(0, 1, low_open=True)] = 0.9999996  # per step: lr_t = lr · decay^t
    lambda_mel: NonNegative = 45.0
    disc_start_step: NonNegativeInt = 0  # steps trained on the mel loss alone before the GAN starts
    # 8192 samples = 16 frames = 0.5 s, BigVGAN v1's segment; a multiple of the hop (512).
    segment_size: PositiveInt = 8192
    batch_size: PositiveInt = 16  # segments per step and process
    num_val: PositiveInt = 8  # validation clips
    val_segment_size: PositiveInt = 65536  # 4.096 s, one pipeline clip
    audio_examples: NonNegativeInt = 2  # validation clips written to TensorBoard as audio
    num_workers: NonNegativeInt = 2  # threads decoding each batch

    def __post_init__(self) -> None:
        super().__post_init__()  # LoopConfig's checks (max_time)
        if self.segment_size % 512 or self.val_segment_size % 512:
            raise ConfigError("segment sizes must be multiples of 512, "
                              f"got {self.segment_size}/{self.val_segment_size}")

    def lr_at(self, step: int) -> float:
        return super().lr_at(step) * self.lr_decay ** step


@dataclasses.dataclass(frozen=True)
class VocoderRunConfig(Config):  # a vocoder run's config.json sections
    train: VocoderTrainConfig = VocoderTrainConfig()
    generator: BigVGANConfig = VOCODER_PRESETS["base"]
    discriminator: DiscriminatorConfig = DiscriminatorConfig()


# What each preset changes, per section, before the overrides; "generator" is VOCODER_PRESETS[preset].
TRAIN_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {"train": {"batch_size": 32}},
    "base": {},
    # CPU-sized: 1/8-wide discriminators (0.65M parameters instead of ~40M), short segments, lr 1e-3.
    "tiny": {"train": {"segment_size": 4096, "batch_size": 4, "lr": 1e-3, "num_val": 4, "val_segment_size": 16384,
                       "num_workers": 0},
             "discriminator": {"channel_mult": 0.125}},
}


def logmel(wav: torch.Tensor, mel: MelConfig) -> torch.Tensor:
    """``[B, T]`` → float32 log-mel ``[B, n_mels, T // hop]``, outside autocast (the STFT has no bf16 kernel)."""
    with torch.autocast(device_type=wav.device.type, enabled=False):
        return mel_spectrogram(wav.float(), mel)


class VocoderTask(Task):
    name, config_class, export_name = "vocoder", VocoderRunConfig, "vocoder"

    @classmethod
    def resolve_config(cls, overrides: dict[str, dict[str, Any]], data: dict[str, Any]) -> VocoderRunConfig:
        """The preset's sections (``train.preset``, default base) with ``overrides`` over each; from_dict refuses
        an unknown section or preset."""
        preset = overrides.get("train", {}).get("preset", VocoderTrainConfig.preset)
        sections = ({**TRAIN_PRESETS[preset], "generator": VOCODER_PRESETS[preset].to_dict()}
                    if isinstance(preset, str) and preset in VOCODER_PRESETS else {})
        sections.update({name: {**sections.get(name, {}), **values} for name, values in overrides.items()})
        return VocoderRunConfig.from_dict(sections, source="--config/flags")

    def __init__(self, run: Run):
        super().__init__(run)
        cfg, acc = run.config.train, run.accelerator
        self.mel = MelConfig.from_dict(run.data["mel"], source="config.json:data.mel")
        self.corpus = AudioCorpus(run.data["source"], self.mel.sample_rate, cfg.num_val, cfg.seed)
        if acc.is_main_process:
            for key, reason in self.corpus.skipped:
                log.warning("skipped %s: %s", key, reason)
            log.info("%s: %d training items, %d validation, %d skipped, %d shorter than a %d-sample segment "
                     "(zero-padded)", self.corpus.name, self.corpus.num_train, len(self.corpus.val),
                     len(self.corpus.skipped), self.corpus.count_short(cfg.segment_size), cfg.segment_size)
        torch.manual_seed(cfg.seed)  # the same initial weights on every process
        generator = build_generator(run.config.generator, self.mel)
        discriminator = build_discriminator(run.config.discriminator, self.mel.sample_rate)
        optims = [torch.optim.AdamW(m.parameters(), cfg.lr, betas=(cfg.adam_b1, cfg.adam_b2))
                  for m in (generator, discriminator)]
        self.generator, self.discriminator, self.optim_g, self.optim_d = acc.prepare(generator, discriminator, *optims)
        self.val_audio = validation_audio(self.corpus, cfg.val_segment_size, cfg.num_val, cfg.seed)
        self.pos = {"epoch": 0, "offset": 0}
        self.reals_written = False

    def modules(self) -> dict[str, torch.nn.Module]:
        unwrap = self.accelerator.unwrap_model
        return {"generator": unwrap(self.generator), "discriminator": unwrap(self.discriminator)}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.optim_g, "discriminator": self.optim_d}

    def position(self) -> dict[str, Any]:
        return dict(self.pos)

    def batches(self, position: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
        cfg, acc = self.config.train, self.accelerator
        if position is None and acc.is_main_process:  # a new run: where the validation curve starts
            self.run.logs.scalars(0, "val", self.validate(0))
        self.pos = dict(position or self.pos)
        yield from training_batches(self.corpus, cfg.batch_size, cfg.segment_size, cfg.seed, rank=acc.process_index,
                                    world_size=acc.num_processes, num_workers=cfg.num_workers, **self.pos)

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, Any]:
        # bigvgan imports librosa and the hub client (seconds): only once training runs
        from bigvgan.loss import discriminator_loss, feature_loss, generator_loss

        self.pos = {"epoch": batch["epoch"], "offset": batch["offset"]}
        audio = batch["audio"].to(self.accelerator.device)  # [B, T]
        x = logmel(audio, self.mel)  # [B, n_mels, frames]: the generator's input and the mel-loss target
        y, y_hat = audio[:, None], self.generator(x).float()  # [B, 1, T], [B, 1, frames * hop]
        out: dict[str, Any] = {}
        adversarial = step > self.config.train.disc_start_step
        if adversarial:  # 1. the discriminators: real vs the detached fake
            self.optim_d.zero_grad(set_to_none=True)  # drop what the last generator loss left in them
            d_real, d_fake, _, _ = self.discriminator(y, y_hat.detach())
            loss_disc, _, _ = discriminator_loss(d_real, d_fake)
            self.backward(loss_disc)
            out.update(loss_disc=float(loss_disc.detach()), grad_norm_d=self.step_optimizer("discriminator"))
        # 2. the generator: mel L1, plus adversarial and feature matching once the discriminators train
        mel_l1 = F.l1_loss(logmel(y_hat[:, 0], self.mel), x)
        loss_gen = self.config.train.lambda_mel * mel_l1
        if adversarial:
            _, d_fake, fmap_real, fmap_fake = self.discriminator(y, y_hat)
            loss_fm, (loss_adv, _) = feature_loss(fmap_real, fmap_fake), generator_loss(d_fake)
            loss_gen = loss_gen + loss_fm + loss_adv
            out.update(loss_fm=float(loss_fm.detach()), loss_adv=float(loss_adv.detach()))
        self.backward(loss_gen)
        out.update(grad_norm_g=self.step_optimizer("generator"), mel_l1=float(mel_l1.detach()),
                   loss_gen=float(loss_gen.detach()))
        return out

    @torch.no_grad()
    def validate(self, step: int) -> dict[str, float]:
        """Mean L1 between the log-mels of the validation audio and of its resynthesis; audio examples."""
        generator = self.accelerator.unwrap_model(self.generator)
        generator.eval()
        errors, outputs = [], []
        for chunk in self.val_audio.to(self.accelerator.device).split(4):
            target = logmel(chunk, self.mel)
            wav = generator(target).float()[:, 0]
            errors.append((logmel(wav, self.mel) - target).abs().mean(dim=(1, 2)))
            outputs.append(wav.cpu())
        generator.train()
        writer, sr, outputs = self.run.logs.tensorboard, self.mel.sample_rate, torch.cat(outputs)
        for i in range(min(self.config.train.audio_examples, len(outputs))):
            if not self.reals_written:
                writer.add_audio(f"val/real_{i}", self.val_audio[i].clamp(-1, 1), step, sr)
            writer.add_audio(f"val/generated_{i}", outputs[i].clamp(-1, 1), step, sr)
        self.reals_written = True
        return {"mel_l1": float(torch.cat(errors).mean())}

    @classmethod
    def export(cls, run: Run, checkpoint: Checkpoint, out: Path, data: str | os.PathLike | None = None) -> Path:
        mel = MelConfig.from_dict(run.data["mel"], source=f"{run.dir}/config.json:data.mel")
        with atomic_directory(out) as tmp:
            BigVGANVocoder(mel, run.config.generator, checkpoint.module("generator")).save_pretrained(tmp)
        return out


def train_vocoder(data: str | os.PathLike, run_dir: str | os.PathLike,
                  overrides: dict[str, dict[str, Any]] | None = None, *, resume: bool = False,
                  restart: bool = False, progress: Progress | None = None) -> Path:
    """Train (or resume) a BigVGAN on a dataset directory (its flac clips, its mel config) or a folder of audio
    files (the paper's mel config); ``overrides``: sections ``{"train", "generator", "discriminator"}`` over the
    preset's. Returns ``run_dir``; the vocoder is written to ``RUN/vocoder`` at the end."""
    data = Path(data)
    mel = read_dataset_info(data).mel if (data / "dataset.json").is_file() else MelConfig()
    return fit(VocoderTask, run_dir, overrides, data={"source": str(data.resolve()), "mel": mel.to_dict()},
               resume=resume, restart=restart, progress=progress)
