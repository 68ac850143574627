"""clipsonic.vocoder without training: presets, save/load, compatibility, attach, `vocode`, stand-ins."""

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from support.media_files import write_video

from clipsonic.audio import MelConfig, mel_spectrogram
from clipsonic.cli import main
from clipsonic.vocoder import (
    VOCODER_PRESETS,
    BigVGANVocoder,
    GriffinLimConfig,
    GriffinLimVocoder,
    Vocoder,
    VocoderError,
    attach_vocoder,
    load_vocoder,
)
from clipsonic.vocoder.bigvgan import has_weight_norm


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
    with pytest.raises(VocoderError, match=r"\[B, 64, frames\]"):
        tiny(torch.randn(1, 80, 10))
    with pytest.raises(VocoderError, match="NaN"):
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
    with pytest.raises(VocoderError, match=r"n_mels: 64 vs 80"):
        load_vocoder(tmp_path / "voc", mel_config=other)
    with pytest.raises(VocoderError, match=r"fmax: 8000.0 vs 7600.0"):
        tiny.check_compatible(MelConfig(fmax=7600.0))
    with pytest.raises(VocoderError, match=r"multiply to 512 but the mel hop is 256"):
        BigVGANVocoder(MelConfig(hop_length=256), VOCODER_PRESETS["tiny"])
    tiny.check_compatible(MelConfig(log_max=5.0, clip_samples=32768))  # diffusion scaling is not the vocoder's


def test_load_errors(tmp_path):
    with pytest.raises(VocoderError, match="no such vocoder directory"):
        load_vocoder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VocoderError, match="not a vocoder directory"):
        load_vocoder(tmp_path / "empty")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"type": "wavenet", "mel": MelConfig().to_dict()}))
    with pytest.raises(VocoderError, match="unknown vocoder type 'wavenet'"):
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
    assert main(["vocoder", "attach", str(pipe), str(tmp_path / "run")]) == 0
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
    with pytest.raises(VocoderError, match="no model_index.json"):
        attach_vocoder(tmp_path / "notpipe", tmp_path / "voc")
    pipe = _pipeline_dir(tmp_path / "pipe80", MelConfig(n_mels=80))
    with pytest.raises(VocoderError, match="n_mels: 64 vs 80"):
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


def test_torchaudio_stand_ins_match_references():
    import soxr

    from clipsonic.vocoder.torchaudio_compat import Resample, Spectrogram

    x = harmonic(0.5)
    ours = Resample(16000, 32000)(torch.from_numpy(x)[None])[0].numpy()
    ref = soxr.resample(x, 16000, 32000)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref)[200:-200].max() < 0.01 * np.abs(ref).max()
    spec = Spectrogram(n_fft=512, hop_length=128, win_length=512, power=None)(torch.from_numpy(x)[None])
    direct = torch.stft(torch.from_numpy(x), 512, 128, 512, window=torch.hann_window(512), return_complex=True)
    torch.testing.assert_close(spec[0], direct)


def test_cqt_octaves_must_fit_below_nyquist():
    from clipsonic.vocoder import DiscriminatorConfig

    DiscriminatorConfig(kind="cqtd").check_cqt_range(16000)
    with pytest.raises(VocoderError, match="at most 7 octaves"):
        DiscriminatorConfig(kind="cqtd", cqtd_n_octaves=(9, 9, 9)).check_cqt_range(16000)
    assert 32.7 * 2 ** (7 - 1 / 48) < 8000 < 32.7 * 2 ** (8 - 1 / 24) and math.isfinite(1.0)
