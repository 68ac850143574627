"""The streaming loader: partitions across ranks and workers, determinism, exact resume, decoding."""

import io
import logging

import numpy as np
import pytest
import soundfile
import torch
from support.synthetic_dataset import make_synthetic_dataset

from clipsonic.audio import normalize
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
