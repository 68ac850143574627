"""Reading a dataset directory's WebDataset shards: the one shard reader of clipsonic.

Training stream: each DataLoader worker of each rank plays one *role*; ``slot = rank · W + role`` of
``S = world_size · W`` reader slots. The order is a pure function of ``(seed, epoch, slot)``:

1. Epoch ``e``'s shard order is a permutation drawn from ``(seed, e)``, the same on all slots.
2. With at least ``S`` shards slot ``s`` reads shards ``order[s::S]``; with fewer (a tiny dataset) every slot reads
   all of them and keeps the samples ``i`` with ``i % S == s``. Either way the slots of one epoch partition the split.
3. A shuffle buffer (``shuffle_buffer`` samples) drawn from ``(seed, e, slot)`` mixes the stream.
4. A sample gives ``mel`` (the log-mel scaled to about [-1, 1], ``[1, 64, F]``) and ``cond``: one of its K frame
   embeddings ``[D]``, drawn from ``(seed, e, key)``, so epochs see different frames; in a dataset with frame
   sequences also ``cond_seq``, its N frame embeddings aligned to the mel ``[N, D]``.
5. A worker batches ``batch_size`` consecutive samples and runs on into epoch ``e + 1``.

Position: the DataLoader delivers batches from workers 0, 1, …, W−1, 0, … in turn, so the number of batches taken
and, per role, ``(epoch, samples consumed)`` say exactly where a rank's stream is. A stream built with
:meth:`TrainStream.position` continues with exactly the next batch (skipped samples are re-read, not decoded).
A position saved with another world size, worker count, batch size, seed or shard list restarts each role at the
earliest epoch recorded, with a warning.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
import webdataset as wds

from clipsonic.audio import MelConfig, normalize
from clipsonic.data.clips import sequence_length
from clipsonic.data.dataset import DatasetInfo
from clipsonic.errors import ClipsonicError

log = logging.getLogger(__name__)

# Files a training sample needs; flac/jpg bytes are skipped by the tar reader.
TRAIN_FIELDS = ("mel.npy", "clip.npy", "json")
SEQ_FIELD = "seq.npy"  # a training sample's file too in a dataset with frame sequences


def decode_npy(payload: bytes, where: str = "a sample") -> np.ndarray:
    """A ``.npy`` payload → a numeric array (never unpickles); ``where`` names it in the error."""
    try:
        array = np.load(io.BytesIO(payload), allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:  # truncated, not .npy, or an object (pickle) array
        raise ClipsonicError(f"{where}: unreadable .npy ({_first_arg(exc)}); re-run preprocess") from None
    if array.dtype.kind not in "fiu":
        raise ClipsonicError(f"{where}: .npy of dtype {array.dtype}, expected numbers; re-run preprocess")
    return array


def _first_arg(exc: BaseException) -> str:
    # webdataset appends the stream and url to an exception's args; the first one is the message
    return getattr(exc, "strerror", None) or (str(exc.args[0]) if exc.args else type(exc).__name__)


def _where(raw: dict[str, Any], name: str) -> str:
    return f"{raw.get('__url__', 'shard')}: sample {raw['__key__']!r} {name}"


def decode_flac(payload: bytes, sample_rate: int, key: str = "") -> np.ndarray:
    """A sample's ``flac`` → float32 mono ``[samples]``; preprocess wrote it at the dataset's ``sample_rate``."""
    try:
        wav, rate = soundfile.read(io.BytesIO(payload), dtype="float32", always_2d=True)
    except (RuntimeError, ValueError) as exc:  # soundfile.LibsndfileError is a RuntimeError
        raise ClipsonicError(f"sample {key!r}: its flac audio cannot be decoded ({exc})") from None
    if rate != sample_rate:
        raise ClipsonicError(f"sample {key!r}: flac at {rate} Hz in a {sample_rate} Hz dataset; re-run preprocess")
    return wav.mean(axis=1)


def iter_raw_samples(paths: Iterable[str | Path], fields: Iterable[str] = TRAIN_FIELDS,
                     optional: Iterable[str] = ()) -> Iterator[dict[str, Any]]:
    """Undecoded samples (``__key__`` + the files as bytes) of the shards, in order; a sample that lacks a
    required file is reported, not skipped."""
    wanted, extra = set(fields), set(optional)
    read = wanted | extra | {"json"}
    for path in paths:
        samples = wds.tariterators.tarfile_samples([{"url": str(path)}],
                                                   select_files=lambda name: name.split(".", 1)[-1] in read)
        while True:
            try:
                sample = next(samples, None)
            except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
                raise ClipsonicError(f"{path}: unreadable shard ({_first_arg(exc)}); it is missing, truncated or "
                                     "corrupt: re-run preprocess into a new folder") from None
            if sample is None:
                break
            missing = sorted(f for f in wanted if f not in sample)
            if missing:
                raise ClipsonicError(f"{path}: sample {sample['__key__']!r} has no {missing}; re-run preprocess")
            if "json" not in wanted | extra:
                sample.pop("json", None)
            yield sample


def iter_split(info: DatasetInfo, split: str, fields: Iterable[str] = TRAIN_FIELDS,
               optional: Iterable[str] = ()) -> Iterator[dict[str, Any]]:
    """A split's samples in shard order, decoded: "mel.npy" float32 ``[n_mels, F]``, "clip.npy" float32 ``[K, D]``,
    "json" a dict, "flac" float32 mono at the dataset's rate, others bytes; ``optional`` fields may be absent."""
    for raw in iter_raw_samples(info.shard_paths(split), fields, optional):
        sample: dict[str, Any] = {"__key__": raw["__key__"]}
        for name, payload in raw.items():
            if name.endswith(".npy"):
                sample[name] = decode_npy(payload, _where(raw, name)).astype(np.float32)
            elif name == "json":
                sample[name] = _decode_json(payload, _where(raw, name))
            elif name == "flac":
                sample[name] = decode_flac(payload, info.mel.sample_rate, raw["__key__"])
            elif not name.startswith("__"):
                sample[name] = payload
        yield sample


