"""train-vocoder on real generated audio: learning, exact resume (also after SIGKILL), faults, data sources."""

import io
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from test_vocoder import harmonic

from clipsonic.audio import MelConfig
from clipsonic.cli import main
from clipsonic.errors import ClipsonicError
from clipsonic.train import list_checkpoints, read_metrics
from clipsonic.vocoder import BigVGANVocoder, load_vocoder, train_vocoder

# Mechanics tests: the tiny preset on 2048-sample segments, two per batch.
SMALL = dict(batch_size=2, segment_size=2048, val_segment_size=4096, num_val=2, val_every=100)


def tiny(**train) -> dict:
    """Config sections of a tiny-preset run."""
    return {"train": {"preset": "tiny", **train}}


@pytest.fixture(scope="module")
def harmonic_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("harmonic")
    for i in range(12):
        sf.write(root / f"clip{i:02d}.wav", harmonic(2.0, seed=i), 16000)
    return root


def _ckpt(run, step):
    path = run / "checkpoints" / f"step-{step:07d}"
    return {f: load_file(str(path / f"{f}.safetensors")) for f in ("generator", "discriminator", "optimizers")}


def _assert_same(a, b):
    for part in a:
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=1e-5, atol=1e-6, msg=f"{part}:{key}")


@pytest.mark.slow
def test_tiny_preset_learns_on_harmonic_audio(harmonic_folder, tmp_path):
    config = tiny(max_steps=60, val_every=20, save_every=60, num_val=2, val_segment_size=8192)
    run = train_vocoder(harmonic_folder, tmp_path / "run", config)
    steps, losses = zip(*[(r["step"], r["mel_l1"]) for r in read_metrics(run, "val")], strict=True)
    assert steps == (0, 20, 40, 60)
    assert losses[-1] < 0.75 * losses[0], losses  # measured: ~5.7 → ~3.3
    assert min(losses[1:]) < losses[0] - 1.0, losses
    vocoder = load_vocoder(tmp_path / "run")  # the run directory resolves to run/vocoder
    assert isinstance(vocoder, BigVGANVocoder)
    assert list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))
    wav = torch.from_numpy(harmonic(1.024, seed=99))
    from clipsonic.audio import mel_spectrogram

    out = vocoder(mel_spectrogram(wav)[None])
    assert out.shape == (1, 16384)
    # the trained vocoder beats an untrained one of the same preset on unseen audio
    torch.manual_seed(0)
    untrained = BigVGANVocoder.from_preset("tiny")
    err = lambda v: float((mel_spectrogram(v(mel_spectrogram(wav)[None])) - mel_spectrogram(wav)).abs().mean())  # noqa: E731
    assert err(vocoder) < 0.8 * err(untrained)


