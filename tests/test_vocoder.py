"""clipsonic.vocoder without training: presets, save/load, compatibility, attach, `vocode`, discriminators."""

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from support.media_files import write_video

from clipsonic.audio import MelConfig, mel_spectrogram
from clipsonic.cli import main
from clipsonic.errors import ClipsonicError
from clipsonic.vocoder import (
    VOCODER_PRESETS,
    BigVGANVocoder,
    DiscriminatorConfig,
    GriffinLimConfig,
    GriffinLimVocoder,
    Vocoder,
    attach_vocoder,
    load_vocoder,
)
from clipsonic.vocoder.discriminators import build_discriminator


def has_weight_norm(module: torch.nn.Module) -> bool:
    return any(hasattr(m, "weight_g") for m in module.modules())


def harmonic(seconds: float, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Notes of 0.2-0.6 s with five partials and decaying envelopes, peak 0.5."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    out, pos = np.zeros(n), 0
    while pos < n:
        dur = min(int(rng.uniform(0.2, 0.6) * sample_rate), n - pos)
        t, f0 = np.arange(dur) / sample_rate, rng.uniform(110, 880)
        env = np.exp(-t * rng.uniform(1, 6)) * np.minimum(1, t * 200)
        out[pos:pos + dur] = env * sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) / k
                                       for k in range(1, 6) if f0 * k < 0.48 * sample_rate)
        pos += dur
    return (0.5 * out / np.abs(out).max()).astype(np.float32)


@pytest.fixture(scope="module")
def tiny() -> BigVGANVocoder:
    torch.manual_seed(0)
    return BigVGANVocoder.from_preset("tiny")


def test_presets_upsample_by_the_hop():
    for name, config in VOCODER_PRESETS.items():
        assert config.hop_length == 512, name
    assert VOCODER_PRESETS["paper"].upsample_initial_channel == 1536
    assert VOCODER_PRESETS["base"].upsample_initial_channel == 512


def test_call_shapes_and_weight_norm_removed(tiny):
    assert not has_weight_norm(tiny.generator) and not tiny.generator.training
    mel = torch.randn(3, 64, 10) - 4
    wav = tiny(mel)
    assert wav.shape == (3, 10 * 512) and wav.dtype == torch.float32
    assert tiny(mel[0]).shape == (10 * 512,)
    torch.testing.assert_close(tiny(mel[1:2])[0], wav[1], atol=1e-5, rtol=0)  # batching changes nothing
    with pytest.raises(ClipsonicError, match=r"\[B, 64, frames\]"):
        tiny(torch.randn(1, 80, 10))
    with pytest.raises(ClipsonicError, match="NaN"):
        tiny(torch.full((1, 64, 4), float("nan")))


def test_save_load_round_trip_identical_audio(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "voc")
    assert sorted(p.name for p in (tmp_path / "voc").iterdir()) == ["bigvgan_generator.safetensors", "config.json"]
    config = json.loads((tmp_path / "voc" / "config.json").read_text())
    assert config["type"] == "bigvgan" and config["mel"]["n_mels"] == 64
    assert config["generator"]["upsample_rates"] == [8, 8, 8]
    loaded = load_vocoder(tmp_path / "voc")
    assert isinstance(loaded, BigVGANVocoder) and isinstance(loaded, Vocoder)
    mel = mel_spectrogram(torch.from_numpy(harmonic(1.0)))[None]
    assert torch.equal(loaded(mel), tiny(mel))
    loaded.save_pretrained(tmp_path / "again")  # a loaded vocoder saves to the same weights
    assert torch.equal(load_vocoder(tmp_path / "again")(mel), tiny(mel))


def test_griffin_lim_round_trip_and_quality(tmp_path):
    gl = GriffinLimVocoder(config=GriffinLimConfig(n_iter=16, seed=3))
    gl.save_pretrained(tmp_path / "gl")
    loaded = load_vocoder(tmp_path / "gl")
    assert isinstance(loaded, GriffinLimVocoder) and loaded.config.n_iter == 16
    mel = mel_spectrogram(torch.from_numpy(harmonic(1.024)))[None]
    wav = loaded(mel)
    assert torch.equal(wav, gl(mel)) and wav.shape == (1, 32 * 512)
    assert (mel_spectrogram(wav) - mel).abs().mean() < 1.0  # a phase-blind inversion, still close


