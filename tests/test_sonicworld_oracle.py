"""clipsonic.sonicworld.oracle: the judge hears spectrum, timbre and rhythm, so only the whole sound counts."""

from __future__ import annotations

import numpy as np
import pytest

from clipsonic.audio import griffin_lim
from clipsonic.errors import ClipsonicError
from clipsonic.media import load_audio
from clipsonic.sonicworld import CONCEPTS, NONE, OracleClassifier, WorldConfig, make_clip
from clipsonic.sonicworld.oracle import RHYTHM_NAMES, TIMBRE_NAMES
from clipsonic.sonicworld.video import write_mp4
from clipsonic.sonicworld.world import RHYTHMS, synthesize
from clipsonic.vocoder.vocoders import GriffinLimConfig

ONE_CLIP = 16384  # 1.024 s: 32 frames, the built-in model's clip
EVERY = np.arange(len(CONCEPTS))


@pytest.fixture(scope="module")
def oracle():
    return OracleClassifier()


@pytest.fixture(scope="module")
def lenient():
    return OracleClassifier(strict=False)


def _clips(seed: int, per_concept: int) -> tuple[np.ndarray, np.ndarray]:
    config = WorldConfig(seed=seed)
    labels = np.repeat(EVERY, per_concept)
    audio = np.stack([make_clip(config, "train", int(k), i % per_concept)[1] for i, k in enumerate(labels)])
    return audio, labels


def _played(pairs: list[tuple[int, str, str]], seed: int, samples: int = ONE_CLIP) -> np.ndarray:
    """One jittered clip ``[B, samples]`` per (concept, timbre, rhythm): the concept's f0 with any sound."""
    rng = np.random.default_rng(seed)
    return np.stack([synthesize(CONCEPTS[k].f0, timbre, rhythm, samples, rng) for k, timbre, rhythm in pairs])


# --- the world's own sounds are heard --------------------------------------------------------

def test_oracle_names_clean_clips(oracle):
    audio, labels = _clips(seed=11, per_concept=5)
    scores = oracle.scores(oracle.mels(audio))
    hearing = oracle.hear(oracle.mels(audio))
    assert (oracle.classify_audio(audio) == labels).mean() >= 0.99
    assert scores.max(axis=1).min() > 0.9
    assert [RHYTHM_NAMES[r] for r in hearing.rhythm] == [CONCEPTS[k].rhythm for k in labels]
    assert [TIMBRE_NAMES[t] for t in hearing.timbre] == [CONCEPTS[k].timbre for k in labels]


def test_oracle_names_decoded_test_videos_and_their_griffin_lim_resynthesis(oracle, tmp_path):
    """A 1.024-s test clip per concept through AAC in mp4 and back, then through Griffin-Lim as the default
    vocoder runs it: both must still be their concept."""
    config = WorldConfig(seconds=ONE_CLIP / 16000)
    decoded = []
    for k in EVERY:
        frames, audio = make_clip(config, "test", int(k), 0)
        write_mp4(tmp_path / f"{k}.mp4", frames, audio, fps=config.fps)
        sound = load_audio(tmp_path / f"{k}.mp4")[:ONE_CLIP]
        decoded.append(np.pad(sound, (0, ONE_CLIP - len(sound))))
    decoded = np.stack(decoded)
    assert list(oracle.classify_audio(decoded)) == list(EVERY)
    resynthesised = griffin_lim(oracle.mels(decoded), **GriffinLimConfig().to_dict())
    assert list(oracle.classify_audio(resynthesised.numpy())) == list(EVERY)


def test_oracle_names_griffin_lim_resynthesis_of_long_clips(oracle):
    audio, labels = _clips(seed=12, per_concept=2)  # 3.072 s: three rhythm windows each
    resynthesised = griffin_lim(oracle.mels(audio), n_iter=16)
    assert (oracle.classify_audio(resynthesised.numpy()) == labels).mean() >= 0.99