@pytest.fixture(scope="module")
def straight_run(harmonic_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    config = tiny(max_steps=6, save_every=2, keep_last=10, **SMALL)
    train_vocoder(harmonic_folder, out, config)
    return out, config


def test_resume_is_exact(harmonic_folder, straight_run, tmp_path):
    straight, config = straight_run
    run = tmp_path / "run"
    train_vocoder(harmonic_folder, run, tiny(**{**config["train"], "max_steps": 3, "save_every": 3}))
    with pytest.raises(ClipsonicError, match="pass --resume"):
        train_vocoder(harmonic_folder, run, config)
    with pytest.raises(ClipsonicError, match=r"trained with lr=0.001; resuming with lr=0.0005"):
        train_vocoder(harmonic_folder, run, tiny(**{**config["train"], "lr": 5e-4}), resume=True)
    train_vocoder(harmonic_folder, run, config, resume=True)
    assert list_checkpoints(run)[0][0] == 6
    _assert_same(_ckpt(straight, 6), _ckpt(run, 6))
    # each invocation also validates at its last step (3 here); the steps both runs validated agree
    resumed = {r["step"]: r["mel_l1"] for r in read_metrics(run, "val")}
    straight_vals = {r["step"]: r["mel_l1"] for r in read_metrics(straight, "val")}
    assert {0, 6} <= resumed.keys() & straight_vals.keys()
    assert np.allclose([resumed[s] for s in (0, 6)], [straight_vals[s] for s in (0, 6)])


def test_sigkill_then_resume_matches_straight_run(harmonic_folder, straight_run, tmp_path):
    straight, _ = straight_run
    run = tmp_path / "run"
    args = [sys.executable, "-m", "clipsonic", "-q", "train-vocoder", str(harmonic_folder), "--out", str(run),
            "--preset", "tiny", "--max-steps", "6", "--save-every", "2", "--keep-last", "10",
            "--batch-size", "2", "--segment-size", "2048"]
    # as many torch threads as this process, whose straight run it must match: sums add up in the same order
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(args + ["--val-every", "100"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 240
    try:
        while not (run / "checkpoints" / "step-0000002").is_dir():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    done = [step for step, _ in list_checkpoints(run)]
    assert 2 in done and 6 not in done  # killed mid-run
    assert main(["-q"] + args[4:] + ["--val-every", "100", "--resume"]) == 0
    _assert_same(_ckpt(straight, 6), _ckpt(run, 6))
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_nan_loss_stops_naming_the_step(harmonic_folder, tmp_path):
    config = tiny(max_steps=5, lr=1e6, **SMALL)  # a learning rate that must diverge
    with pytest.raises(ClipsonicError, match=r"step \d+: non-finite (loss|gradient norm)"):
        train_vocoder(harmonic_folder, tmp_path / "run", config)


def test_folder_faults_are_counted_or_refused(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipsonicError, match="no usable audio files"):
        train_vocoder(tmp_path / "empty", tmp_path / "r1", tiny(max_steps=1, **SMALL))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "junk.wav").write_text("not audio")
    with pytest.raises(ClipsonicError, match=r"1 unreadable: junk.wav"):
        train_vocoder(bad, tmp_path / "r2", tiny(max_steps=1, **SMALL))
    sf.write(bad / "nan.wav", np.full(8000, np.nan, np.float32), 16000, subtype="FLOAT")
    sf.write(bad / "short.flac", harmonic(0.05), 16000)
    sf.write(bad / "good.wav", harmonic(1.0, sample_rate=22050), 22050)
    caplog.set_level("INFO")
    run = train_vocoder(bad, tmp_path / "r3", tiny(max_steps=2, **SMALL))
    assert list_checkpoints(run)[0][0] == 2
    text = caplog.text
    assert "skipped junk.wav" in text and "skipped nan.wav: contains NaN" in text
    assert "2 training items" in text and "2 skipped" in text and "1 shorter than a 2048-sample segment" in text


def _write_dataset(root, with_flac: bool):
    import webdataset as wds

    from clipsonic.data.dataset import DatasetInfo
    from clipsonic.encoders import ClipModelRef

    root.mkdir()
    splits = {}
    for split, n in (("train", 6), ("test", 2)):
        name = f"{split}-000000.tar"
        with wds.TarWriter(str(root / name), encoder=False) as tar:
            for i in range(n):
                sample = {"__key__": f"{split}{i:03d}", "json": b"{}"}
                if with_flac:
                    buf = io.BytesIO()
                    sf.write(buf, harmonic(1.0, seed=10 + i), 16000, format="FLAC")
                    sample["flac"] = buf.getvalue()
                tar.write(sample)
        splits[split] = {"shards": [name], "clips": n}
    info = DatasetInfo(root=root, mel=MelConfig(), clip=ClipModelRef("tiny", 8, "0" * 16), frames_per_clip=1,
                       splits=splits, counts={}, options={})
    info.save()
    return root


def test_dataset_directory_flac_and_its_absence(tmp_path, caplog):
    caplog.set_level("INFO")
    data = _write_dataset(tmp_path / "ds", with_flac=True)
    assert main(["train-vocoder", str(data), "--out", str(tmp_path / "run"), "--preset", "tiny", "--max-steps", "2",
                 "--batch-size", "2", "--segment-size", "2048"]) == 0
    assert "6 training items, 2 validation" in caplog.text
    assert load_vocoder(tmp_path / "run" / "vocoder").mel_config == MelConfig()
    nodata = _write_dataset(tmp_path / "noflac", with_flac=False)
    with pytest.raises(ClipsonicError, match="--keep-audio"):
        train_vocoder(nodata, tmp_path / "run2", tiny(max_steps=1, **SMALL))


def test_export_from_checkpoint(straight_run, tmp_path):
    straight, _ = straight_run
    assert main(["export", str(straight), "--step", "2", "--out", str(tmp_path / "v2")]) == 0
    a, b = load_vocoder(tmp_path / "v2"), load_vocoder(straight / "vocoder")
    mel = torch.randn(1, 64, 4) - 5
    assert not torch.equal(a(mel), b(mel))  # step 2 differs from the final step 6
