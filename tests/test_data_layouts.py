"""Folder layouts of a video folder (clipsonic.data.sources._from_folder): flat, class folders, split folders, and the
mixed ones that are refused in one line; and every trainer reading the train split only."""

from __future__ import annotations

import io
import json

import pytest
import soundfile as sf
import webdataset as wds
from support.bad_input import Case, check
from support.media_files import write_video

from clipsonic.audio import MelConfig
from clipsonic.data.clips import ClipOptions
from clipsonic.data.dataset import DatasetInfo
from clipsonic.data.preprocess import PreprocessOptions, preprocess
from clipsonic.data.sources import collect_sources
from clipsonic.encoders import ClipModelRef
from clipsonic.vocoder.data import AudioCorpus


def _tree(root, *names):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    return root


@pytest.mark.parametrize("files, expected", [
    (["b.mp4", "a.mp4"], [("a.mp4", None, None), ("b.mp4", None, None)]),  # flat: unlabeled, hash split
    (["train/a.mp4", "test/b.mp4", "val/c.mp4"],
     [("test/b.mp4", None, "test"), ("train/a.mp4", None, "train"), ("val/c.mp4", None, "val")]),
    (["train/dog/a.mp4", "test/dog/x/b.mp4", "Validation/cat/c.mp4", "docs/readme.txt"],
     [("Validation/cat/c.mp4", "cat", "val"), ("test/dog/x/b.mp4", "dog", "test"),
      ("train/dog/a.mp4", "dog", "train")]),
    (["train/a.mp4", "test/dog/b.mp4"], [("test/dog/b.mp4", "dog", "test"), ("train/a.mp4", None, "train")]),
    (["train/a.mp4", ".trash/test/b.mp4"], [("train/a.mp4", None, "train")]),  # hidden folders do not count
], ids=["flat", "splits-flat", "splits-with-classes", "unlabeled-train-labeled-test", "split-and-hidden"])
def test_layouts(tmp_path, files, expected):
    items, problems = collect_sources(_tree(tmp_path, *files))
    assert [(i.key, i.label, i.split) for i in items] == expected and problems == []


def _pre(*extra: str) -> tuple[str, ...]:
    return ("-q", "preprocess", "{tmp}/videos", "--out", "{tmp}/ds", "--clip-model", "{tmp}/no_clip", *extra)


LAYOUTS = [  # (case, files of {tmp}/videos)
    (Case("preprocess-layout-videos-beside-split-folders", _pre(),
          r"videos: split folders \(test, train\) beside other videos or folders \(x\.mp4\); move those into the "
          r"split folders"),
     ["train/a.mp4", "test/b.mp4", "x.mp4"]),
    (Case("preprocess-layout-class-folders-beside-split-folders", _pre(),
          r"split folders \(train\) beside other videos or folders \(dog\); .*a class named like a split must be "
          r"renamed"), ["train/a.mp4", "dog/b.mp4"]),
    (Case("preprocess-layout-videos-beside-class-folders", _pre(),
          r"videos: videos directly inside \(a\.mp4\) beside class folders \(dog\); move them into a class folder"),
     ["a.mp4", "dog/b.mp4"]),
    (Case("preprocess-layout-mixed-inside-a-split", _pre(),
          r"videos/train: videos directly inside \(a\.mp4\) beside class folders \(cat, dog\)"),
     ["train/a.mp4", "train/dog/b.mp4", "train/cat/c.mp4", "test/d.mp4"]),
    (Case("preprocess-layout-two-val-folders", _pre(), r"two folders of the val split \(train, val, valid\)"),
     ["train/a.mp4", "val/b.mp4", "valid/c.mp4"]),
    (Case("preprocess-layout-test-fraction-with-split-folders", _pre("--test-fraction", "0.1"),
          r"videos: its split folders \(test, train\) set the splits; drop --test-fraction"),
     ["train/a.mp4", "test/b.mp4"]),
]


@pytest.mark.parametrize("case, files", LAYOUTS, ids=[c.id for c, _ in LAYOUTS])
def test_mixed_layouts_are_refused_in_one_line(case, files, tmp_path, capsys):
    _tree(tmp_path / "videos", *files)
    check(case, tmp_path, capsys)


def test_split_folders_become_splits_not_labels(tmp_path, tiny_clip_dir):
    """The bug of issue 13: train/ and test/ became two labels, everything in training."""
    for name, hz in (("train/dog/a.mp4", 440.0), ("train/cat/b.mp4", 660.0), ("test/dog/c.mp4", 440.0)):
        (tmp_path / "v" / name).parent.mkdir(parents=True, exist_ok=True)
        write_video(tmp_path / "v" / name, seconds=1.1, tone_hz=hz)
    options = PreprocessOptions(clip_model=str(tiny_clip_dir), clips=ClipOptions(keep_jpg=False))
    info = preprocess(tmp_path / "v", tmp_path / "ds", options=options, mel=MelConfig(clip_samples=16384))
    assert {s: info.num_clips(s) for s in info.splits} == {"test": 1, "train": 2}
    for split, labels in (("train", ["cat", "dog"]), ("test", ["dog"])):
        metas = [json.loads(s["json"]) for s in wds.WebDataset([str(p) for p in info.shard_paths(split)],
                                                                shardshuffle=False, empty_check=False)]
        assert sorted(m["label"] for m in metas) == labels and {m["split"] for m in metas} == {split}


def _flac_dataset(root, splits: dict[str, int]):
    root.mkdir()
    for split, n in splits.items():
        with wds.TarWriter(str(root / f"{split}-000000.tar"), encoder=False) as tar:
            for i in range(n):
                buf = io.BytesIO()
                sf.write(buf, [0.1] * 4096, 16000, format="FLAC")
                tar.write({"__key__": f"{split}{i}", "json": b"{}", "flac": buf.getvalue()})
    DatasetInfo(root=root, mel=MelConfig(), clip=ClipModelRef("tiny", 8, "0" * 16), frames_per_clip=1,
                splits={s: {"shards": [f"{s}-000000.tar"], "clips": n} for s, n in splits.items()}, counts={},
                options={}).save()
    return root


def test_the_vocoder_trains_on_the_train_split_only(tmp_path):
    """With train/, val/ and test/ folders the vocoder validates on val and never trains on the test clips."""
    corpus = AudioCorpus(_flac_dataset(tmp_path / "ds", {"train": 3, "val": 2, "test": 4}), 16000, num_val=8, seed=0)
    assert corpus.shards == (str(tmp_path / "ds" / "train-000000.tar"),) and corpus.num_train == 3
    assert sorted(c.key for c in corpus.val) == ["val0", "val1"]