def test_mismatched_configs_refused(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "voc")
    other = MelConfig(n_mels=80)
    with pytest.raises(ClipsonicError, match=r"n_mels: 64 vs 80"):
        load_vocoder(tmp_path / "voc", mel_config=other)
    with pytest.raises(ClipsonicError, match=r"fmax: 8000.0 vs 7600.0"):
        tiny.check_compatible(MelConfig(fmax=7600.0))
    with pytest.raises(ClipsonicError, match=r"multiply to 512 but the mel hop is 256"):
        BigVGANVocoder(MelConfig(hop_length=256), VOCODER_PRESETS["tiny"])
    tiny.check_compatible(MelConfig(log_max=5.0, clip_samples=32768))  # diffusion scaling is not the vocoder's


def test_load_errors(tmp_path):
    with pytest.raises(ClipsonicError, match="no such vocoder directory"):
        load_vocoder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipsonicError, match="not a vocoder directory"):
        load_vocoder(tmp_path / "empty")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"type": "wavenet", "mel": MelConfig().to_dict()}))
    with pytest.raises(ClipsonicError, match="unknown vocoder type 'wavenet'"):
        load_vocoder(tmp_path / "odd")


def _pipeline_dir(root, mel: MelConfig):
    root.mkdir()
    index = {"_class_name": "CLIPSonicPipeline", "mel": mel.to_dict(),
             "components": {"unet": "unet", "scheduler": "scheduler", "vocoder": None}}
    (root / "model_index.json").write_text(json.dumps(index))
    return root


def test_attach_copies_atomically_and_updates_index(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "run" / "vocoder")  # a training run's layout
    pipe = _pipeline_dir(tmp_path / "pipe", MelConfig())
    assert main(["attach", "vocoder", str(pipe), str(tmp_path / "run")]) == 0
    index = json.loads((pipe / "model_index.json").read_text())
    assert index["components"]["vocoder"] == "vocoder"
    mel = torch.randn(1, 64, 4) - 5
    assert torch.equal(load_vocoder(pipe / "vocoder", mel_config=MelConfig())(mel), tiny(mel))
    GriffinLimVocoder().save_pretrained(tmp_path / "gl")
    attach_vocoder(pipe, tmp_path / "gl")  # replaces the previous component
    assert isinstance(load_vocoder(pipe / "vocoder"), GriffinLimVocoder)
    assert [p.name for p in pipe.iterdir() if p.name.startswith(".")] == []


def test_attach_refuses_bad_targets(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "voc")
    (tmp_path / "notpipe").mkdir()
    with pytest.raises(ClipsonicError, match="no model_index.json"):
        attach_vocoder(tmp_path / "notpipe", tmp_path / "voc")
    pipe = _pipeline_dir(tmp_path / "pipe80", MelConfig(n_mels=80))
    with pytest.raises(ClipsonicError, match="n_mels: 64 vs 80"):
        attach_vocoder(pipe, tmp_path / "voc")
    assert not (pipe / "vocoder").exists()
    assert json.loads((pipe / "model_index.json").read_text())["components"]["vocoder"] is None


