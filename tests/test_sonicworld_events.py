"""clipsonic.sonicworld event clips: the sound and its object only during timed events, recorded in world.json."""

from __future__ import annotations

import hashlib
import itertools
import json

import numpy as np
import pytest

from clipsonic.errors import ClipsonicError
from clipsonic.evaluate.sync import av_offset, detect_onsets, onset_envelope, onset_f1, visual_activity
from clipsonic.media import load_audio
from clipsonic.sonicworld import CONCEPT_NAMES, WorldConfig, make_clip, render_world
from clipsonic.sonicworld.events import gap_frames, opacity
from clipsonic.sonicworld.world import clip_events, clip_rng, render_frames

EVENTS = WorldConfig(events=True)
RATE, FPS = EVENTS.sample_rate, EVENTS.fps


def test_default_clips_are_unchanged():
    # sha256 of these clips and picture as rendered before event clips existed
    digest, config = hashlib.sha256(), WorldConfig(seed=7)
    for split, index, number in [("train", 0, 0), ("train", 3, 1), ("test", 7, 2), ("train", 5, 0)]:
        frames, audio = make_clip(config, split, index, number)
        digest.update(frames.tobytes())
        digest.update(audio.tobytes())
    digest.update(render_frames(2, clip_rng(config, "captions", 2, 0)[0], 64)[0].tobytes())
    assert digest.hexdigest() == "55321d30aa95e32649db2cc572850c74369719831902a9d7a63a32ecd81705a8"
    assert clip_events(config, "train", 0, 0) == []


def test_events_lie_on_the_frame_grid_apart():
    plans = [(k, clip_events(EVENTS, "train", k, n)) for k in range(8) for n in range(50)]
    assert clip_events(EVENTS, "train", 3, 7) == plans[3 * 50 + 7][1]  # a function of (seed, split, concept, number)
    gap = gap_frames(FPS) / FPS
    for k, events in plans:
        onsets = [e["onset_s"] for e in events]
        assert onsets == sorted(onsets) and np.all(np.diff(onsets) >= gap)
        names = [e["concept"] for e in events]
        assert CONCEPT_NAMES[k] in names
        assert len(set(names)) <= 2 and all(1 <= names.count(n) <= 3 for n in set(names))
        for e in events:
            assert e["onset_s"] * FPS == round(e["onset_s"] * FPS) >= 1 and 2 <= e["seconds"] * FPS <= 6
            assert e["onset_s"] + e["seconds"] <= EVENTS.seconds
        for name in set(names):  # one concept: at least the gap of silence between its events
            own = [e for e in events if e["concept"] == name]
            assert all(x["onset_s"] + x["seconds"] + gap <= y["onset_s"] for x, y in itertools.pairwise(own))
    two = np.mean([len({e["concept"] for e in events}) == 2 for _, events in plans])
    assert 0.14 < two < 0.26  # two_source_fraction 0.2 (measured 0.19)
    with pytest.raises(ClipsonicError, match="event_seconds"):
        WorldConfig(events=True, event_seconds=(0.01, 0.1))


def test_objects_show_only_during_their_events():
    events = [{"concept": "a", "onset_s": 0.25, "seconds": 0.5}, {"concept": "b", "onset_s": 0.5, "seconds": 0.25}]
    alpha = opacity(events, ["a", "b"], 8, 8)  # frames of 0.125 s
    np.testing.assert_allclose(alpha[0], [0, 0, 0.98, 1, 0.82, 0.18, 0, 0], atol=0.01)  # appears, decays over 0.25 s
    np.testing.assert_allclose(alpha[1], [0, 0, 0, 0, 0.80, 0.18, 0, 0], atol=0.01)


def test_event_clips_sound_and_show_only_during_events():
    f1, offsets, correlations = [], [], []
    for index in range(10):
        frames, audio = make_clip(EVENTS, "train", index % 8, index // 8)
        events = clip_events(EVENTS, "train", index % 8, index // 8)
        inside, outside = np.zeros(len(audio), bool), np.ones(len(audio), bool)
        for e in events:
            start, end = round(e["onset_s"] * RATE), round((e["onset_s"] + e["seconds"]) * RATE)
            inside[start + 80:end - 80], outside[start - 80:end + 80] = True, False
        assert 10 * np.log10(np.mean(audio[inside] ** 2) / np.mean(audio[outside] ** 2)) > 30  # measured ≥ 42 dB
        envelope, rate = onset_envelope(audio, RATE)
        f1.append(onset_f1(detect_onsets(envelope, rate), [e["onset_s"] for e in events])["f1"])
        # the picture changes most where an object appears
        activity = visual_activity(frames)
        onset_frames = [round(e["onset_s"] * FPS) for e in events]
        for f in onset_frames:  # a local peak well above the pixel noise's ~4.5 levels (measured: +2.4)
            assert activity[f] == activity[f - 1:f + 2].max() and activity[f] > np.median(activity) + 1.5
        assert activity[0] == 0 and not np.array_equal(frames[0], frames[onset_frames[0]])
        # av_offset sees onsets in [0.625, 2.57] s only (its ±0.5-s lags stay inside the clip)
        if any(0.625 <= t <= EVENTS.seconds - 0.5 for t in [e["onset_s"] for e in events]):
            offset, correlation = av_offset(envelope, rate, activity, FPS)
            offsets.append(offset)
            correlations.append(correlation)
    assert np.mean(f1) >= 0.9 and min(f1) >= 0.5, f1  # measured 1.0 on 40 clips
    assert len(offsets) >= 7 and np.abs(offsets).max() <= 1 / FPS, offsets
    assert min(correlations) > 0.5, correlations


def test_rendered_event_world_records_its_events(tmp_path):
    config = WorldConfig(events=True, size=16, train_videos_per_concept=1, test_videos_per_concept=0,
                         caption_images_per_concept=0)
    manifest = render_world(tmp_path, config)
    table = json.loads((tmp_path / "world.json").read_text())
    paths = [line.split(",")[0] for line in manifest.read_text().splitlines()[1:]]
    assert WorldConfig.from_dict(table["config"]) == config and sorted(table["clips"]) == sorted(paths)
    assert table["clips"]["videos/train/blue_square_0.mp4"] == clip_events(config, "train", 1, 0)
    # the decoded sound is quiet before the first onset and loud after it
    events = table["clips"]["videos/train/blue_square_0.mp4"]
    sound = load_audio(tmp_path / "videos/train/blue_square_0.mp4")
    onset = round(events[0]["onset_s"] * RATE)
    before, after = sound[onset - 1600:onset - 200], sound[onset + 200:onset + 1600]
    assert 20 * np.log10(np.std(after) / np.std(before)) > 30
    plain = render_world(tmp_path / "plain", config.replace(events=False, train_videos_per_concept=0))
    assert "clips" not in json.loads((plain.parent / "world.json").read_text())
