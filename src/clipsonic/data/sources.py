"""Where the videos come from (a folder, a VGGSound CSV, the MUSIC JSON, a manifest): a sorted
list of :class:`SourceItem` and the problems (dataset.json's "rejected" list).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import json
import math
import os
import re
from pathlib import Path

from clipsonic.errors import ClipsonicError
from clipsonic.files import read_json, safe_name

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ogv", ".3gp",
                    ".ts")


@dataclasses.dataclass(frozen=True)
class SourceItem:
    """One input video, or the segment ``start``/``duration`` of it (None: the whole file)."""

    path: Path
    key: str  # stable id: sorting, hash splits, and sample keys derive from it
    start: float | None = None
    duration: float | None = None
    label: str | None = None
    split: str | None = None


@dataclasses.dataclass(frozen=True)
class Problem:
    """An input that produced nothing, with a human reason."""

    path: str
    reason: str


def collect_sources(source: str | os.PathLike, video_dir: str | os.PathLike | None = None
                    ) -> tuple[list[SourceItem], list[Problem]]:
    """Detect the kind of ``source`` and list its items (sorted by key) and problems."""
    source = Path(source)
    if not source.exists():
        raise ClipsonicError(f"{source}: no such file or folder; pass a video folder, a VGGSound CSV, the MUSIC "
                             "JSON or a manifest")
    if source.is_dir():
        items, problems = _from_folder(source), []
    elif source.suffix.lower() == ".json":
        items, problems = _from_music_json(source, video_dir)
    elif source.suffix.lower() == ".jsonl":
        items, problems = _from_manifest_rows(source, read_jsonl(source), video_dir)
    elif source.suffix.lower() in (".csv", ".tsv"):
        items, problems = _from_csv(source, video_dir)
    else:
        raise ClipsonicError(f"{source}: unknown source type; expected a folder, .csv, .json (MUSIC) or .jsonl")
    dup = sorted(key for key, n in collections.Counter(it.key for it in items).items() if n > 1)[:3]
    if dup:
        raise ClipsonicError(f"{source}: duplicate entries {dup}; each video/segment must appear once")
    return sorted(items, key=lambda it: it.key), problems


def _need_video_dir(source: Path, video_dir) -> tuple[Path, dict[str, Path]]:
    """``--video-dir`` and its videos by file stem (the first by sorted path wins), for sources of YouTube ids."""
    if video_dir is None:
        raise ClipsonicError(f"{source}: this source lists YouTube ids; pass --video-dir with the downloaded videos")
    video_dir = Path(video_dir)
    if not video_dir.is_dir():
        raise ClipsonicError(f"--video-dir {video_dir}: not a folder")
    return video_dir, {path.stem: path for path in reversed(_video_files(video_dir))}


def _video_files(root: Path) -> list[Path]:
    return [path for path in sorted(root.rglob("*")) if path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file()
            and not any(part.startswith(".") for part in path.relative_to(root).parts)]


# top-level folder names that set the split (case-insensitive); valid/ and validation/ are read as val
SPLIT_FOLDERS = {"train": "train", "test": "test", "val": "val", "valid": "val", "validation": "val"}


def _from_folder(root: Path) -> list[SourceItem]:
    """A video folder, by where its videos are (hidden files and folders, and folders without videos, do not count):

    - videos directly in ROOT: one unlabeled set, split into train/test by a hash of the name (--test-fraction);
    - class folders ROOT/CLASS/…: label CLASS, the first folder below ROOT (deeper folders belong to that class);
    - split folders ROOT/train, ROOT/test, ROOT/val (valid/ and validation/ are read as val; any of them): the split,
      each holding either layout above (labels from ROOT/SPLIT/CLASS/…).

    Refused, with the fix in the message: loose videos beside class folders, split folders beside other folders or
    loose videos (a class called "train" or "test" must be renamed), two folders of one split (val/ and valid/)."""
    files = _video_files(root)
    if not files:
        raise ClipsonicError(f"{root}: no video files found (looked for {', '.join(VIDEO_EXTENSIONS)})")
    tops = {path.relative_to(root).parts[0] for path in files if path.parent != root}
    splits = sorted(top for top in tops if top.lower() in SPLIT_FOLDERS)
    if not splits:
        return _class_folders(root, root, files, None)
    others = sorted(tops - set(splits)) + [path.name for path in files if path.parent == root]
    if others:
        raise ClipsonicError(f"{root}: split folders ({', '.join(splits)}) beside other videos or folders "
                             f"({', '.join(others[:3])}); move those into the split folders (a class named like a "
                             "split must be renamed)")
    by_split = collections.Counter(SPLIT_FOLDERS[top.lower()] for top in splits)
    if twice := [name for name, n in by_split.items() if n > 1]:
        raise ClipsonicError(f"{root}: two folders of the {twice[0]} split ({', '.join(splits)}); merge them into one")
    return [item for top in splits for item in _class_folders(
        root, root / top, [path for path in files if path.is_relative_to(root / top)], SPLIT_FOLDERS[top.lower()])]


def _class_folders(root: Path, base: Path, files: list[Path], split: str | None) -> list[SourceItem]:
    """The videos under ``base``: all loose (unlabeled) or all in class folders (label = first folder below)."""
    parts = [path.relative_to(base).parts for path in files]
    loose = [p[0] for p in parts if len(p) == 1]
    if loose and len(loose) < len(parts):
        classes = sorted({p[0] for p in parts if len(p) > 1})
        raise ClipsonicError(f"{base}: videos directly inside ({', '.join(loose[:2])}) beside class folders "
                             f"({', '.join(classes[:3])}); move them into a class folder, or all videos out of the "
                             "class folders for an unlabeled set")
    return [SourceItem(path, key=path.relative_to(root).as_posix(), label=p[0] if len(p) > 1 else None, split=split)
            for path, p in zip(files, parts, strict=True)]


def _from_csv(source: Path, video_dir) -> tuple[list[SourceItem], list[Problem]]:
    try:
        with open(source, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh, delimiter="\t" if source.suffix.lower() == ".tsv" else ","))
    except UnicodeDecodeError as exc:
        raise ClipsonicError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    except (OSError, csv.Error) as exc:
        raise ClipsonicError(f"{source}: cannot read CSV ({exc})") from None
    rows = [r for r in rows if r and any(cell.strip() for cell in r)]
    if not rows:
        raise ClipsonicError(f"{source}: empty CSV")
    header = [c.strip().lower() for c in rows[0]]
    if "path" in header:  # generic manifest with a header row
        return _from_manifest_rows(source, [dict(zip(header, r, strict=False)) for r in rows[1:]], video_dir)
    if not _is_vggsound_row(rows[0]):  # a header row, but without the column that names the videos
        raise ClipsonicError(f"{source}: no 'path' column (found {header[:8]}); a manifest CSV needs a header row "
                             "with path[,start][,duration][,label][,split], a VGGSound CSV has no header and rows "
                             "youtube_id,start_seconds,label,split")
    return _from_vggsound(source, rows, video_dir)


def _is_vggsound_row(row: list[str]) -> bool:
    try:
        return len(row) >= 4 and math.isfinite(float(row[1]))
    except ValueError:
        return False


def _plain_split(where: str, split: str | None) -> str | None:
    """A split read from a file names shard files (``{split}-000000.tar``): it must be a plain file name."""
    if split is not None and safe_name(split) != split:
        raise ClipsonicError(f"{where}: split {split!r} is not a plain name (letters, digits, '._-'); it becomes "
                             "a shard file name, so fix it in the manifest")
    return split


def _from_vggsound(source: Path, rows: list[list[str]], video_dir) -> tuple[list[SourceItem], list[Problem]]:
    """VGGSound CSV rows ``youtube_id,start_seconds,label,split``: pre-cut files ``{ytid}_{start:06d}.ext``
    (the whole file) or full videos ``{ytid}.ext`` (the 10-s clip from ``start_seconds``)."""
    video_dir, index = _need_video_dir(source, video_dir)
    items, problems = [], []
    for line_no, row in enumerate(rows, 1):
        where = f"{source}:{line_no}"
        if len(row) < 4:
            problems.append(Problem(where, f"unreadable VGGSound row {row!r}: expected "
                                           "youtube_id,start_seconds,label,split"))
            continue
        ytid, start_s, label, split = (c.strip() for c in row[:4])
        split = _plain_split(where, split or None)
        try:
            start = float(start_s)
        except ValueError:
            start = math.nan
        if not (math.isfinite(start) and start >= 0):
            problems.append(Problem(where, f"start_seconds {start_s!r} is not a number of seconds >= 0"))
            continue
        key = f"{ytid}_{int(start):06d}"
        if key in index:
            items.append(SourceItem(index[key], key=key, label=label, split=split))
        elif ytid in index:
            items.append(SourceItem(index[ytid], key=key, start=start, duration=10.0, label=label, split=split))
        else:
            problems.append(Problem(str(video_dir / f"{key}.mp4"),
                                    f"missing file: neither {key}.* nor {ytid}.* in {video_dir}"))
    return items, problems


def _from_music_json(source: Path, video_dir) -> tuple[list[SourceItem], list[Problem]]:
    """MUSIC JSON ``{"videos": {"flute": [ytid, …], …}}``: label = instrument, whole videos."""
    video_dir, index = _need_video_dir(source, video_dir)
    data = read_json(source, "MUSIC JSON")
    videos = data.get("videos") if isinstance(data, dict) else None
    if not isinstance(videos, dict):
        raise ClipsonicError(f"{source}: not a MUSIC JSON; expected {{\"videos\": {{label: [ytid, …]}}}}")
    if not all(isinstance(ids, list) for ids in videos.values()):
        raise ClipsonicError(f"{source}: not a MUSIC JSON; each label must map to a list of YouTube ids")
    items, problems = [], []
    for label in sorted(videos):
        for ytid in videos[label]:
            path = index.get(str(ytid))
            if path is None:
                problems.append(Problem(str(video_dir / f"{ytid}.mp4"), f"missing file: no {ytid}.* in {video_dir}"))
            else:
                items.append(SourceItem(path, key=f"{label}/{ytid}", label=label))
    return items, problems


def read_jsonl(source: Path) -> list[dict]:
    """A manifest's rows (a line that is not a JSON object becomes ``{"__bad__": where}``)."""
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ClipsonicError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ClipsonicError(f"{source}: cannot read ({exc})") from None
    rows = []
    for line_no, line in enumerate(lines, 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            rows.append(row if isinstance(row, dict) else {"__bad__": f"{source}:{line_no}"})
    return rows


def _from_manifest_rows(source: Path, rows: list[dict], video_dir) -> tuple[list[SourceItem], list[Problem]]:
    """Generic manifest rows with ``path`` and optional ``start``, ``duration``, ``label``, ``split``."""
    base = Path(video_dir) if video_dir else source.parent
    items, problems = [], []
    for line_no, row in enumerate(rows, 1):
        where = row.get("__bad__") or f"{source}:{line_no}"
        if "__bad__" in row or not str(row.get("path") or "").strip():
            problems.append(Problem(where, "unreadable manifest row: expected a 'path' field"))
            continue
        path = Path(str(row["path"]).strip())
        path = path if path.is_absolute() else base / path
        try:
            start, duration = _seconds(row.get("start")), _seconds(row.get("duration"))
        except (TypeError, ValueError):
            problems.append(Problem(where, f"start/duration not numbers: {row.get('start')!r}, "
                                           f"{row.get('duration')!r}"))
            continue
        if (start or 0) < 0 or (duration is not None and duration <= 0):
            problems.append(Problem(where, f"start must be >= 0 and duration > 0 seconds, got {start}, {duration}"))
            continue
        if not path.is_file():
            problems.append(Problem(str(path), "missing file"))
            continue
        key = path.relative_to(base).as_posix() if path.is_relative_to(base) else path.as_posix()
        if start is not None:
            key += f"@{start:.3f}"
        label, split = ((str(row[k]).strip() or None) if row.get(k) is not None else None for k in ("label", "split"))
        split = _plain_split(where, split)
        items.append(SourceItem(path, key=key, start=start, duration=duration, label=label, split=split))
    return items, problems


def _seconds(value) -> float | None:
    """A manifest's start/duration cell: None when empty; a ValueError unless a finite number."""
    if not str(value if value is not None else "").strip():
        return None
    t = float(value)
    if not math.isfinite(t):
        raise ValueError(value)
    return t


def hash_split(key: str, test_fraction: float) -> str:
    """Deterministic split from a stable key: the same video always lands in the same split."""
    h = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64
    return "test" if h < test_fraction else "train"


def sample_key(item_key: str, clip_index: int) -> str:
    """WebDataset-safe sample key (no dots or slashes: webdataset splits names at the first dot)."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", item_key)[-60:].strip("_")
    digest = hashlib.sha1(item_key.encode()).hexdigest()[:8]
    return f"{safe}-{digest}-{clip_index:04d}"
