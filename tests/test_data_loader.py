"""The streaming loader: partitions across ranks and workers, determinism, exact resume, decoding."""

import io
import json
import logging
import shutil

import numpy as np
import pytest
import soundfile
import torch
import webdataset as wds
from support.synthetic_dataset import make_synthetic_dataset

from clipsonic.audio import normalize
from clipsonic.data.dataset import read_dataset_info
from clipsonic.data.loader import (
    StreamLayout,
    TrainStream,
    decode_flac,
    decode_npy,
    epoch_samples,
    iter_raw_samples,
    iter_split,
    load_fixed_samples,
)
from clipsonic.errors import ClipsonicError


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("ds") / "d", 22, 4, frames=16, shards=3, test_clips=3)


@pytest.fixture(scope="module")
def one_shard(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("ds1") / "d", 9, 3, frames=16, shards=1)


def layout(info, **kw):
    base = dict(shards=tuple(str(p) for p in info.shard_paths("train")), batch_size=4, seed=0, rank=0,
                world_size=1, num_workers=0, shuffle_buffer=5)
    return StreamLayout(**{**base, **kw})


def slot_keys(info, epoch, **kw):
    """{(rank, role): [keys in order]} over all reader slots of one epoch."""
    lay = layout(info, **kw)
    out = {}
    for rank in range(lay.world_size):
        lay_r = layout(info, **{**kw, "rank": rank})
        for role in range(lay.roles):
            out[(rank, role)] = [s["__key__"] for s in epoch_samples(lay_r, role, epoch)]
    return out


@pytest.mark.parametrize("world,workers", [(1, 1), (1, 3), (2, 1), (2, 2), (3, 2)])
def test_slots_partition_each_epoch(ds, world, workers):
    all_keys = {f"clip-{i:05d}" for i in range(22)}
    for epoch in (0, 1):
        parts = slot_keys(ds, epoch, world_size=world, num_workers=workers)
        flat = [k for keys in parts.values() for k in keys]
        assert len(flat) == len(set(flat)) == 22  # disjoint and complete
        assert set(flat) == all_keys
        assert all(parts.values())  # every slot reads something


def test_order_is_deterministic_and_changes_with_epoch_and_seed(ds):
    a = slot_keys(ds, 0, world_size=2, num_workers=1)
    assert a == slot_keys(ds, 0, world_size=2, num_workers=1)
    assert a != slot_keys(ds, 1, world_size=2, num_workers=1)
    assert a != slot_keys(ds, 0, world_size=2, num_workers=1, seed=1)


def test_one_shard_splits_by_sample_across_two_ranks(one_shard):
    parts = slot_keys(one_shard, 0, world_size=2, num_workers=1)
    assert sorted(len(v) for v in parts.values()) == [4, 5]
    assert set(parts[(0, 0)]).isdisjoint(parts[(1, 0)])


def take(stream, n):
    it = iter(stream)
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_exactly(ds, workers):
    lay = layout(ds, num_workers=workers)
    straight = take(TrainStream(ds, lay), 13)  # 13 × 4 samples > 2 epochs: batches straddle epochs
    first = TrainStream(ds, lay)
    head = take(first, 7)
    position = first.position()
    assert position["batches"] == 7 and position["samples"] == 28
    tail = take(TrainStream(ds, lay, position=position), 6)
    for got, want in zip(head + tail, straight, strict=True):
        assert got["keys"] == want["keys"]
        assert torch.equal(got["mel"], want["mel"]) and torch.equal(got["cond"], want["cond"])


def test_other_layout_restarts_epoch_with_warning(ds, caplog):
    first = TrainStream(ds, layout(ds))
    take(first, 8)  # into epoch 1
    with caplog.at_level(logging.WARNING, logger="clipsonic.data.loader"):
        resumed = TrainStream(ds, layout(ds, num_workers=2), position=first.position())
    assert "another data layout" in caplog.text
    assert resumed.roles == [(1, 0), (1, 0)] and resumed.batches == 8


