"""``clipsonic preprocess``: videos → dataset directory (log-mels + CLIP frame embeddings in shards).

Decoding runs in worker processes, CLIP in batches in this process. The run is resumable: a journal
(``.progress.json``: ``{"format": "clipsonic-preprocess-journal", "version": 1, "header", "splits"}``) is committed
each time a shard is renamed into place, and a re-run of the same command continues from the last commit. Items are
processed in fixed groups of ``encode_group`` so CLIP batches (and hence the bytes written) do not depend on where a
run was resumed: same inputs and options → the same shards. The output folder (a part's folder in a sharded run) is
locked for the run (:func:`clipsonic.files.lock_folder`): a second writer is refused; decoding workers die with it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Annotated

import torch

from clipsonic.audio import MelConfig
from clipsonic.config import Config, Positive, PositiveInt, Range
from clipsonic.data.clips import ClipOptions, ItemResult, extract_clips, sequence_length
from clipsonic.data.dataset import DatasetInfo, ShardWriter, encode_sample, read_dataset_info
from clipsonic.data.sources import Problem, SourceItem, collect_sources, hash_split
from clipsonic.encoders import ClipModelRef, load_clip
from clipsonic.errors import ClipsonicError
from clipsonic.files import lock_folder, read_versioned_json, write_json_atomic

log = logging.getLogger(__name__)
JOURNAL = ".progress.json"
JOURNAL_FORMAT, JOURNAL_VERSION = "clipsonic-preprocess-journal", 1
CLIP_COUNTS = ("silent_clips", "padded_clips", "dropped_tails")  # dataset.json counts beside inputs/clips/rejected


@dataclasses.dataclass(frozen=True)
class PreprocessOptions(Config):
    """Options that shape the dataset (stored in dataset.json; a resumed run must match them)."""

    clip_model: str = "openai/clip-vit-large-patch14"
    clips: ClipOptions = ClipOptions()
    # hash split for sources without splits (VGGSound brings its own)
    test_fraction: Annotated[float, Range(0, 1, high_open=True)] = 0.0
    shard_size_mb: Positive = 256.0
    encode_group: PositiveInt = 32  # items per CLIP group; also the granularity of commits


@dataclasses.dataclass
class Progress:
    """Counters reported to the ``progress`` callback after every item."""

    items_total: int
    items_done: int = 0
    clips: int = 0
    rejected: int = 0


def preprocess(source: str | os.PathLike, out_dir: str | os.PathLike, *, options: PreprocessOptions | None = None,
               mel: MelConfig | None = None, video_dir=None, workers: int = 0, device=None,
               num_shards: int | None = None, shard_index: int | None = None, encoder=None,
               clip_batch_size: int = 64, progress: Callable[[Progress], None] | None = None) -> DatasetInfo:
    """Build (or resume, or confirm) a dataset directory. With ``num_shards > 1`` only items
    ``shard_index::num_shards``, into ``out_dir/part-IIIII-of-NNNNN`` (see :func:`merge_parts`)."""
    options, mel = options or PreprocessOptions(), mel or MelConfig()
    num_shards, shard_index = _resolve_sharding(num_shards, shard_index)
    sequence_length(mel, options.clips.frame_rate)  # a rate giving no frame, or more than the mel's, is refused here
    items, problems = collect_sources(source, video_dir)
    out = Path(out_dir)
    if out.resolve() == Path(source).resolve():
        raise ClipsonicError(f"--out {out} is the source folder; write the dataset to a folder of its own")
    if not items:
        raise ClipsonicError(f"{source}: none of its {len(problems)} entries can be used (first: {problems[0].path}: "
                             f"{problems[0].reason})")
    if options.test_fraction and Path(source).is_dir() and items[0].split:  # a folder's splits are all or none
        raise ClipsonicError(f"{source}: its split folders ({', '.join(sorted({it.split for it in items}))}) set "
                             "the splits; drop --test-fraction, or put the videos in one folder to split by hash")
    if num_shards > 1:
        items, problems = items[shard_index::num_shards], problems[shard_index::num_shards]
        out = out / f"part-{shard_index:05d}-of-{num_shards:05d}"
    with lock_folder(out, "preprocess"):  # one writer per folder; each part of a sharded run is its own folder
        return _build(source, items, problems, out, options, mel, workers, device, encoder, clip_batch_size,
                      progress, whole=num_shards == 1)


def _build(source, items: list[SourceItem], problems: list[Problem], out: Path, options: PreprocessOptions,
           mel: MelConfig, workers: int, device, encoder, clip_batch_size: int, progress, whole: bool) -> DatasetInfo:
    encoder = encoder or load_clip(options.clip_model, device=device)
    clip_ref = ClipModelRef(model=options.clip_model, dim=encoder.dim, fingerprint=encoder.fingerprint)
    header = {"mel": mel.to_dict(), "clip": clip_ref.to_dict(), "options": options.to_dict(),
              "items": hashlib.sha1("\n".join(it.key for it in items).encode()).hexdigest()}
    done = _existing(out, header, mel, clip_ref)
    if done is not None:
        return done
    journal = _load_journal(out, header, mel)
    stale = list(out.glob(".*.tmp"))  # half-written shards (and json) of a killed run
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.info("removed %d half-written shard(s) from an interrupted run", len(stale))
    by_split: dict[str, list[SourceItem]] = {}
    for it in items:
        by_split.setdefault(it.split or hash_split(it.key, options.test_fraction), []).append(it)
    stats = Progress(items_total=len(items))
    decoder = _Decoder(workers, mel, options.clips)
    try:
        for split in sorted(by_split):
            _run_split(out, split, by_split[split], journal, decoder, encoder, options, clip_batch_size, stats,
                       progress)
    finally:
        decoder.close()
    if whole and not any(s["clips"] for s in journal["splits"].values()):
        (out / JOURNAL).unlink(missing_ok=True)  # nothing to resume: the folder is left as it was
        first = next(r for s in journal["splits"].values() for r in s["rejected"])
        reason = first["reason"].removeprefix(f"{first['path']}: ")  # media errors start with the path already
        raise ClipsonicError(f"{source}: no clip came out of its {len(items)} video(s), all rejected (first: "
                             f"{first['path']}: {reason}); see the log for the others")
    return _finish(out, journal, problems, len(items), mel, clip_ref, options)


def _resolve_sharding(num_shards, shard_index) -> tuple[int, int]:
    if num_shards is None:  # launched by torchrun/accelerate: one part per process
        num_shards, shard_index = int(os.environ.get("WORLD_SIZE", "1")), None
    if shard_index is None:
        # under a launcher each process is its rank's part; by hand (--num-shards alone), part 0
        # (two processes silently writing the same part would be worse than either)
        shard_index = int(os.environ.get("RANK", "0"))
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ClipsonicError(f"--shard-index {shard_index} must be in [0, --num-shards {num_shards})")
    return num_shards, shard_index


def _existing(out: Path, header: dict, mel: MelConfig, clip_ref: ClipModelRef) -> DatasetInfo | None:
    """A finished dataset in ``out``: return it when it matches, refuse when it does not."""
    if not (out / "dataset.json").is_file():
        return None
    info = read_dataset_info(out)
    info.check_compatible(mel, clip_ref.dim, what="this preprocess run")
    if info.mel.clip_samples != mel.clip_samples:
        raise ClipsonicError(f"{out} holds clips of {info.mel.clip_seconds:g} s, this run cuts {mel.clip_seconds:g} s; "
                             "use another --out or the same --clip-seconds")
    if info.clip.fingerprint != clip_ref.fingerprint:
        raise ClipsonicError(f"{out} was built with {info.clip.describe()}, this run uses {clip_ref.describe()}; "
                           "use another --out or the same --clip-model")
    if info.options.get("options") != header["options"] or info.options.get("items") != header["items"]:
        raise ClipsonicError(f"{out} holds a finished dataset built from other inputs or options; use another --out")
    log.info("%s is already complete (%d clips); nothing to do", out, info.counts.get("clips", 0))
    return info


def _load_journal(out: Path, header: dict, mel: MelConfig) -> dict:
    path = out / JOURNAL
    if not path.is_file():
        if any(out.glob("*.tar")):
            raise ClipsonicError(f"{out} holds shards but no progress journal; use an empty --out")
        return {"format": JOURNAL_FORMAT, "version": JOURNAL_VERSION, "header": header, "splits": {}}
    journal = read_versioned_json(path, JOURNAL_FORMAT, JOURNAL_VERSION, unversioned=1)
    try:
        old = journal["header"]
        diffs = [f"mel {d}" for d in MelConfig.from_dict(old["mel"], source=f"{path}:mel").mismatch(mel, ignore=())]
        if old["clip"] != header["clip"]:
            diffs.append(f"CLIP {old['clip']['model']} vs {header['clip']['model']}")
        was, now = _flat(old["options"]), _flat(header["options"])
        diffs += [f"{k}: {was.get(k)} vs {now.get(k)}" for k in sorted(was.keys() | now.keys()) if was.get(k) != now.get(k)]
        diffs += ["the list of input videos"] if old["items"] != header["items"] else []
        ok = all(isinstance(v, dict) and {"next_item", "shards", "clips", "rejected"} <= v.keys()
                 for v in journal["splits"].values())
    except (KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise ClipsonicError(f"{path}: malformed progress journal; delete {out} (a half-built dataset) and run again")
    if diffs:
        raise ClipsonicError(f"{out} holds an interrupted run with other settings (then vs now: {'; '.join(diffs)}); "
                             "re-run with the same options or use another --out")
    log.info("resuming %s from its last committed shard", out)
    return journal


def _flat(options: dict, prefix: str = "") -> dict:
    """``{"clips": {"jpg_size": 160}}`` → ``{"clips.jpg_size": 160}``: differences named field by field."""
    flat = {}
    for key, value in options.items():
        flat |= _flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return flat


class _Decoder:
    """Ordered ``extract_clips`` over items, in worker processes (``workers=0``: inline); a worker crashed
    by a decoder (segfault, OOM kill) costs only the item that crashed it."""

    def __init__(self, workers: int, mel: MelConfig, options: ClipOptions):
        self.workers, self.args = workers, (mel, options)
        self.pool = self._new_pool() if workers > 0 else None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, not fork: forking a process that holds torch/OpenMP threads can deadlock; one
        # thread per worker: the parallelism comes from the processes
        return ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"), initializer=_worker_init,
                                   initargs=(os.getpid(),))

    def map(self, items: list[SourceItem]) -> list[ItemResult]:
        if self.pool is None:
            return [extract_clips(it, *self.args) for it in items]
        results = []
        try:
            for future in [self.pool.submit(extract_clips, it, *self.args) for it in items]:
                results.append(future.result())
            return results
        except BrokenProcessPool:  # retry the item being decoded alone in a new pool, then resubmit the rest
            item = items[len(results)]
            self.close()
            self.pool = self._new_pool()
            try:
                results.append(self.pool.submit(extract_clips, item, *self.args).result())
            except BrokenProcessPool:
                self.pool = self._new_pool()
                results.append(ItemResult([], reason="decoder crashed its worker process (corrupt file?)"))
            return results + self.map(items[len(results):])


def _worker_init(parent: int) -> None:
    """A decoding worker: one torch thread, and it exits when ``parent`` dies (a SIGKILLed preprocess must not
    leave its decoders running): Linux kills it at once (PR_SET_PDEATHSIG), a watcher thread covers the rest."""
    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:  # an orphan is re-parented (to init or a subreaper): its parent pid changes
        time.sleep(0.5)
    os._exit(1)


def _run_split(out: Path, split: str, items: list[SourceItem], journal: dict, decoder: _Decoder, encoder,
               options: PreprocessOptions, batch_size: int, stats: Progress, progress) -> None:
    state = journal["splits"].setdefault(split, {"next_item": 0, "shards": [], "clips": 0, "rejected": []})

    def commit(shard: str | None, next_item: int) -> None:
        # state also counts the items written since the last commit; on disk they count only from here
        if shard is not None:
            state["shards"].append(shard)
        state["next_item"] = next_item
        write_json_atomic(out / JOURNAL, journal)

    writer = ShardWriter(out, split, len(state["shards"]), int(options.shard_size_mb * 2**20))
    stats.items_done += state["next_item"]
    stats.clips += state["clips"]
    stats.rejected += len(state["rejected"])
    try:
        for g0 in range(state["next_item"], len(items), options.encode_group):
            batch = items[g0:g0 + options.encode_group]
            _write_group(writer, decoder.map(batch), batch, encoder, batch_size, state, stats, progress)
            if writer.full:
                commit(writer.finalize(), g0 + len(batch))
        commit(writer.finalize(), len(items))
    except BaseException:
        writer.abort()
        raise


def _write_group(writer: ShardWriter, results: list[ItemResult], items: list[SourceItem], encoder, batch_size: int,
                 state: dict, stats: Progress, progress) -> None:
    clips = [c for r in results for c in r.clips]
    emb = []
    if clips:  # one CLIP pass for the K frames and the N sequence frames of every clip
        emb = encoder.encode_images([f for c in clips for f in (*c.frames, *c.seq_frames)], batch_size=batch_size)
        emb = emb.numpy().reshape(len(clips), -1, emb.shape[-1])  # [clips, K + N, D]
    rows = iter(emb)
    for result, item in zip(results, items, strict=True):
        for clip in result.clips:
            row, k = next(rows), len(clip.frames)
            writer.write(encode_sample(clip.key, clip.mel, row[:k], clip.meta, clip.jpg, clip.flac,
                                       seq=row[k:] if clip.seq_frames else None))
        state["clips"] += len(result.clips)
        for key, n in (("silent_clips", result.silent_clips), ("padded_clips", result.padded > 0),
                       ("dropped_tails", result.dropped_tail > 0)):
            state[key] = state.get(key, 0) + n  # journals of older runs lack the newer counters
        if result.reason is not None:
            state["rejected"].append(dataclasses.asdict(Problem(str(item.path), result.reason)))
            log.info("skipped %s: %s", item.path, result.reason)
        elif result.padded:
            log.info("%s: padded its last clip (%.2f s of audio)", item.path, result.padded)
        elif result.dropped_tail:
            log.info("%s: dropped its last %.2f s (under --min-clip-fraction of a clip)", item.path,
                     result.dropped_tail)
        stats.items_done += 1
        stats.clips += len(result.clips)
        stats.rejected += result.reason is not None
        if progress is not None:
            progress(stats)


def _finish(out: Path, journal: dict, problems: list[Problem], n_items: int, mel: MelConfig,
            clip_ref: ClipModelRef, options: PreprocessOptions) -> DatasetInfo:
    splits = journal["splits"]
    rejected = [dataclasses.asdict(p) for p in problems] + [r for s in sorted(splits) for r in splits[s]["rejected"]]
    info = DatasetInfo(
        root=out, mel=mel, clip=clip_ref, frames_per_clip=options.clips.frames_per_clip,
        splits={s: {"shards": splits[s]["shards"], "clips": splits[s]["clips"]} for s in sorted(splits)},
        counts={"inputs": n_items + len(problems), "clips": sum(s["clips"] for s in splits.values()),
                "rejected": len(rejected), **{k: sum(s.get(k, 0) for s in splits.values()) for k in CLIP_COUNTS}},
        options={"options": options.to_dict(), "items": journal["header"]["items"]}, rejected=rejected)
    info.save()
    (out / JOURNAL).unlink(missing_ok=True)
    return info


def merge_parts(out_dir: str | os.PathLike) -> DatasetInfo:
    """Combine the ``part-*-of-*`` datasets of a sharded run into one (shards hard-linked and renumbered);
    the parts go only after the merged dataset.json is written, so rerunning repairs a crash."""
    out = Path(out_dir)
    with lock_folder(out, "preprocess --merge"):
        return _merge(out)


def _merge(out: Path) -> DatasetInfo:
    parts = sorted(p for p in out.glob("part-*-of-*") if re.fullmatch(r"part-\d{5}-of-\d{5}", p.name))
    if not parts:
        raise ClipsonicError(f"{out}: no part-*-of-* folders to merge; run preprocess with --num-shards first")
    total = int(parts[0].name.rsplit("-", 1)[1])
    missing = [i for i in range(total) if not (out / f"part-{i:05d}-of-{total:05d}" / "dataset.json").is_file()]
    if missing:
        raise ClipsonicError(f"{out}: parts {missing} of {total} are not finished; run them (same command, "
                             "--shard-index i) first")
    infos = [read_dataset_info(out / f"part-{i:05d}-of-{total:05d}") for i in range(total)]
    first = infos[0]
    for info in infos[1:]:
        info.check_compatible(first.mel, first.clip.dim, first.clip.model, what=f"part {first.root.name}")
        if info.options.get("options") != first.options.get("options"):
            raise ClipsonicError(f"{info.root} was built with other options than {first.root}; rebuild it")
    splits: dict[str, dict] = {}
    for info in infos:
        for split in sorted(info.splits):
            entry = splits.setdefault(split, {"shards": [], "clips": 0})
            for shard in info.shard_paths(split):
                name = f"{split}-{len(entry['shards']):06d}.tar"
                (out / name).unlink(missing_ok=True)
                try:
                    os.link(shard, out / name)
                except OSError:
                    shutil.copyfile(shard, out / name)
                entry["shards"].append(name)
            entry["clips"] += info.num_clips(split)
    counts = {k: sum(int(i.counts.get(k, 0)) for i in infos) for k in ("inputs", "clips", "rejected", *CLIP_COUNTS)}
    merged = dataclasses.replace(first, root=out, splits=splits, counts=counts,
                                 options={**first.options, "items": [i.options.get("items") for i in infos]},
                                 rejected=[r for i in infos for r in i.rejected])
    merged.save()
    for part in parts:
        shutil.rmtree(part)
    return merged

