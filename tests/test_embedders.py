"""Audio embedders: VGGish's front end and network, mel-stats, the CLAP wrapper, loading errors."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch

from clipsonic.embedders import load_embedder
from clipsonic.embedders import vggish as vi
from clipsonic.embedders.base import prepare_waveform, quick_fingerprint
from clipsonic.embedders.clap import CLIP_SAMPLES, ClapEmbedder, crop_or_pad
from clipsonic.embedders.vggish import MelStatsEmbedder, VGGish, VGGishEmbedder, convert_torchvggish
from clipsonic.errors import ClipsonicError
from clipsonic.metrics import EmbeddingStats, fad_from_stats

SR = 16000


def _sine(freq: float, seconds: float, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# --- VGGish front end -------------------------------------------------------------------------


def test_vggish_frame_and_patch_counts():
    # 1 + (16000 − 400) // 160 = 98 frames in 1 s → one 96-frame patch; 10 s → 998 frames → 10 patches
    assert vi.log_mel(np.zeros(SR)).shape == (98, 64)
    assert vi.waveform_to_patches(np.zeros(10 * SR)).shape == (10, 96, 64)
    assert vi.waveform_to_patches(np.zeros(vi.MIN_SAMPLES)).shape == (1, 96, 64)
    assert vi.waveform_to_patches(np.zeros(vi.MIN_SAMPLES - 1)).shape == (0, 96, 64)


def test_vggish_silence_is_log_offset():
    np.testing.assert_allclose(vi.log_mel(np.zeros(SR)), np.log(0.01))


def test_vggish_stft_is_zero_padded_dft_of_windowed_frames():
    """Independent computation: an explicit 512-point DFT matrix over 400-sample Hann frames every 160."""
    wav = np.random.default_rng(0).normal(size=4000)
    n_frames = 1 + (4000 - 400) // 160
    n = np.arange(400)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / 400)
    dft = np.exp(-2j * np.pi * np.outer(np.arange(257), n) / 512)  # zero padding = summing to 400 only
    expected = np.stack([np.abs(dft @ (wav[160 * k:160 * k + 400] * hann)) for k in range(n_frames)])
    np.testing.assert_allclose(vi.stft_magnitude(wav), expected, rtol=1e-9, atol=1e-9)


def test_vggish_mel_matrix_shape_edges_and_peaks():
    m = vi.mel_matrix()
    assert m.shape == (257, 64)
    freqs = np.linspace(0, 8000, 257)
    assert np.all(m[0] == 0)  # DC excluded
    assert np.all(m[freqs <= 125] == 0) and np.all(m[freqs >= 7500] == 0)
    # Each triangle peaks at the FFT bin nearest its centre (HTK mel, linear in mel).
    edges = np.linspace(vi.hertz_to_mel(125), vi.hertz_to_mel(7500), 66)
    centre_hz = 700 * (np.exp(edges[1:-1] / 1127) - 1)
    peak_bins = m.argmax(axis=0)
    assert np.all(np.abs(freqs[peak_bins] - centre_hz) <= 8000 / 256)
    assert m.max() <= 1.0


def test_vggish_sine_lands_in_its_band():
    logmel = vi.log_mel(_sine(1000, 1.0))
    band = int(logmel.mean(0).argmax())
    edges = np.linspace(vi.hertz_to_mel(125), vi.hertz_to_mel(7500), 66)
    centre_hz = 700 * (np.exp(edges[1:-1] / 1127) - 1)
    assert abs(centre_hz[band] - 1000) < 60


# --- VGGish network ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vggish_weights(tmp_path_factory):
    """Random VGGish weights written as torchvggish's .pth and converted (fp16 to keep the file small)."""
    torch.manual_seed(0)
    state = {k: v.half() for k, v in VGGish().state_dict().items()}
    root = tmp_path_factory.mktemp("vggish")
    torch.save(state, root / "vggish-test.pth")
    out = convert_torchvggish(root / "vggish-test.pth", root / "vggish.safetensors")
    (root / "vggish-test.pth").unlink()
    return out, state