def test_batches_decode_mel_and_one_of_k_embeddings(ds):
    raw = {s["__key__"]: s for s in iter_raw_samples(str(p) for p in ds.shard_paths("train"))}
    rows_used = set()
    for batch in take(TrainStream(ds, layout(ds, batch_size=11)), 4):
        assert batch["mel"].shape == (11, 1, 64, 16) and batch["mel"].dtype == torch.float32
        assert batch["cond"].shape == (11, 16)
        for key, mel, cond in zip(batch["keys"], batch["mel"], batch["cond"], strict=True):
            logmel = torch.from_numpy(decode_npy(raw[key]["mel.npy"]).astype(np.float32))
            torch.testing.assert_close(mel[0], normalize(logmel, ds.mel))
            clip = torch.from_numpy(decode_npy(raw[key]["clip.npy"]).astype(np.float32))  # [3, 16]
            row = [i for i in range(3) if torch.equal(clip[i], cond)]
            assert len(row) == 1
            rows_used.add(row[0])
    assert rows_used == {0, 1, 2}  # the frame is drawn, not always the same
    assert float(batch["mel"].min()) >= -1.0 - 1e-3  # silence floor (float16-rounded in the shard)


def test_too_few_clips_for_the_readers(tmp_path):
    info = make_synthetic_dataset(tmp_path / "d", 1, 1, frames=16, shards=1)
    with pytest.raises(ClipsonicError, match="fewer clips than world_size"):
        take(TrainStream(info, layout(info, world_size=2, rank=1, batch_size=1)), 1)


def test_fixed_samples(ds):
    fixed = load_fixed_samples(ds, "test", 10)
    assert fixed["keys"] == ["test-00000", "test-00001", "test-00002"]
    assert fixed["labels"] == ["class0", "class1", "class2"]
    assert fixed["mel"].shape == (3, 1, 64, 16) and fixed["cond"].shape == (3, 16)
    torch.testing.assert_close(fixed["cond"].norm(dim=1), torch.ones(3), atol=2e-3, rtol=0)


def test_iter_split_decodes_the_fields_asked_for(ds, tmp_path):
    samples = list(iter_split(ds, "test", fields=("clip.npy", "json"), optional=("flac",)))
    assert [s["__key__"] for s in samples] == ["test-00000", "test-00001", "test-00002"]
    assert all(set(s) == {"__key__", "clip.npy", "json"} for s in samples)  # no flac stored: absent, not an error
    assert samples[1]["clip.npy"].dtype == np.float32 and samples[1]["json"]["label"] == "class1"
    with pytest.raises(ClipsonicError, match="has no \\['flac'\\]"):
        next(iter_split(ds, "test", fields=("flac",)))
    with pytest.raises(ClipsonicError, match="no 'valid' split"):
        next(iter_split(ds, "valid"))


def test_decode_flac_gives_the_stored_audio_at_the_dataset_rate():
    wav = (0.5 * np.sin(np.arange(1600) / 5)).astype(np.float32)
    buf = io.BytesIO()
    soundfile.write(buf, np.stack([wav, wav], 1), 16000, format="FLAC", subtype="PCM_16")
    out = decode_flac(buf.getvalue(), 16000, "k")
    assert out.shape == (1600,) and np.abs(out - wav).max() < 1e-4  # stereo averaged, 16-bit exact
    with pytest.raises(ClipsonicError, match="16000 Hz in a 48000 Hz dataset"):
        decode_flac(buf.getvalue(), 48000, "k")
    with pytest.raises(ClipsonicError, match="'k': its flac audio cannot be decoded"):
        decode_flac(b"not flac", 16000, "k")


# --- corrupt shards and dataset.json: one line naming the shard and the fix -----------------------------------

