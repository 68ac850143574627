"""One BigVGAN training step and the validation metric, as in ``bigvgan/train.py``.

Losses (Kong et al. 2020, HiFi-GAN; Lee et al. 2023, BigVGAN), from ``bigvgan.loss``:
- discriminator: least-squares GAN, Σ_k E[(1 − D_k(y))²] + E[D_k(ŷ)²];
- generator: Σ_k E[(1 − D_k(ŷ))²] + feature matching (2 · Σ L1 of every feature map)
  + λ_mel · L1(log-mel(ŷ), log-mel(y)) with λ_mel = 45.
The log-mel is the paper's front end (:func:`clipsonic.audio.mel_spectrogram`), computed in
float32 even under AMP (the STFT has no bf16 kernel, and the loss wants full precision).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from clipsonic.audio import MelConfig, mel_spectrogram


@dataclasses.dataclass
class GANModules:
    """What a step touches; the modules may be wrapped by accelerate (DDP, autocast)."""

    generator: torch.nn.Module
    discriminator: torch.nn.Module
    optim_g: torch.optim.Optimizer
    optim_d: torch.optim.Optimizer
    accelerator: Any


def logmel(wav: torch.Tensor, mel: MelConfig) -> torch.Tensor:
    """``[B, T]`` → float32 log-mel ``[B, n_mels, T // hop]``, outside autocast."""
    with torch.autocast(device_type=wav.device.type, enabled=False):
        return mel_spectrogram(wav.float(), mel)


def _clip_and_step(m: GANModules, optimizer: torch.optim.Optimizer, module: torch.nn.Module,
                   loss: torch.Tensor, max_norm: float) -> float:
    m.accelerator.backward(loss)
    m.accelerator.unscale_gradients(optimizer=optimizer)  # no-op unless fp16
    norm = torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)
    optimizer.step()
    return float(norm)


def train_step(m: GANModules, audio: torch.Tensor, mel: MelConfig, *, lambda_mel: float,
               clip_grad_norm: float, train_discriminator: bool) -> dict[str, float]:
    """One discriminator update then one generator update on real segments ``audio [B, T]``.

    Returns the losses as floats (``mel_l1`` is the unweighted L1; the caller checks finiteness).
    """
    from bigvgan.loss import discriminator_loss, feature_loss, generator_loss

    x = logmel(audio, mel)  # [B, n_mels, frames]: the generator's input and the mel-loss target
    y = audio[:, None]  # [B, 1, T]
    y_hat = m.generator(x).float()  # [B, 1, frames * hop]
    logs: dict[str, float] = {}

    # 1. Discriminator: real vs the detached fake.
    if train_discriminator:
        m.optim_d.zero_grad(set_to_none=True)
        d_real, d_fake, _, _ = m.discriminator(y, y_hat.detach())
        loss_d, _, _ = discriminator_loss(d_real, d_fake)
        logs["grad_norm_d"] = _clip_and_step(m, m.optim_d, m.discriminator, loss_d, clip_grad_norm)
        logs["loss_disc"] = float(loss_d.detach())

    # 2. Generator: mel L1 (+ adversarial and feature matching once the discriminator trains).
    m.optim_g.zero_grad(set_to_none=True)
    loss_mel = F.l1_loss(logmel(y_hat[:, 0], mel), x)
    loss_g = lambda_mel * loss_mel
    if train_discriminator:
        _, d_fake, fmap_real, fmap_fake = m.discriminator(y, y_hat)
        loss_fm = feature_loss(fmap_real, fmap_fake)
        loss_adv, _ = generator_loss(d_fake)
        loss_g = loss_g + loss_fm + loss_adv
        logs["loss_fm"], logs["loss_adv"] = float(loss_fm.detach()), float(loss_adv.detach())
    logs["grad_norm_g"] = _clip_and_step(m, m.optim_g, m.generator, loss_g, clip_grad_norm)
    logs["mel_l1"], logs["loss_gen"] = float(loss_mel.detach()), float(loss_g.detach())
    return logs


@torch.no_grad()
def validate(generator: torch.nn.Module, audio: torch.Tensor, mel: MelConfig,
             batch_size: int = 4) -> tuple[float, torch.Tensor]:
    """Mean L1 between the log-mels of ``audio [V, T]`` and of its resynthesis; and the resynthesis ``[V, T]``.

    This is BigVGAN's "validation mel spectrogram error" on our front end.
    """
    was_training = generator.training
    generator.eval()
    errors, outputs = [], []
    for chunk in audio.split(batch_size):
        target = logmel(chunk, mel)
        wav = generator(target).float()[:, 0]
        errors.append((logmel(wav, mel) - target).abs().mean(dim=(1, 2)))
        outputs.append(wav)
    generator.train(was_training)
    return float(torch.cat(errors).mean()), torch.cat(outputs)
