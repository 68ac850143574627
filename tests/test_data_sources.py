import json

import pytest

from clipsonic.data.sources import collect_sources, hash_split, sample_key
from clipsonic.errors import ClipsonicError


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_folder_recursive_with_labels(tmp_path):
    touch(tmp_path / "dog" / "a.mp4")
    touch(tmp_path / "cat" / "b.WEBM")
    touch(tmp_path / "cat" / "2024" / "c.mkv")  # deeper folders belong to their class
    touch(tmp_path / "notes.txt")
    touch(tmp_path / ".hidden.mp4")
    touch(tmp_path / ".cache" / "d.mp4")
    items, problems = collect_sources(tmp_path)
    assert [(i.key, i.label, i.split) for i in items] == [
        ("cat/2024/c.mkv", "cat", None), ("cat/b.WEBM", "cat", None), ("dog/a.mp4", "dog", None)]
    assert problems == []


def test_empty_folder_and_missing_source(tmp_path):
    with pytest.raises(ClipsonicError, match="no video files"):
        collect_sources(tmp_path)
    with pytest.raises(ClipsonicError, match="no such file"):
        collect_sources(tmp_path / "nope")


def test_vggsound_csv_both_naming_schemes(tmp_path):
    videos = tmp_path / "vids"
    touch(videos / "abc_000030.mp4")  # pre-cut 10-s clip
    touch(videos / "sub" / "xyz.webm")  # full video, clip starts at 12 s
    csv = tmp_path / "vggsound.csv"
    csv.write_text("abc,30,dog barking,train\nxyz,12,playing piano,test\nmissing,5,cat,train\nbad,notanumber,x,train\nshort,1\n")
    items, problems = collect_sources(csv, video_dir=videos)
    by_key = {i.key: i for i in items}
    assert by_key["abc_000030"].start is None and by_key["abc_000030"].label == "dog barking"
    assert by_key["abc_000030"].split == "train"
    assert (by_key["xyz_000012"].start, by_key["xyz_000012"].duration) == (12.0, 10.0)
    assert by_key["xyz_000012"].split == "test"
    reasons = [p.reason for p in problems]
    assert len(problems) == 3
    assert "missing file" in reasons[0] and "not a number" in reasons[1] and "unreadable VGGSound row" in reasons[2]
    with pytest.raises(ClipsonicError, match="--video-dir"):
        collect_sources(csv)


def test_music_json(tmp_path):
    videos = tmp_path / "music"
    touch(videos / "flute" / "f1.mp4")
    touch(videos / "cello" / "c1.mkv")
    source = tmp_path / "MUSIC_solo_videos.json"
    source.write_text(json.dumps({"videos": {"flute": ["f1", "f2"], "cello": ["c1"]}}))
    items, problems = collect_sources(source, video_dir=videos)
    assert [(i.key, i.label, i.start) for i in items] == [("cello/c1", "cello", None), ("flute/f1", "flute", None)]
    assert len(problems) == 1 and "f2" in problems[0].reason
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ClipsonicError, match="not a MUSIC JSON"):
        collect_sources(bad, video_dir=videos)


def test_manifests_csv_and_jsonl(tmp_path):
    touch(tmp_path / "v" / "a.mp4")
    touch(tmp_path / "v" / "b.mp4")
    csv = tmp_path / "m.csv"
    csv.write_text("path,start,label,split\nv/a.mp4,2.5,rain,train\nv/b.mp4,,wind,\nv/gone.mp4,,x,train\nv/a.mp4,abc,y,train\n")
    items, problems = collect_sources(csv)
    assert [(i.key, i.start, i.label, i.split) for i in items] == [
        ("v/a.mp4@2.500", 2.5, "rain", "train"), ("v/b.mp4", None, "wind", None)]
    assert [p.reason for p in problems] == ["missing file", "start/duration not numbers: 'abc', None"]
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"path": "v/a.mp4", "label": "rain"}\nnot json\n{"nopath": 1}\n')
    items, problems = collect_sources(jsonl)
    assert [i.key for i in items] == ["v/a.mp4"] and len(problems) == 2


def test_duplicates_refused(tmp_path):
    touch(tmp_path / "v" / "a.mp4")
    csv = tmp_path / "m.csv"
    csv.write_text("path\nv/a.mp4\nv/a.mp4\n")
    with pytest.raises(ClipsonicError, match="duplicate"):
        collect_sources(csv)


def test_hash_split_and_keys_are_stable():
    keys = [f"video{i}.mp4" for i in range(2000)]
    splits = [hash_split(k, 0.1) for k in keys]
    assert splits == [hash_split(k, 0.1) for k in keys]
    assert 0.07 < splits.count("test") / len(keys) < 0.13
    assert all(hash_split(k, 0.0) == "train" for k in keys[:50])
    key = sample_key("dog/some.video.name.mp4@2.500", 3)
    assert "." not in key and "/" not in key and key.endswith("-0003")
    assert sample_key("a/b.mp4", 0) != sample_key("a_b.mp4", 0)
