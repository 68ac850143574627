"""VGGish's input features, exactly as the reference (tensorflow/models research/audioset/vggish).

16 kHz mono → frames of 25 ms (400 samples) every 10 ms (160), no padding, periodic Hann window,
|rfft| with 512 points → 64 mel bands on HTK's mel scale (1127·ln(1 + f/700)) between 125 and
7500 Hz with triangles linear in *mel*, the DC bin excluded → ln(mel + 0.01) → non-overlapping
patches of 96 frames (0.96 s): ``[num_patches, 96, 64]``. The reference reads 16-bit PCM as
``int16 / 32768``, i.e. floats in [-1, 1] as used here.
"""

from __future__ import annotations

import functools

import numpy as np

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 400  # round(16000 · 0.025)
HOP_SAMPLES = 160  # round(16000 · 0.010)
FFT_LENGTH = 512  # next power of two ≥ the window
NUM_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
PATCH_FRAMES = 96  # round(0.96 s · 100 frames/s), also the hop between patches
#: shortest input giving one patch: 95 hops + one window
MIN_SAMPLES = (PATCH_FRAMES - 1) * HOP_SAMPLES + WINDOW_SAMPLES


def hertz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: ``1127 · ln(1 + f / 700)``."""
    return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def frame(data: np.ndarray, window: int, hop: int) -> np.ndarray:
    """Non-padded frames along axis 0: ``[N, ...]`` → ``[1 + (N − window) // hop, window, ...]``."""
    count = 1 + (data.shape[0] - window) // hop
    if count < 1:
        return np.zeros((0, window) + data.shape[1:], dtype=data.dtype)
    index = np.arange(window)[None, :] + hop * np.arange(count)[:, None]
    return data[index]


def periodic_hann(length: int) -> np.ndarray:
    """The "periodic" Hann window ``0.5 − 0.5 cos(2π n / N)`` (not the symmetric one)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi / length * np.arange(length))


def stft_magnitude(wav: np.ndarray) -> np.ndarray:
    """``[frames, 257]`` magnitudes of the 512-point rfft of Hann-windowed 400-sample frames."""
    frames = frame(np.asarray(wav, dtype=np.float64), WINDOW_SAMPLES, HOP_SAMPLES)
    return np.abs(np.fft.rfft(frames * periodic_hann(WINDOW_SAMPLES), FFT_LENGTH))


@functools.lru_cache(maxsize=1)
def mel_matrix() -> np.ndarray:
    """``[257, 64]`` HTK-style triangular filters, linear in mel, DC bin zeroed (the reference's)."""
    bins_mel = hertz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, FFT_LENGTH // 2 + 1))
    edges = np.linspace(hertz_to_mel(MEL_MIN_HZ), hertz_to_mel(MEL_MAX_HZ), NUM_BANDS + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]  # [64] each
    rising = (bins_mel[:, None] - lower) / (centre - lower)
    falling = (upper - bins_mel[:, None]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0  # HTK excludes the DC bin
    weights.setflags(write=False)
    return weights


def log_mel(wav: np.ndarray) -> np.ndarray:
    """``[frames, 64]`` ln(mel + 0.01) of 16 kHz audio, ``frames = 1 + (samples − 400) // 160``."""
    return np.log(stft_magnitude(wav) @ mel_matrix() + LOG_OFFSET)


def waveform_to_patches(wav: np.ndarray) -> np.ndarray:
    """``[num_patches, 96, 64]`` log-mel patches of 16 kHz audio (``[0, 96, 64]`` when shorter than 0.975 s)."""
    return frame(log_mel(wav), PATCH_FRAMES, PATCH_FRAMES)