def test_vggish_flatten_follows_tensorflow_layout(vggish_weights):
    """The first fc weight, read as TF's [H·W·C, 4096] matrix, meets features in (h, w, c) order."""
    net = VGGishEmbedder(vggish_weights[0], device="cpu").model
    x = torch.randn(2, 1, 96, 64)
    with torch.no_grad():
        feats = net.features(x)  # [2, 512, 6, 4]
        fc = net.embeddings[0]
        w_tf = fc.weight.T.reshape(6, 4, 512, 4096)  # TF dense kernel, rows in NHWC order
        hidden = torch.einsum("bchw,hwco->bo", feats, w_tf) + fc.bias
        expected = net.embeddings[1:](hidden)
        np.testing.assert_allclose(net(x).numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)
    assert net(x).shape == (2, 128)
    assert not isinstance(net.embeddings[-1], torch.nn.ReLU)  # raw fc2, as TF / Google's FAD
    with torch.device("meta"):
        assert isinstance(VGGish(final_relu=True).embeddings[-1], torch.nn.ReLU)


def test_vggish_embedder_loads_converted_weights(vggish_weights):
    path, state = vggish_weights
    emb = VGGishEmbedder(path, device="cpu")
    torch.testing.assert_close(emb.model.features[0].weight, state["features.0.weight"].float())
    out = emb.embed(_sine(440, 2.5), SR)
    assert out.shape == (2, 128) and out.dtype == np.float32
    # the same audio at 48 kHz is resampled to 16 kHz first: nearly the same embedding
    out48 = emb.embed(_sine(440, 2.5, sr=48000), 48000)
    np.testing.assert_allclose(out48, out, rtol=0.05, atol=0.05 * np.abs(out).max())
    assert emb.cache_id.startswith("vggish-")


