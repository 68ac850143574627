"""Watching a run: a deterministic validation loss and sampled mels with Griffin-Lim audio.

Validation uses the first ``val_samples`` clips of the test split (middle-frame embeddings), at
timesteps spread evenly over [0, T) (bin midpoints) and noise and guidance-drop masks drawn from a generator seeded
the same way every time, so its value moves only when the weights do. Samples condition on the
first validation clip's embedding (the first training clip when there is no test split) and run a
short DDIM chain from fixed noise with the EMA weights.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from clipsonic.audio import denormalize, griffin_lim
from clipsonic.data.dataset import DatasetInfo
from clipsonic.data.loader import load_fixed_samples
from clipsonic.diffusion import GaussianDiffusion
from clipsonic.train.config import TrainConfig

log = logging.getLogger(__name__)

SAMPLE_SEED_OFFSET = 7919  # a different stream from training's, the same every call


def quarter_means(loss: torch.Tensor, t: torch.Tensor, num_timesteps: int) -> dict[str, float]:
    """Mean of per-example ``loss`` [B] by quarter of the timesteps ``t`` [B]: ``loss_q1`` (least noise) … ``loss_q4``."""
    quarter = (t.cpu() * 4) // num_timesteps
    loss = loss.detach().float().cpu()
    return {f"loss_q{q + 1}": float(loss[quarter == q].mean()) for q in range(4) if bool((quarter == q).any())}


class Monitor:
    """Validation losses and progress samples for one run (used on rank 0 only)."""

    def __init__(self, info: DatasetInfo, diffusion: GaussianDiffusion, config: TrainConfig, device: torch.device):
        self.info, self.diffusion, self.config, self.device = info, diffusion, config, device
        self.val = None
        if config.val_every and info.num_clips("test") > 0:
            self.val = load_fixed_samples(info, "test", config.val_samples)
            n = len(self.val["keys"])
            gen = torch.Generator().manual_seed(config.seed)
            # midpoints of N equal bins of [0, T): spread over all t, never the extreme t = T - 1
            self.val["t"] = ((torch.arange(n) + 0.5) * diffusion.num_timesteps / n).long()  # [N]
            self.val["noise"] = torch.randn(self.val["mel"].shape, generator=gen)  # [N, 1, 64, F]
        elif config.val_every:
            log.warning("%s has no test split: no validation loss (re-run preprocess with --test-fraction)", info.root)
        source = self.val if self.val is not None else load_fixed_samples(info, "train", 1)
        self.sample_cond = source["cond"][:1]  # [1, D]
        self.sample_caption = f"{source['keys'][0]} (label: {source['labels'][0]})"
        self.frames = source["mel"].shape[-1]

    @torch.no_grad()
    def validation_losses(self, model: nn.Module, autocast) -> dict[str, float]:
        """Mean loss terms over the validation clips, and the loss by quarter of t (eval mode)."""
        if self.val is None:
            return {}
        was_training = model.training
        model.eval()
        gen = torch.Generator().manual_seed(self.config.seed + 1)
        parts: dict[str, list[torch.Tensor]] = {}
        for lo in range(0, len(self.val["keys"]), self.config.batch_size):
            sl = slice(lo, lo + self.config.batch_size)
            with autocast():
                terms = self.diffusion.training_losses(
                    model, self.val["mel"][sl].to(self.device), self.val["cond"][sl].to(self.device),
                    t=self.val["t"][sl].to(self.device), noise=self.val["noise"][sl].to(self.device), generator=gen)
            for name in ("loss", "mse", "vlb"):
                if name in terms:
                    parts.setdefault(name, []).append(terms[name].detach().float().cpu())
        model.train(was_training)
        per_example = {name: torch.cat(chunks) for name, chunks in parts.items()}  # each [N]
        out = {name: float(v.mean()) for name, v in per_example.items()}
        out.update(quarter_means(per_example["loss"], self.val["t"], self.diffusion.num_timesteps))
        return out

    @torch.no_grad()
    def sample(self, model: nn.Module, out_dir: Path, step: int) -> tuple[Path, np.ndarray]:
        """Sample one mel with ``model`` (the EMA), write ``out_dir/step-NNNNNNN.png`` and ``.wav``.

        Returns the image path and the Griffin-Lim waveform ``[samples]`` float32.
        """
        import soundfile

        from clipsonic.plotting import save_mel_image

        was_training = model.training
        model.eval()
        gen = torch.Generator().manual_seed(self.config.seed + SAMPLE_SEED_OFFSET)
        x0 = self.diffusion.sample(model, (1, 1, self.info.mel.n_mels, self.frames), self.sample_cond.to(self.device),
                                   sampler="ddim", steps=min(self.config.sample_steps, self.diffusion.num_timesteps),
                                   guidance_scale=self.config.guidance_scale, generator=gen)
        model.train(was_training)
        logmel = denormalize(x0[0, 0].float().cpu(), self.info.mel)  # [64, F]
        png = out_dir / f"step-{step:07d}.png"
        save_mel_image(logmel.numpy(), self.info.mel, png, title=f"step {step}: {self.sample_caption}")
        wav = griffin_lim(logmel, self.info.mel).numpy().astype(np.float32)
        soundfile.write(str(png.with_suffix(".wav")), wav, self.info.mel.sample_rate, subtype="PCM_16")
        return png, wav