def _copy(ds, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(ds.root, root)
    return read_dataset_info(root)


def _rewrite_first_sample(info, **fields):
    """Replace fields of the first sample of the first train shard (a corrupt preprocess output)."""
    path = info.shard_paths("train")[0]
    samples = list(iter_raw_samples([path]))
    samples[0] = {**samples[0], **fields}
    with wds.TarWriter(str(path)) as tar:
        for s in samples:
            tar.write({k: v for k, v in s.items() if k in ("__key__", "mel.npy", "clip.npy", "json")})
    return path


def _npy_bytes(array, allow_pickle=False):
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def _first_batch(info):
    return take(TrainStream(info, layout(info, batch_size=22)), 1)  # the whole epoch: every sample decoded


@pytest.mark.parametrize("fault, problem", [
    ("truncated", r"train-000000\.tar: unreadable shard .*re-run preprocess"),
    ("not a tar", r"train-000000\.tar: unreadable shard .*re-run preprocess"),
    ("missing", r"train-000000\.tar: unreadable shard .*No such file"),
    ("object array", r"train-000000\.tar: sample 'clip-00000' mel\.npy: unreadable \.npy \(Object arrays"),
    ("wrong mel shape", r"train-000000\.tar: sample 'clip-00000' : mel\.npy \(64, 8\) \(dataset\.json says "
                        r"\(64, 16\)\).*re-run preprocess"),
    ("no frames", r"clip\.npy \(0, 16\) \(expected \[K, D\]\)"),
    ("truncated npy", r"sample 'clip-00000' mel\.npy: unreadable \.npy"),
    ("text npy", r"sample 'clip-00000' mel\.npy: \.npy of dtype <U3, expected numbers"),
])
def test_corrupt_shards_are_one_clear_error(ds, tmp_path, fault, problem):
    info = _copy(ds, tmp_path)
    path = info.shard_paths("train")[0]
    mel = np.zeros((64, 16), np.float16)
    if fault == "truncated":
        path.write_bytes(path.read_bytes()[:1500])
    elif fault == "not a tar":
        path.write_bytes(b"\x00garbage" * 300)
    elif fault == "missing":
        path.unlink()
    elif fault == "object array":
        _rewrite_first_sample(info, **{"mel.npy": _npy_bytes(np.array([{"a": 1}], dtype=object), True)})
    elif fault == "wrong mel shape":
        _rewrite_first_sample(info, **{"mel.npy": _npy_bytes(mel[:, :8])})
    elif fault == "no frames":
        _rewrite_first_sample(info, **{"clip.npy": _npy_bytes(np.zeros((0, 16), np.float16))})
    elif fault == "truncated npy":
        _rewrite_first_sample(info, **{"mel.npy": _npy_bytes(mel)[:100]})
    else:
        _rewrite_first_sample(info, **{"mel.npy": _npy_bytes(np.array(["abc"]))})
    with pytest.raises(ClipsonicError, match=problem):
        _first_batch(info) if fault in ("wrong mel shape", "no frames") else list(iter_split(info, "train"))


@pytest.mark.parametrize("shard, problem", [
    ("../outside.tar", "leads outside"), ("/etc/passwd", "not a plain relative path"),
    ("a\nb.tar", "not a plain relative path"), ("link.tar", "leads outside")])
def test_shard_names_from_dataset_json_stay_inside_the_dataset(ds, tmp_path, shard, problem):
    info = _copy(ds, tmp_path)
    (tmp_path / "outside.tar").write_bytes(info.shard_paths("train")[0].read_bytes())
    (info.root / "link.tar").symlink_to(tmp_path / "outside.tar")
    data = json.loads((info.root / "dataset.json").read_text())
    data["splits"]["train"]["shards"][0] = shard
    (info.root / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(ClipsonicError, match=f"dataset.json: shard .*{problem}"):
        read_dataset_info(info.root).shard_paths("train")


@pytest.mark.parametrize("splits", [[], {"../x": {"shards": [], "clips": 0}}, {"train": {"shards": "a.tar"}},
                                    {"train": {"shards": [1]}}, {"train": []}, None])
def test_malformed_splits_in_dataset_json(ds, tmp_path, splits):
    info = _copy(ds, tmp_path)
    data = json.loads((info.root / "dataset.json").read_text())
    data["splits"] = splits
    (info.root / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(ClipsonicError, match="dataset.json: malformed 'splits'.*re-run preprocess"):
        read_dataset_info(info.root)