def test_vggish_missing_or_wrong_weights_say_what_to_do(tmp_path, vggish_weights):
    with pytest.raises(ClipsonicError, match=r"nope\.safetensors does not exist.*vggish-10086976\.pth"):
        VGGishEmbedder(tmp_path / "nope.safetensors")
    from safetensors.torch import save_file

    save_file({"features.0.weight": torch.zeros(64, 1, 3, 3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ClipsonicError, match="missing"):
        VGGishEmbedder(tmp_path / "bad.safetensors")
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ClipsonicError, match="is not a VGGish checkpoint"):
        convert_torchvggish(tmp_path / "other.pth", tmp_path / "x.safetensors")


@pytest.mark.parametrize("cut", ["header", "tensors", "last byte"])
def test_truncated_weights_are_one_error_naming_the_file(tmp_path, vggish_weights, monkeypatch, cut):
    """VGGish, PANNs and CLAP safetensors cut short (a stopped download): a ClipsonicError naming the file."""
    from safetensors.torch import save_file

    monkeypatch.setitem(sys.modules, "laion_clap", types.SimpleNamespace(CLAP_Module=_StandInClapModule))
    save_file({"fc1.weight": torch.zeros(64, 64)}, str(tmp_path / "panns.safetensors"))
    save_file(torch.nn.Linear(4, 512).state_dict(), str(tmp_path / "clap.safetensors"))
    for name, path in (("vggish", vggish_weights[0]), ("panns", tmp_path / "panns.safetensors"),
                       ("clap", tmp_path / "clap.safetensors")):
        data = path.read_bytes()
        size = {"header": 40, "tensors": len(data) // 2, "last byte": len(data) - 1}[cut]
        (tmp_path / f"cut-{name}.safetensors").write_bytes(data[:size])
        with pytest.raises(ClipsonicError, match=rf"cut-{name}\.safetensors (could not be read|is not a safetensors)"):
            load_embedder(name, tmp_path / f"cut-{name}.safetensors", device="cpu")


# --- mel-stats --------------------------------------------------------------------------------


def test_mel_stats_is_patch_mean_and_std():
    wav = np.random.default_rng(1).normal(scale=0.1, size=3 * SR).astype(np.float32)
    out = MelStatsEmbedder().embed(wav, SR)
    patches = vi.waveform_to_patches(wav)
    assert out.shape == (3, 128)
    np.testing.assert_allclose(out[:, :64], patches.mean(1), rtol=1e-5)
    np.testing.assert_allclose(out[:, 64:], patches.std(1), rtol=1e-5, atol=1e-6)
    assert not MelStatsEmbedder.comparable and "NOT comparable" in MelStatsEmbedder.description


def test_mel_stats_pads_short_clips(caplog):
    with caplog.at_level("WARNING"):
        out = MelStatsEmbedder().embed(_sine(440, 0.5), SR)
    assert out.shape == (1, 128) and "zero-padding" in caplog.text


def test_mel_stats_fad_separates_different_sounds():
    rng = np.random.default_rng(2)
    emb = MelStatsEmbedder()

    def stats(make):
        s = EmbeddingStats(emb.dim)
        for _ in range(12):
            s.update(emb.embed(make(), SR))
        return s

    tones_a = stats(lambda: _sine(rng.uniform(300, 500), 3.0) + rng.normal(scale=0.01, size=3 * SR))
    tones_b = stats(lambda: _sine(rng.uniform(300, 500), 3.0) + rng.normal(scale=0.01, size=3 * SR))
    noise = stats(lambda: rng.normal(scale=0.3, size=3 * SR))
    same, different = fad_from_stats(tones_a, tones_b), fad_from_stats(tones_a, noise)
    assert different > 10 * same


def test_waveform_checks():
    with pytest.raises(ClipsonicError, match="NaN"):
        prepare_waveform(np.array([0.0, np.nan, 0.0]), SR, SR)
    with pytest.raises(ClipsonicError, match="mono"):
        prepare_waveform(np.zeros((2, 100)), SR, SR)
    with pytest.raises(ClipsonicError, match="empty"):
        prepare_waveform(np.zeros(0), SR, SR)
    assert prepare_waveform(np.zeros(1600), SR, 48000).shape == (4800,)
    with pytest.raises(ClipsonicError, match="unknown embedder"):
        load_embedder("openl3")
    assert load_embedder("mel-stats").name == "mel-stats"


# --- LAION-CLAP wrapper -----------------------------------------------------------------------


def test_crop_or_pad_is_deterministic_repeat_pad():
    wav = np.arange(1, 4, dtype=np.float32)  # 3 samples
    np.testing.assert_array_equal(crop_or_pad(wav, 8), [1, 2, 3, 1, 2, 3, 0, 0])
    np.testing.assert_array_equal(crop_or_pad(np.arange(10, dtype=np.float32), 4), [0, 1, 2, 3])
    assert crop_or_pad(np.ones(5), CLIP_SAMPLES).shape == (CLIP_SAMPLES,)


def test_clap_without_package_gives_install_hint(tmp_path, monkeypatch):
    (tmp_path / "630k-audioset-best.pt").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "laion_clap", None)  # import laion_clap → ImportError
    with pytest.raises(ClipsonicError, match="pip install --no-deps laion-clap"):
        ClapEmbedder(tmp_path / "630k-audioset-best.pt")
    with pytest.raises(ClipsonicError, match="missing.pt does not exist.*--clap-weights"):
        ClapEmbedder(tmp_path / "missing.pt")


class _StandInClapModule:
    """Just laion_clap.CLAP_Module's surface: a model with a state dict and two embedding calls."""

    calls: list = []

    def __init__(self, enable_fusion=False, device=None, amodel="HTSAT-tiny"):
        self.enable_fusion = enable_fusion
        self.model = torch.nn.Linear(4, 512)

    def get_audio_embedding_from_data(self, x, use_tensor=False):
        _StandInClapModule.calls.append(("audio", np.array(x)))
        x = np.asarray(x)
        feats = np.stack([x.mean(1), x.std(1), np.abs(x).max(1), x[:, :100].sum(1)], 1)
        return self.model(torch.from_numpy(feats).float()).detach().numpy()

    def get_text_embedding(self, texts, use_tensor=False):
        _StandInClapModule.calls.append(("text", list(texts)))
        return np.stack([np.full(512, len(t), np.float32) for t in texts])


def test_clap_wrapper_feeds_48k_ten_second_clips_and_loads_weights(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "laion_clap", types.SimpleNamespace(CLAP_Module=_StandInClapModule))
    torch.manual_seed(0)
    state = {f"module.{k}": torch.randn_like(v) for k, v in torch.nn.Linear(4, 512).state_dict().items()}
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "630k-audioset-best.pt")
    _StandInClapModule.calls.clear()
    clap = ClapEmbedder(tmp_path / "630k-audioset-best.pt", device="cpu")
    torch.testing.assert_close(clap.module.model.weight, state["module.weight"])  # DDP prefix stripped

    wav = _sine(440, 4.096)  # a 16 kHz training-length clip
    out = clap.embed(wav, SR)
    assert out.shape == (1, 512)
    kind, fed = _StandInClapModule.calls[-1]
    assert kind == "audio" and fed.shape == (1, CLIP_SAMPLES)
    upsampled = prepare_waveform(wav, SR, 48000)
    np.testing.assert_array_equal(fed[0], crop_or_pad(upsampled))
    np.testing.assert_array_equal(clap.embed(wav, SR), out)  # deterministic

    texts = clap.embed_texts(["dog barking"])
    assert texts.shape == (1, 512) and _StandInClapModule.calls[-1] == ("text", ["dog barking", "dog barking"])
    assert clap.cache_id.startswith("clap-HTSAT-tiny-")

    torch.save({"state_dict": {"other.weight": torch.zeros(1)}}, tmp_path / "wrong.pt")
    with pytest.raises(ClipsonicError, match="does not fit"):
        ClapEmbedder(tmp_path / "wrong.pt", device="cpu")


