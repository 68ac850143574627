import math

import numpy as np
import pytest
import torch
from bigvgan.meldataset import mel_spectrogram as bigvgan_mel

from clipsonic.audio import MelConfig, denormalize, griffin_lim, mel_spectrogram, normalize
from clipsonic.config import ConfigError

SR = 16000


def tone(freq, seconds=4.096, amp=0.5, sr=SR):
    t = np.arange(int(round(seconds * sr))) / sr
    return torch.tensor(amp * np.sin(2 * np.pi * freq * t), dtype=torch.float32)


def real_signals():
    rng = np.random.default_rng(0)
    n = 65536
    t = np.arange(n) / SR
    chirp = 0.4 * np.sin(2 * np.pi * (100 * t + 900 * t**2))
    harmonic = sum(0.2 / k * np.sin(2 * np.pi * 220 * k * t) for k in range(1, 8))
    gated_noise = rng.normal(0, 0.2, n) * (np.sin(2 * np.pi * 3 * t) > 0)
    silence_then_click = np.zeros(n)
    silence_then_click[30000:30050] = 0.9
    return torch.tensor(np.stack([chirp, harmonic, gated_noise, silence_then_click]), dtype=torch.float32)


def test_defaults_are_the_papers():
    c = MelConfig()
    assert (c.sample_rate, c.n_fft, c.win_length, c.hop_length, c.n_mels, c.fmin, c.fmax) == (
        16000, 2048, 2048, 512, 64, 0.0, 8000.0)
    assert c.clip_samples == 65536 and c.clip_frames == 128
    assert c.log_min == pytest.approx(math.log(1e-5))


def test_matches_bigvgan_log_mel():
    wav = real_signals()
    ours = mel_spectrogram(wav, MelConfig())
    ref = bigvgan_mel(wav, 2048, 64, 16000, 512, 2048, 0, 8000)
    assert ours.shape == (4, 64, 128) == ref.shape
    assert (ours - ref).abs().max().item() <= 1e-4


def test_unbatched_and_odd_lengths():
    wav = real_signals()[1]
    assert mel_spectrogram(wav).shape == (64, 128)
    # any length gives BigVGAN's frame count: n_fft - hop = 1536 samples of padding, a frame every hop
    for n in (16000, 40000, 65535, 65537):
        assert mel_spectrogram(wav[:n]).shape[-1] == (n + 1536 - 2048) // 512 + 1


def test_too_short_waveform_is_refused():
    with pytest.raises(ValueError, match="too short"):
        mel_spectrogram(torch.zeros(100))


def test_normalize_round_trip_and_range():
    c = MelConfig()
    logmel = mel_spectrogram(real_signals(), c)
    x = normalize(logmel, c)
    assert torch.allclose(denormalize(x, c), logmel, atol=1e-5, rtol=0)
    assert x.min().item() >= -1.0 - 1e-6  # silence maps to exactly -1
    assert x.max().item() <= 1.0
    # a full-scale low tone, the loudest thing a mel can hold, stays inside [-1, 1]
    assert normalize(mel_spectrogram(tone(100, amp=1.0), c), c).max().item() <= 1.0


def test_griffin_lim_keeps_pitch_and_length():
    c = MelConfig()
    for freq in (440.0, 1000.0):
        logmel = mel_spectrogram(tone(freq, seconds=2.048), c)
        wav = griffin_lim(logmel, c, n_iter=32)
        assert wav.shape == (logmel.shape[-1] * c.hop_length,)
        spectrum = np.abs(np.fft.rfft(wav.numpy() * np.hanning(len(wav))))
        peak = np.fft.rfftfreq(len(wav), 1 / SR)[spectrum.argmax()]
        # mel bands are ~60-100 Hz wide here; the peak must land in the tone's band
        assert abs(peak - freq) < 0.06 * freq, (freq, peak)
        # and the resynthesised audio has a mel close to the original
        again = mel_spectrogram(wav, c)
        loud = logmel > logmel.max() - 4
        assert (again - logmel)[loud].abs().mean() < 1.0


def test_griffin_lim_is_batched_and_seeded():
    c = MelConfig()
    logmel = mel_spectrogram(real_signals()[:2], c)
    a = griffin_lim(logmel, c, n_iter=4, seed=1)
    b = griffin_lim(logmel, c, n_iter=4, seed=1)
    assert a.shape == (2, 128 * 512) and torch.equal(a, b)
    # a clip's audio does not depend on the batch it is in
    assert torch.allclose(griffin_lim(logmel[1], c, n_iter=4, seed=1), a[1], atol=1e-4)
    with pytest.raises(ValueError, match="log-mel"):
        griffin_lim(torch.zeros(1, 80, 10), c)


def test_config_validation_and_round_trip():
    c = MelConfig(clip_samples=32768)
    assert MelConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ConfigError, match="unknown key"):
        MelConfig.from_dict({**c.to_dict(), "n_mel": 80})
    with pytest.raises(ValueError, match="multiple of 8 frames"):
        MelConfig(clip_samples=1000)
    with pytest.raises(ValueError, match="sample_rate"):
        MelConfig(sample_rate=0)
    assert MelConfig().mismatch(MelConfig(n_mels=80)) == ["n_mels: 64 vs 80"]


def test_mel_basis_is_librosas():
    import librosa

    from clipsonic.audio import mel_basis
    from clipsonic.plotting import mel_band_edges_hz

    for cfg in (MelConfig(), MelConfig(sample_rate=22050, n_fft=1024, win_length=1024, hop_length=256, n_mels=80,
                                       fmin=30.0, fmax=11025.0, clip_samples=65536)):
        ref = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax)
        ours = mel_basis(cfg).numpy()
        assert ours.dtype == np.float32 and ours.shape == ref.shape
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-8)
        centres = librosa.mel_frequencies(n_mels=cfg.n_mels + 2, fmin=cfg.fmin, fmax=cfg.fmax)[1:-1]
        np.testing.assert_allclose(mel_band_edges_hz(cfg), centres, rtol=1e-9)
