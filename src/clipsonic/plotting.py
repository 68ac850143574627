"""Mel images for people: axes in seconds and Hz (matplotlib, headless)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from clipsonic.audio import MelConfig, hz_to_mel, mel_to_hz
from clipsonic.files import atomic_output


def mel_band_edges_hz(config: MelConfig) -> np.ndarray:
    """Centre frequency (Hz) of each mel band, Slaney scale as librosa computes it."""
    mels = np.linspace(hz_to_mel(config.fmin), hz_to_mel(config.fmax), config.n_mels + 2)
    return mel_to_hz(mels)[1:-1]


def save_mel_image(logmel: np.ndarray, config: MelConfig, path: str | os.PathLike, title: str = "") -> None:
    """Write a log-mel ``[n_mels, frames]`` as an image (format by suffix; PNG by default) with a time
    axis (s) and a frequency axis (Hz); the file appears whole or not at all."""
    logmel = np.asarray(logmel)
    if logmel.ndim != 2:
        raise ValueError(f"expected a log-mel [n_mels, frames], got shape {logmel.shape}")
    from matplotlib.figure import Figure  # heavy (0.6 s): loaded only to draw

    seconds = logmel.shape[1] * config.hop_length / config.sample_rate
    fig = Figure(figsize=(max(4.0, min(16.0, 2.0 + seconds * 1.5)), 3.2), dpi=100)
    ax = fig.add_subplot()
    im = ax.imshow(
        logmel, origin="lower", aspect="auto", cmap="magma",
        extent=(0.0, seconds, -0.5, config.n_mels - 0.5),
        vmin=config.log_min, vmax=max(config.log_max, float(logmel.max())))
    ticks = np.linspace(0, config.n_mels - 1, 6).round().astype(int)
    ax.set_yticks(ticks, [f"{hz:.0f}" for hz in mel_band_edges_hz(config)[ticks]])
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (Hz)")
    if title:
        ax.set_title(title)
    fig.colorbar(im, ax=ax, label="ln mel")
    fig.tight_layout()
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format=path.suffix[1:] or "png")