# --- PANNs CNN14 ------------------------------------------------------------------------------


def test_panns_log_mel_matches_librosa():
    import librosa

    from clipsonic.embedders import panns

    wav = np.random.default_rng(3).normal(scale=0.1, size=32000).astype(np.float32)
    mel = librosa.feature.melspectrogram(y=wav, sr=32000, n_fft=1024, hop_length=320, win_length=1024,
                                         window="hann", center=True, pad_mode="reflect", power=2.0,
                                         n_mels=64, fmin=50, fmax=14000)
    expected = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None).T  # [frames, 64]
    ours = panns.log_mel(torch.from_numpy(wav)[None].double())[0].numpy()
    assert ours.shape == (101, 64)
    np.testing.assert_allclose(ours, expected, atol=1e-3)


def test_panns_network_shapes_and_missing_weights(tmp_path):
    from clipsonic.embedders import panns

    torch.manual_seed(0)
    net = panns.Cnn14(channels=(4, 8, 8, 8, 8, 16)).eval()
    with torch.no_grad():
        out = net(panns.log_mel(torch.randn(2, 32000) * 0.1))
    assert out.shape == (2, 16) and bool((out >= 0).all())  # ReLU'd fc1 embedding
    with torch.device("meta"):
        keys = set(panns.Cnn14().state_dict())
    assert {"bn0.running_mean", "conv_block6.conv2.weight", "fc1.weight"} <= keys  # the release's names
    with pytest.raises(ClipsonicError, match=r"Cnn14_mAP=0\.431\.pth"):
        load_embedder("panns", tmp_path / "nope.pth")
    torch.save({"model": {"fc1.weight": torch.zeros(1)}}, tmp_path / "bad.pth")
    with pytest.raises(ClipsonicError, match="not a PANNs CNN14 checkpoint"):
        load_embedder("panns", tmp_path / "bad.pth")


def test_vggish_convert_command(tmp_path, capsys):
    from clipsonic.embedders.vggish import main

    assert main(["only-one-arg"]) == 2
    torch.save({"x": torch.zeros(1)}, tmp_path / "not-vggish.pth")
    assert main([str(tmp_path / "not-vggish.pth"), str(tmp_path / "out.safetensors")]) == 2
    assert "is not a VGGish checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out.safetensors").exists()


def _safetensors_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data


def test_quick_fingerprint_ignores_the_order_of_safetensors_metadata(tmp_path):
    # safetensors writes metadata from a Rust HashMap: the same weights saved twice may differ in key order
    tensor = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    data = np.arange(2, dtype=np.float32).tobytes()
    a, b, c = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "c.safetensors"
    a.write_bytes(_safetensors_bytes({"__metadata__": {"format": "pt", "class": "X"}, **tensor}, data))
    b.write_bytes(_safetensors_bytes({**tensor, "__metadata__": {"class": "X", "format": "pt"}}, data))
    c.write_bytes(_safetensors_bytes({**tensor, "__metadata__": {"class": "X", "format": "pt"}}, data[::-1]))
    assert a.read_bytes() != b.read_bytes()
    assert quick_fingerprint(a) == quick_fingerprint(b) != quick_fingerprint(c)
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{nope")
    with pytest.raises(ClipsonicError, match="bad.safetensors is not a safetensors file"):
        quick_fingerprint(tmp_path / "bad.safetensors")
    (tmp_path / "huge.safetensors").write_bytes(b"\xff" * 8 + b"{}")  # a length of 2^64 - 1 bytes
    with pytest.raises(ClipsonicError, match="huge.safetensors is not a safetensors file"):
        quick_fingerprint(tmp_path / "huge.safetensors")