def _decode_json(payload: bytes, where: str) -> dict[str, Any]:
    try:
        meta = json.loads(payload)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ClipsonicError(f"{where}: unreadable ({_first_arg(exc)}); re-run preprocess") from None
    if not isinstance(meta, dict):
        raise ClipsonicError(f"{where}: expected a JSON object; re-run preprocess")
    return meta


def _rng(*words: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(w) & 0xFFFFFFFF for w in words]))


@dataclass(frozen=True)
class StreamLayout:
    """What shapes a rank's sample order: equal layouts give equal streams."""

    shards: tuple[str, ...]
    batch_size: int
    seed: int
    rank: int
    world_size: int
    num_workers: int  # DataLoader workers (0: read in the training process = one role)
    shuffle_buffer: int

    @property
    def roles(self) -> int:
        return max(1, self.num_workers)

    @property
    def slots(self) -> int:
        return self.world_size * self.roles

    def key(self) -> dict[str, Any]:
        """What a saved position must match to continue exactly (shard names, not paths: a moved dataset
        still resumes; no rank: each rank saves its own)."""
        return {"shards": [Path(s).name for s in self.shards], "batch_size": self.batch_size, "seed": self.seed,
                "world_size": self.world_size, "num_workers": self.num_workers, "shuffle_buffer": self.shuffle_buffer}


def epoch_samples(layout: StreamLayout, role: int, epoch: int,
                  fields: Iterable[str] = TRAIN_FIELDS) -> Iterator[dict[str, Any]]:
    """Slot (layout.rank, role)'s undecoded samples of one epoch, shuffled; see the module doc, steps 1–3."""
    slot = layout.rank * layout.roles + role
    order = [layout.shards[i] for i in _rng(layout.seed, epoch).permutation(len(layout.shards))]
    if len(order) >= layout.slots:  # shard-level split
        stream: Iterable[dict[str, Any]] = iter_raw_samples(order[slot::layout.slots], fields)
    else:  # sample-level split: every slot reads everything and keeps its residue class
        stream = (s for i, s in enumerate(iter_raw_samples(order, fields)) if i % layout.slots == slot)
    return _shuffle(stream, layout.shuffle_buffer, _rng(layout.seed, epoch, 1, slot))