def test_vocode_cli_griffin_lim_resamples_and_keeps_duration(tmp_path):
    sf.write(tmp_path / "in.wav", harmonic(1.3, sample_rate=44100), 44100)
    assert main(["vocode", str(tmp_path / "in.wav"), "-o", str(tmp_path / "out.wav"), "--griffin-lim", "--iters", "8"]) == 0
    out, sr = sf.read(tmp_path / "out.wav")
    assert sr == 16000 and len(out) == (round(1.3 * 16000) // 512) * 512


def test_vocode_cli_bigvgan_on_video(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "voc")
    video = write_video(tmp_path / "v.mp4", seconds=2.0, tone_hz=440.0, sample_rate=48000)
    assert main(["vocode", str(video), "-o", str(tmp_path / "out.flac"), "--vocoder", str(tmp_path / "voc"),
                 "--start", "0.5", "--duration", "1.024"]) == 0
    out, sr = sf.read(tmp_path / "out.flac")
    assert sr == 16000 and len(out) == 16384 and np.isfinite(out).all()


def test_vocode_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "junk.wav").write_text("not audio")
    cases = [["vocode", str(tmp_path / "missing.wav"), "-o", str(tmp_path / "o.wav"), "--griffin-lim"],
             ["vocode", str(tmp_path / "junk.wav"), "-o", str(tmp_path / "o.wav"), "--griffin-lim"],
             ["vocode", str(tmp_path / "junk.wav"), "-o", str(tmp_path / "o.wav"), "--vocoder", str(tmp_path)]]
    for args in cases:
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("clipsonic vocode: error:") and "\n" not in err and "Traceback" not in err
    sf.write(tmp_path / "short.wav", np.zeros(600, np.float32), 16000)
    assert main(["vocode", str(tmp_path / "short.wav"), "-o", str(tmp_path / "o.wav"), "--griffin-lim"]) == 2
    assert not (tmp_path / "o.wav").exists()


def test_copied_discriminators_match_bigvgan(monkeypatch):
    """MPD and MRD are copies of bigvgan's: same parameters, same scores and feature maps."""
    import sys
    import types

    # bigvgan.discriminators imports torchaudio.transforms at its top, for the discriminators we did not copy
    fake = types.ModuleType("torchaudio")
    fake.transforms = types.SimpleNamespace(Spectrogram=None, Resample=None)
    monkeypatch.setitem(sys.modules, "torchaudio", fake)
    monkeypatch.setitem(sys.modules, "torchaudio.transforms", fake.transforms)
    monkeypatch.delitem(sys.modules, "bigvgan.discriminators", raising=False)
    from bigvgan import discriminators as upstream

    config = DiscriminatorConfig(channel_mult=0.125)
    ours = build_discriminator(config, 16000)
    h = types.SimpleNamespace(discriminator_channel_mult=0.125, use_spectral_norm=False,
                              mpd_reshapes=list(config.mpd_reshapes), resolutions=[list(r) for r in config.mrd_resolutions])
    theirs = upstream.CombinedDiscriminator([upstream.MultiPeriodDiscriminator(h), upstream.MultiResolutionDiscriminator(h)])
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    theirs.load_state_dict(ours.state_dict())
    y, y_hat = torch.randn(2, 1, 4096) * 0.3, torch.randn(2, 1, 4096) * 0.3
    for a, b in zip(ours(y, y_hat), theirs(y, y_hat), strict=True):
        flat_a = [t for x in a for t in (x if isinstance(x, list) else [x])]
        flat_b = [t for x in b for t in (x if isinstance(x, list) else [x])]
        assert len(flat_a) == len(flat_b) > 0
        for ta, tb in zip(flat_a, flat_b, strict=True):
            torch.testing.assert_close(ta, tb)


def test_torchaudio_discriminators_need_torchaudio(monkeypatch):
    import sys

    import bigvgan

    monkeypatch.setitem(sys.modules, "torchaudio", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "bigvgan.discriminators", raising=False)
    monkeypatch.delattr(bigvgan, "discriminators", raising=False)
    for kind in ("mbd", "cqtd"):
        with pytest.raises(ClipsonicError, match=f"'{kind}' discriminator needs torchaudio.*pip install torchaudio"):
            build_discriminator(DiscriminatorConfig(kind=kind), 16000)


def test_cqt_octaves_must_fit_below_nyquist():
    DiscriminatorConfig(kind="cqtd").check_cqt_range(16000)
    with pytest.raises(ClipsonicError, match="at most 7 octaves"):
        DiscriminatorConfig(kind="cqtd", cqtd_n_octaves=(9, 9, 9)).check_cqt_range(16000)
    assert 32.7 * 2 ** (7 - 1 / 48) < 8000 < 32.7 * 2 ** (8 - 1 / 24) and math.isfinite(1.0)
