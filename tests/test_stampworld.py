"""StampWorld on a fake stamps folder holding every asset of the table (tiny real PNGs and OGGs), and one
test on the real Debian package when it is installed."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image
from support.stamps import make_stamps

from clipsonic.data.sources import collect_sources
from clipsonic.errors import ClipsonicError
from clipsonic.media import load_audio, probe
from clipsonic.stampworld import (
    CONCEPT_NAMES,
    CONCEPTS,
    DEFAULT_STAMPS,
    PACKAGE,
    StampWorldConfig,
    asset_manifest,
    captions,
    event_audio,
    find_stamps,
    load_picture,
    load_recording,
    make_clip,
    render_stampworld,
)
from clipsonic.stampworld.__main__ import main
from clipsonic.stampworld.assets import asset_paths

FAST = StampWorldConfig(size=16, fps=1, seconds=1.024)  # for counting: 16384 samples, one frame
SMALL = StampWorldConfig(size=32, fps=2)


@pytest.fixture(scope="module")
def stamps(tmp_path_factory):
    return make_stamps(tmp_path_factory.mktemp("stamps"))


def test_find_stamps_names_the_missing_file_and_the_fix(stamps, tmp_path, monkeypatch):
    assert find_stamps(stamps) == stamps
    monkeypatch.setenv("CLIPSONIC_STAMPS", str(stamps))
    assert find_stamps() == stamps
    with pytest.raises(ClipsonicError) as caught:
        find_stamps(tmp_path)
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "animals/mammals/dogs/dog.ogg") in message
    assert f"sudo apt-get install {PACKAGE}" in message and "dpkg-deb -x" in message and "--stamps" in message


def test_concepts_and_captions():
    assert len(CONCEPTS) == 24 and len(set(CONCEPT_NAMES)) == 24
    vocabulary = {w for c in CONCEPTS for t in captions(c, "train") for w in t.split()}
    for c in CONCEPTS:
        train, test = captions(c, "train"), captions(c.name, "test")
        assert len(test) >= 8 and not set(train) & set(test)
        assert all(set(t.split()) <= vocabulary for t in test)
        for text in train + test:  # every caption names its own concept and no other
            assert [o.name for o in CONCEPTS if any(re.search(rf"\b{n}\b", text) for n in o.nouns)] == [c.name]
            assert not re.search(r"\ba [aeiou]", text), text
    assert "an owl hooting" in captions("owl") and "an oinking pig" in captions("pig", "test")
    with pytest.raises(ClipsonicError, match="unknown StampWorld concept"):
        captions("unicorn")


def test_clips_are_a_pure_function_of_their_numbers(stamps):
    config = StampWorldConfig()
    frames, audio, events = make_clip(config, "train", 0, 0, stamps)
    assert frames.shape == (33, 64, 64, 3) and frames.dtype == np.uint8
    assert audio.shape == (65536,) and audio.dtype == np.float32
    again = make_clip(config, "train", 0, 0, stamps)
    assert np.array_equal(frames, again[0]) and np.array_equal(audio, again[1]) and events == again[2]
    other = make_clip(config, "train", 0, 1, stamps)
    assert not np.array_equal(frames, other[0]) and not np.array_equal(audio, other[1])
    assert not np.array_equal(frames[0], frames[-1]), "the picture drifts"


def test_events_lie_inside_the_clip_and_rebuild_its_sound(stamps):
    for index in range(0, 24, 3):
        for number in range(2):
            _, audio, events = make_clip(SMALL, "train", index, number, stamps)
            assert events[0]["concept"] == CONCEPT_NAMES[index] and 1 <= len(events) <= SMALL.max_events + 1
            rebuilt = np.zeros(len(audio))
            for e in events:
                start, piece = round(e["onset_s"] * 16000), event_audio(stamps, e)
                assert 0 <= e["onset_s"] and e["onset_s"] + e["seconds"] <= SMALL.seconds + 1e-9
                rebuilt[start:start + len(piece)] += piece
            background = audio - rebuilt
            level = 20 * np.log10(np.sqrt(np.mean(background**2)))
            assert -46 < level < -29  # pink or brown noise at -45..-30 dBFS
            assert -9.5 < 20 * np.log10(np.abs(rebuilt).max()) < -2.5  # the events peak at -6 ± 3 dBFS
            for e in events:  # the event is heard where it says: its window is well above the background
                window = slice(round(e["onset_s"] * 16000), round((e["onset_s"] + e["seconds"]) * 16000))
                assert np.sqrt(np.mean(audio[window] ** 2)) > 1.5 * np.sqrt(np.mean(background[window] ** 2))
    siren = [e for n in range(3) for e in make_clip(SMALL, "train", CONCEPT_NAMES.index("fire_truck"), n, stamps)[2]]
    assert any(e["seconds"] == SMALL.seconds and e["offset_s"] > 0 for e in siren), "long recordings are excerpted"


def test_test_clips_show_test_pictures(stamps):
    for index, c in enumerate(CONCEPTS):
        train = make_clip(SMALL, "train", index, 0, stamps)[2][0]
        test = make_clip(SMALL, "test", index, 0, stamps)[2][0]
        assert train["picture"] in c.train_pictures
        assert test["picture"] in (c.test_pictures or c.train_pictures)
        assert test["recording"] in c.recordings


def test_two_source_clips_occur_at_their_fraction(stamps):
    two = 0
    for number in range(10):
        for index in range(24):
            events = make_clip(FAST, "train", index, number, stamps)[2]
            concepts = [e["concept"] for e in events]
            assert concepts[0] == CONCEPT_NAMES[index]
            others = set(concepts) - {CONCEPT_NAMES[index]}
            assert len(others) <= 1 and concepts.count(next(iter(others), None)) <= 1
            two += bool(others)
    assert 0.08 < two / 240 < 0.23  # 0.15 expected; binomial σ ≈ 0.023
    only = FAST.replace(concepts=("dog", "cow"), two_source_fraction=1.0)
    assert {e["concept"] for n in range(5) for e in make_clip(only, "test", 0, n, stamps)[2]} == {"dog", "cow"}


def test_render_writes_the_world_layout(stamps, tmp_path, capsys):
    config = StampWorldConfig(size=32, concepts=("dog", "penguin"), train_videos_per_concept=1,
                              test_videos_per_concept=1)
    out = tmp_path / "world"
    assert main([str(out), "--stamps", str(stamps), "--size", "32", "--concepts", "dog,penguin",
                 "--train-videos-per-concept", "1", "--test-videos-per-concept", "1"]) == 0
    manifest = out / "manifest.csv"
    assert capsys.readouterr().out.strip() == str(manifest)
    items, problems = collect_sources(manifest)
    assert problems == [] and sorted((it.label, it.split) for it in items) == [
        ("dog", "test"), ("dog", "train"), ("penguin", "test"), ("penguin", "train")]
    info = probe(out / "videos/test/penguin_0.mp4")
    assert (info.video_codec, info.audio_codec, info.video_width, info.audio_sample_rate) == ("h264", "aac", 32, 16000)
    assert 4.05 <= info.duration <= 4.2 and len(load_audio(out / "videos/test/penguin_0.mp4")) == 65536
    table = json.loads((out / "world.json").read_text())
    assert (table["format"], table["version"]) == ("clipsonic-stampworld", 1)
    assert StampWorldConfig.from_dict(table["config"]) == config
    assert [c["name"] for c in table["concepts"]] == ["dog", "penguin"]
    assert sorted(table["clips"]) == sorted(str(it.path.relative_to(out)) for it in items)
    assert table["clips"]["videos/test/penguin_0.mp4"] == make_clip(config, "test", 10, 0, stamps)[2]
    assert len(table["assets"]) == len(asset_paths()) and all(len(a["sha256"]) == 64 for a in table["assets"])
    pictures = sorted((out / "captions").glob("*.png"))
    assert [p.name for p in pictures] == [f"{c}_{n}.png" for c in ("dog", "penguin") for n in range(4)]
    assert pictures[-1].with_suffix(".txt").read_text().splitlines() == captions("penguin", "train")
    assert Image.open(pictures[0]).size == (32, 32)
    again = render_stampworld(tmp_path / "again", config, stamps)
    names = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(again.parent) for p in again.parent.rglob("*") if p.is_file())
    assert all((out / n).read_bytes() == (again.parent / n).read_bytes() for n in names), "not byte-identical"
    assert main([str(tmp_path / "other"), "--stamps", str(tmp_path / "nowhere")]) == 2
    assert "apt-get install" in capsys.readouterr().err


@pytest.mark.skipif(not DEFAULT_STAMPS.is_dir(), reason=f"needs `sudo apt-get install {PACKAGE}`")
def test_the_real_package():
    stamps = find_stamps(DEFAULT_STAMPS)
    for rel, kind, _, _ in asset_paths():
        if kind == "recording":
            assert len(load_recording(stamps, rel)) > 0.3 * 16000, rel
        else:
            assert load_picture(stamps, rel).getchannel("A").getextrema()[0] == 0, f"{rel} has no transparency"
    rows = asset_manifest(stamps)
    assert all(row["licence"] == "GPL-2" for row in rows)
    assert max(r["seconds"] for r in rows if r["kind"] == "recording") > 4.096  # the siren is excerpted
    for index in range(len(CONCEPTS)):
        frames, audio, events = make_clip(SMALL, "test", index, 0, stamps)
        assert frames.shape == (9, 32, 32, 3) and audio.shape == (65536,) and np.isfinite(audio).all()
        assert 0.2 < np.abs(audio).max() < 0.8