def test_oracle_judges_rhythm_window_by_window_in_long_and_short_clips(oracle):
    long = _played([(k, c.timbre, c.rhythm) for k, c in enumerate(CONCEPTS)], seed=3, samples=10 * 16000)
    assert list(oracle.classify_audio(long)) == list(EVERY)
    # 12 frames are too few to tell a rhythm: spectrum and timbre alone decide, and a sine still fails
    short = _played([(0, "saw", "steady"), (0, "sine", "steady"), (2, "reed", "steady")], seed=4, samples=6144)
    hearing = oracle.hear(oracle.mels(short))
    assert list(hearing.rhythm) == [-1, -1, -1] and np.isnan(hearing.rhythm_distance).all()
    assert list(hearing.verdict) == [0, NONE, 2]


# --- impostors are not ------------------------------------------------------------------------

def test_a_sine_at_a_concepts_pitch_no_longer_counts(oracle, lenient):
    """A rhythm-free sine at each fundamental: the spectral matched filter alone (the old oracle) named every
    one; the strict oracle hears a sine (or, for white_stripes' own sine, no tremolo) and names none."""
    sines = oracle.mels(_played([(k, "sine", "steady") for k in EVERY], seed=5))
    assert list(lenient.classify_mels(sines)) == list(EVERY)
    assert list(oracle.classify_mels(sines)) == [NONE] * len(CONCEPTS)
    hearing = oracle.hear(sines)
    assert list(hearing.concept) == list(EVERY)  # the pitch is still right
    assert {TIMBRE_NAMES[t] for t in hearing.timbre} == {"sine"} and {RHYTHM_NAMES[r] for r in hearing.rhythm} == {
        "steady"}


def test_the_right_timbre_with_the_wrong_rhythm_is_rejected(oracle):
    """Every concept's timbre with every rhythm of another kind or rate (red_circle's saw pulsed at 3 Hz,
    blue_square's square held steady, tremolo 3 vs 6 Hz, …): the oracle hears the rhythm played."""
    pairs = [(k, c.timbre, r) for k, c in enumerate(CONCEPTS) for r in RHYTHM_NAMES
             if r != c.rhythm and not RHYTHMS[r][0] == RHYTHMS[c.rhythm][0] == "steady"]
    assert (0, "saw", "pulse3") in pairs and (1, "square", "steady") in pairs and (7, "sine", "tremolo6") in pairs
    hearing = oracle.hear(oracle.mels(_played(pairs, seed=6)))
    assert [RHYTHM_NAMES[r] for r in hearing.rhythm] == [r for _, _, r in pairs]
    assert set(hearing.verdict) == {NONE} and list(hearing.concept) == [k for k, _, _ in pairs]


def test_the_right_rhythm_with_the_wrong_timbre_is_rejected(oracle):
    pairs = [(k, t, c.rhythm) for k, c in enumerate(CONCEPTS) for t in TIMBRE_NAMES if t != c.timbre]
    hearing = oracle.hear(oracle.mels(_played(pairs, seed=7)))
    heard = [TIMBRE_NAMES[t] for t in hearing.timbre]
    # Each is heard as the timbre played, but at 2 kHz only three partials stay below 7.5 kHz and a saw's
    # (1, 1/2, 1/3) is a soft tone's (1, 1/2, 1/4): never as the concept's own.
    assert np.mean([h == t for h, (_, t, _) in zip(heard, pairs, strict=True)]) >= 0.95
    assert not any(h == CONCEPTS[k].timbre for h, (k, _, _) in zip(heard, pairs, strict=True))
    assert set(hearing.verdict) == {NONE}


def test_oracle_on_silence_and_noise(oracle, lenient):
    assert list(oracle.classify_audio(np.zeros((2, 16000), np.float32))) == [NONE, NONE]
    noise = np.random.default_rng(0).standard_normal((16, 16000)).astype(np.float32) * 0.1
    assert oracle.scores(oracle.mels(noise)).max() < 0.7  # clean clips score > 0.9
    assert NONE not in set(lenient.classify_audio(noise))  # the spectrum alone names noise ...
    assert set(OracleClassifier(min_score=0.7, strict=False).classify_audio(noise)) == {NONE}  # ... unless floored
    assert set(oracle.classify_audio(noise)) == {NONE}  # the whole sound does not fit any concept
    assert oracle.classify_audio(noise[0]).shape == (1,)
    with pytest.raises(ClipsonicError, match="resample"):
        oracle.classify_audio(noise, sample_rate=22050)
    with pytest.raises(ClipsonicError, match="log-mels"):
        oracle.hear(np.zeros((2, 80, 32)))
