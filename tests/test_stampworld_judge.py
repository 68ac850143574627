"""StampWorld's judge: trained on a fake stamps folder it learns the concepts and refuses tones; it saves and loads
exactly; the shipped judge refuses pure tones and noise, and on the real package (when installed) names the
concepts of held-out test clips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soxr
from support.stamps import make_stamps

from clipsonic.errors import ClipsonicError
from clipsonic.stampworld import DEFAULT_STAMPS, StampWorldConfig, make_clip
from clipsonic.stampworld.assets import CONCEPT_NAMES
from clipsonic.stampworld.judge import JUDGE_DIR, JudgeConfig, StampJudge, envelope_tone, impostor, train_judge

WORLD = StampWorldConfig(concepts=("dog", "cow", "owl", "cello"), seconds=1.024, size=16, fps=1)
RATE = 16000


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    stamps = make_stamps(tmp_path_factory.mktemp("stamps"))
    out = tmp_path_factory.mktemp("judge") / "judge"
    config = JudgeConfig(clips_per_concept=16, impostors=32, steps=120, batch_size=32, crop_frames=(32,), width=12, lr=8e-3)
    return train_judge(out, stamps, WORLD, config), out, stamps


def test_trained_judge_names_held_out_clips_and_refuses_tones(trained):
    judge, _, stamps = trained
    index = {name: CONCEPT_NAMES.index(name) for name in WORLD.concepts}
    clips = [(name, make_clip(WORLD, "test", index[name], n, stamps)[1]) for name in WORLD.concepts for n in range(3)]
    answers = judge.classify(np.stack([a for _, a in clips]), RATE)
    assert np.mean([a == name for a, (name, _) in zip(answers, clips, strict=True)]) >= 0.75, answers
    tones = np.stack([0.3 * np.sin(2 * np.pi * f * np.arange(16384) / RATE) for f in (150, 400, 900, 2000, 3500)])
    assert judge.classify(tones, RATE).count(None) >= 3  # most: the fake concepts are chirps, tones themselves


def test_saved_judge_loads_exactly_and_checks_its_input(trained, tmp_path):
    judge, out, _ = trained
    again = StampJudge.from_pretrained(out)
    rng = np.random.default_rng(0)
    audio = np.stack([impostor(rng, 16384) for _ in range(3)])
    mels = again.mel_config
    assert again.labels == WORLD.concepts and again.config == judge.config and mels.sample_rate == RATE
    import torch

    from clipsonic.audio import mel_spectrogram

    logmel = mel_spectrogram(torch.from_numpy(audio), mels)
    assert torch.equal(judge.probabilities(logmel), again.probabilities(logmel))
    resampled = np.stack([soxr.resample(a, RATE, 44100) for a in audio])
    assert len(again.classify(resampled, 44100)) == 3  # any rate, resampled to the judge's
    meta = json.loads((out / "config.json").read_text())
    assert meta["format"] == "clipsonic-stampworld-judge" and meta["report"]["train_clips"] == 4 * 16 + 32
    with pytest.raises(ClipsonicError, match="at least 0.256 s"):
        again.classify(audio[:, :2000], RATE)
    with pytest.raises(ClipsonicError, match="holds no judge"):
        StampJudge.from_pretrained(tmp_path)


def test_shipped_judge_refuses_pure_tones_and_noise():
    judge = StampJudge.from_pretrained()
    assert judge.labels == CONCEPT_NAMES and (JUDGE_DIR / "model.safetensors").stat().st_size < 2_000_000
    t = np.arange(65536) / RATE
    freqs = np.geomspace(100, 4000, 24)
    sines = np.stack([0.3 * np.sin(2 * np.pi * f * t) for f in freqs])
    pulsed = sines * (np.sin(2 * np.pi * 3 * t) > 0)  # the right rhythm of nothing in particular
    rng = np.random.default_rng(1)
    noise = np.stack([impostor(rng, 65536) for _ in range(24)])
    for what, audio in (("sines", sines), ("pulsed sines", pulsed), ("impostors", noise)):
        answers = judge.classify(audio.astype(np.float32), RATE)
        assert answers.count(None) >= 0.95 * len(answers), (what, answers)


@pytest.mark.skipif(not (DEFAULT_STAMPS / "animals").is_dir(),
                    reason="needs Debian's tuxpaint-stamps-default (sudo apt-get install tuxpaint-stamps-default)")
def test_shipped_judge_on_the_real_package():
    """Two held-out test clips per concept (seed 7, never rendered for training), and a tone that follows each
    clip's loudness envelope at 440 Hz (rhythm without timbre)."""
    judge, world = StampJudge.from_pretrained(), StampWorldConfig(seed=7, size=16, fps=1)
    clips = [(name, make_clip(world, "test", k, n, DEFAULT_STAMPS)[1]) for k, name in enumerate(CONCEPT_NAMES)
             for n in range(2)]
    audio = np.stack([a for _, a in clips])
    answers = judge.classify(audio, RATE)
    assert np.mean([a == name for a, (name, _) in zip(answers, clips, strict=True)]) >= 0.9, answers
    follow = np.stack([envelope_tone(a, 440.0) for a in audio])
    assert judge.classify(follow, RATE).count(None) >= 0.9 * len(follow)


def test_evaluate_names_the_judges():
    from clipsonic.cli.evaluate import CLASSIFIERS

    assert CLASSIFIERS["stampworld"]().labels == CONCEPT_NAMES
    assert CLASSIFIERS["sonicworld"]().strict and not CLASSIFIERS["sonicworld-spectrum"]().strict


def test_judge_command_refuses_a_missing_package_in_one_line(tmp_path, capsys):
    from clipsonic.stampworld.judge import main

    assert main(["--out", str(tmp_path / "judge"), "--stamps", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "apt-get install tuxpaint-stamps-default" in err
    assert not (tmp_path / "judge").exists()