def _shuffle(stream: Iterable[dict[str, Any]], size: int, rng: np.random.Generator) -> Iterator[dict[str, Any]]:
    """Buffer shuffle: keep ``size`` samples, emit a random one for each new arrival, drain at the end."""
    buffer: list[dict[str, Any]] = []
    for sample in stream:
        buffer.append(sample)
        if len(buffer) >= max(1, size):
            i = int(rng.integers(len(buffer)))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            yield buffer.pop()
    while buffer:
        i = int(rng.integers(len(buffer)))
        buffer[i], buffer[-1] = buffer[-1], buffer[i]
        yield buffer.pop()


def decode_train_sample(raw: dict[str, Any], mel_config: MelConfig, seed: int, epoch: int,
                        seq_frames: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Raw sample → (mel ``[1, 64, F]`` float32 in diffusion space, cond ``[D]`` float32, one of K rows, and with
    ``seq_frames`` N > 0 the frame sequence ``[N, D]`` float32, else None)."""
    logmel = decode_npy(raw["mel.npy"], _where(raw, "mel.npy")).astype(np.float32)  # [64, F]
    clip = decode_npy(raw["clip.npy"], _where(raw, "clip.npy")).astype(np.float32)  # [K, D]
    want = (mel_config.n_mels, mel_config.clip_frames)
    if logmel.shape != want or clip.ndim != 2 or not clip.shape[0]:  # batches stack: every sample the same shape
        raise ClipsonicError(f"{_where(raw, '')}: mel.npy {logmel.shape} (dataset.json says {want}) / clip.npy "
                             f"{clip.shape} (expected [K, D]); the shard does not match its dataset: re-run preprocess")
    seq = None
    if seq_frames:
        seq = decode_npy(raw[SEQ_FIELD], _where(raw, SEQ_FIELD)).astype(np.float32)  # [N, D]
        if seq.shape != (seq_frames, clip.shape[1]):
            raise ClipsonicError(f"{_where(raw, SEQ_FIELD)}: shape {seq.shape}, dataset.json's frame rate says "
                                 f"{(seq_frames, clip.shape[1])}; the shard does not match its dataset: re-run preprocess")
    row = int(_rng(seed, epoch, zlib.crc32(raw["__key__"].encode())).integers(clip.shape[0]))
    mel = normalize(torch.from_numpy(logmel), mel_config).numpy()[None]
    return mel, clip[row], seq


class _RoleStream(torch.utils.data.IterableDataset):
    """Endless batches of one role (one per DataLoader worker, or one in-process) from its (epoch, samples
    consumed in it): ``mel [B, 1, 64, F]``, ``cond [B, D]``, with ``seq_frames`` N > 0 ``cond_seq [B, N, D]``,
    ``keys``, and the position after the batch (``role``, ``epoch``, ``offset``)."""

    def __init__(self, layout: StreamLayout, mel_config: MelConfig, starts: list[tuple[int, int]], rotation: int,
                 seq_frames: int = 0):
        super().__init__()
        self.layout, self.mel_config, self.starts, self.rotation = layout, mel_config, starts, rotation
        self.seq_frames = seq_frames

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info, layout = torch.utils.data.get_worker_info(), self.layout
        role = ((info.id if info is not None else 0) + self.rotation) % layout.roles
        epoch, offset = self.starts[role]
        fields = TRAIN_FIELDS + ((SEQ_FIELD,) if self.seq_frames else ())
        batch: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, str]] = []
        while True:
            i = -1
            for i, raw in enumerate(epoch_samples(layout, role, epoch, fields)):
                if i < offset:
                    continue  # consumed before the resume: re-read, not decoded
                batch.append((*decode_train_sample(raw, self.mel_config, layout.seed, epoch, self.seq_frames),
                              raw["__key__"]))
                if len(batch) == layout.batch_size:
                    mels, conds, seqs, keys = zip(*batch, strict=True)
                    yield {"mel": torch.from_numpy(np.stack(mels)), "cond": torch.from_numpy(np.stack(conds)),
                           **({"cond_seq": torch.from_numpy(np.stack(seqs))} if self.seq_frames else {}),
                           "keys": list(keys), "role": role, "epoch": epoch, "offset": i + 1}
                    batch = []
            if i < 0:
                raise ClipsonicError(
                    f"reader slot {layout.rank * layout.roles + role} of {layout.slots} got no samples in epoch "
                    f"{epoch}: the split has fewer clips than world_size × workers ({layout.world_size} × "
                    f"{layout.roles}); use fewer --num-workers or processes")
            epoch, offset = epoch + 1, 0


class TrainStream:
    """A rank's endless, exactly resumable stream of batches (:class:`_RoleStream`'s); :meth:`position` is the
    JSON-able place reached, to pass back as ``position`` when resuming."""

    def __init__(self, info: DatasetInfo, layout: StreamLayout, position: dict[str, Any] | None = None,
                 pin_memory: bool = False):
        if not layout.shards:
            raise ClipsonicError(f"{info.root}: the training split has no shards; re-run preprocess")
        self.info, self.layout, self.pin_memory = info, layout, pin_memory
        self.batches, self.roles = 0, [(0, 0)] * layout.roles
        if position is not None:
            roles = [(int(e), int(o)) for e, o in position["roles"]]
            if position.get("layout") != layout.key() or len(roles) != layout.roles:
                epoch = min(e for e, _ in roles)
                log.warning("the saved data position was made with another data layout (world size, workers, batch "
                            "size, seed or shards); restarting the data stream at the start of epoch %d", epoch)
                roles = [(epoch, 0)] * layout.roles
            self.batches, self.roles = int(position["batches"]), roles

    def position(self) -> dict[str, Any]:
        """``{"batches", "epoch" (earliest role's), "samples" (taken by this rank), "roles": [[epoch, offset]…],
        "layout"}``."""
        return {"batches": self.batches, "epoch": min(e for e, _ in self.roles),
                "samples": self.batches * self.layout.batch_size,
                "roles": [list(r) for r in self.roles], "layout": self.layout.key()}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rotation = self.batches % self.layout.roles  # the DataLoader starts at worker 0: give it the next role
        dataset = _RoleStream(self.layout, self.info.mel, list(self.roles), rotation,
                              sequence_length(self.info.mel, self.info.frame_rate))
        if self.layout.num_workers == 0:
            source: Iterable[dict[str, Any]] = iter(dataset)
        else:
            source = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=self.layout.num_workers,
                                                 pin_memory=self.pin_memory, prefetch_factor=4)
        for batch in source:
            role, expected = int(batch["role"]), self.batches % self.layout.roles
            if role != expected:  # cannot happen with in-order delivery; never mis-record a position
                raise RuntimeError(f"data stream out of order: expected role {expected}, got {role}")
            self.roles[role] = (int(batch["epoch"]), int(batch["offset"]))
            self.batches += 1
            yield batch


def load_fixed_samples(info: DatasetInfo, split: str, limit: int) -> dict[str, Any]:
    """The first ``limit`` samples of a split (for validation): ``{"mel": [B, 1, 64, F]`` in diffusion space,
    ``"cond": [B, D]`` (each middle frame's embedding), in a dataset with frame sequences ``"cond_seq": [B, N, D]``,
    ``"keys", "labels"}``."""
    seq_frames = sequence_length(info.mel, info.frame_rate)
    fields = TRAIN_FIELDS + ((SEQ_FIELD,) if seq_frames else ())
    samples = list(itertools.islice(iter_split(info, split, fields), limit))
    if not samples:
        raise ClipsonicError(f"{info.root}: the '{split}' split has no samples")
    seqs = {"cond_seq": torch.from_numpy(np.stack([s[SEQ_FIELD] for s in samples]))} if seq_frames else {}
    return {"mel": torch.stack([normalize(torch.from_numpy(s["mel.npy"]), info.mel)[None] for s in samples]),
            "cond": torch.from_numpy(np.stack([s["clip.npy"][len(s["clip.npy"]) // 2] for s in samples])), **seqs,
            "keys": [s["__key__"] for s in samples], "labels": [s["json"].get("label") for s in samples]}
