"""Build a listening test: a self-contained static page plus the key that only the experimenter keeps.

Writes under ``out``: ``page/index.html`` (``page.html`` filled in: the whole test, CSS and JavaScript inline, works
from file://), ``page/audio/*`` (the audio under opaque names: system names never reach the page), ``key.json`` (the
test id, and each trial id's system, item, query and source file) and ``README.txt`` (what to send to listeners and
how to score their answers). Each listener gets the trials in an order seeded by (test id, listener id), so a reload
resumes it (progress in ``localStorage`` under the test id), rates each 1–5 for fidelity and relevance to the shown
query, and downloads the answers as CSV with the columns :data:`CSV_COLUMNS` (the test id in every row).
A *system* is a folder of audio with a ``manifest.jsonl`` (lines of ``{"file", "item", "query"}``, as ``clipsonic
evaluate`` writes) or a ``<stem>.txt`` query beside each file (item = file stem); items all systems share are trials.
"""

from __future__ import annotations

import html
import importlib.resources
import json
import logging
import os
import random
import shutil
import string
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from clipsonic.errors import ClipsonicError
from clipsonic.files import (
    atomic_directory,
    inside,
    lock_folder,
    read_versioned_json,
    write_bytes_atomic,
    write_json_atomic,
)

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a")
MANIFEST = "manifest.jsonl"
KEY_FILE = "key.json"
KEY_FORMAT = "clipsonic-listening-key"
CSV_COLUMNS = ("test_id", "listener", "trial_id", "position", "query", "fidelity", "relevance", "plays", "answered_at")
CRITERIA = ("fidelity", "relevance")  # the names of page.html's two rating scales


class _PageTemplate(string.Template):
    delimiter = "@"  # the page's JavaScript uses $ (its getElementById helper and template literals)


# Characters that must not appear raw in the page's JSON script element: "</" and "<!--" end or change the script
# element, ">" and "&" the HTML around it, U+2028/9 end a line in older JavaScript; each is its JSON \u escape.
_SCRIPT_SAFE = str.maketrans({c: f"\\u{ord(c):04x}" for c in "<>&\u2028\u2029"})


def render_page(data: dict[str, Any]) -> str:
    """The page for ``{"test_id", "title", "trials": [{"id", "audio", "query"}]}``."""
    payload = json.dumps({**data, "columns": CSV_COLUMNS}, ensure_ascii=False).translate(_SCRIPT_SAFE)
    template = importlib.resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
    return _PageTemplate(template).substitute(title=html.escape(str(data.get("title", "Listening test"))),
                                              count=len(data["trials"]), payload=payload)


def write_manifest(folder: Path, entries: Sequence[dict[str, str]]) -> None:
    """``manifest.jsonl``: one ``{"file", "item", "query"}`` per audio file of a system folder."""
    text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
    write_bytes_atomic(folder / MANIFEST, text.encode("utf-8"))


def read_system(name: str, folder: str | os.PathLike) -> dict[str, tuple[str, Path]]:
    """``{item: (query, audio file)}`` of one system, from ``manifest.jsonl`` or ``<stem>.txt`` sidecars. Every
    file must lie inside ``folder`` (a manifest could otherwise hand listeners any readable file)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ClipsonicError(f"system {name!r}: {folder} is not a folder of audio files")
    manifest = folder / MANIFEST
    stimuli: dict[str, tuple[str, Path]] = {}
    entries = _manifest_entries(manifest) if manifest.is_file() else _sidecar_entries(name, folder)
    for where, item, query, file in entries:
        path = inside(folder, file, f"{where}: audio file")
        if path.suffix.lower() not in AUDIO_SUFFIXES or not path.is_file():
            raise ClipsonicError(f"{where}: {path} is not an audio file ({', '.join(AUDIO_SUFFIXES)})")
        if item in stimuli:
            raise ClipsonicError(f"{where}: item {item!r} appears twice in system {name!r}; give each item once")
        stimuli[item] = (query, path)
    if not stimuli:
        raise ClipsonicError(f"system {name!r}: no audio in {folder} ({', '.join(AUDIO_SUFFIXES)})")
    return stimuli


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ClipsonicError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None


def _manifest_entries(manifest: Path) -> Iterator[tuple[str, str, str, str]]:
    """``(where, item, query, file)`` per line of a manifest; a line ends at a newline only (a query may hold U+2028,
    where ``str.splitlines`` would cut it)."""
    for number, line in enumerate(_text(manifest).split("\n"), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            item, query, file = entry["item"], entry["query"], entry["file"]
        except (json.JSONDecodeError, RecursionError, KeyError, TypeError, IndexError) as exc:
            raise ClipsonicError(f"{manifest}:{number}: need {{\"file\", \"item\", \"query\"}} ({exc!r})") from None
        if not all(isinstance(v, str) for v in (item, query, file)):
            raise ClipsonicError(f"{manifest}:{number}: \"file\", \"item\" and \"query\" must be strings")
        yield f"{manifest}:{number}", item, query, file


def _sidecar_entries(name: str, folder: Path) -> Iterator[tuple[str, str, str, str]]:
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES):
        sidecar = path.with_suffix(".txt")
        if not sidecar.is_file():
            raise ClipsonicError(f"system {name!r}: no query for {path.name}; add {MANIFEST} "
                                 f"(lines of {{\"file\", \"item\", \"query\"}}) or {sidecar.name}")
        yield str(path), path.stem, _text(inside(folder, sidecar.name, "query file")).strip(), path.name


def make_listening_test(systems: Mapping[str, str | os.PathLike], out: str | os.PathLike, *,
                        num_items: int | None = None, seed: int = 0, title: str = "Listening test",
                        overwrite: bool = False) -> Path:
    """Write the page, its audio and ``key.json`` under ``out``; returns the page's ``index.html``.

    ``systems``: display name → folder (names stay in ``key.json``; listeners never see them). ``num_items``:
    rate only this many of the items all systems share, drawn with ``seed`` (which also names the audio files).
    A test already in ``out`` is replaced only with ``overwrite`` (its key is what scores its answers).
    """
    if not systems:
        raise ClipsonicError("give at least one system (--systems NAME=DIR …)")
    if num_items is not None and num_items < 1:
        raise ClipsonicError(f"--items must be at least 1, got {num_items}")
    by_system = {name: read_system(name, folder) for name, folder in systems.items()}
    items = sorted(set.intersection(*(set(s) for s in by_system.values())))
    for name, stimuli in by_system.items():
        if len(stimuli) > len(items):
            log.warning("system %r: %d item(s) not shared by every system are left out", name, len(stimuli) - len(items))
    if not items:
        raise ClipsonicError("the systems share no item: their manifests' item ids must match")
    rng = random.Random(seed)
    if num_items is not None:
        items = sorted(rng.sample(items, min(num_items, len(items))))
    out = Path(out)
    with lock_folder(out, "listening-test make"):
        page, key_file = out / "page", out / KEY_FILE
        if not overwrite and (key_file.exists() or page.is_file() or (page.is_dir() and any(page.iterdir()))):
            raise ClipsonicError(f"{out} already holds a listening test (page/ or {KEY_FILE}); pass --overwrite to "
                                 "replace it (answers to it can then no longer be scored), or choose another --out")
        test_id = uuid.UUID(int=rng.getrandbits(128), version=4).hex[:12]
        key = _write_page(page, by_system, items, rng, test_id, title)
        write_json_atomic(key_file, {"format": KEY_FORMAT, "version": 1, "test_id": test_id, "title": title,
                                     "systems": list(by_system), "items": items, "trials": key})
        write_bytes_atomic(out / "README.txt", (
            f"Listening test {test_id}: {len(key)} trials ({len(by_system)} systems x {len(items)} items).\n"
            "Send listeners the page/ folder (zip it, or host it as static files); they open page/index.html,\n"
            "rate every trial and download their answers as CSV. key.json stays with you: it maps the\n"
            "opaque trial ids to systems. Score with:\n"
            f"  clipsonic listening-test score answers-*.csv --test {out}\n").encode())
    log.info("listening test %s: %d trials written to %s", test_id, len(key), page)
    return page / "index.html"


def _write_page(page: Path, by_system: dict[str, dict[str, tuple[str, Path]]], items: list[str], rng: random.Random,
                test_id: str, title: str) -> dict[str, dict[str, str]]:
    """Write ``page/`` whole (audio under opaque names, index.html); returns the key's trials."""
    pairs = [(name, item) for item in items for name in by_system]
    rng.shuffle(pairs)  # trial ids and file names carry no trace of the system
    trials, key = [], {}
    with atomic_directory(page) as page_dir:
        (page_dir / "audio").mkdir()
        for number, (name, item) in enumerate(pairs):
            query, path = by_system[name][item]
            trial_id = f"t{number:03d}"
            audio_name = f"{rng.getrandbits(64):016x}{path.suffix.lower()}"
            shutil.copyfile(path, page_dir / "audio" / audio_name)
            trials.append({"id": trial_id, "audio": f"audio/{audio_name}", "query": query})
            key[trial_id] = {"system": name, "item": item, "query": query, "source": str(path)}
        trials.sort(key=lambda t: t["id"])
        (page_dir / "index.html").write_text(render_page({"test_id": test_id, "title": title, "trials": trials}),
                                             encoding="utf-8")
    return key


def read_key(test_dir: str | os.PathLike) -> dict:
    """The ``key.json`` of a test folder, its shape checked (scoring indexes it)."""
    path = Path(test_dir) / KEY_FILE
    key = read_versioned_json(path, KEY_FORMAT, 1)
    systems, trials = key.get("systems"), key.get("trials")
    if not (isinstance(key.get("test_id"), str) and isinstance(systems, list) and all(isinstance(s, str) for s in systems)
            and isinstance(trials, dict) and all(isinstance(t, dict) and t.get("system") in systems
                                                 and isinstance(t.get("query", ""), str) for t in trials.values())):
        raise ClipsonicError(f"{path}: a damaged listening-test key (test_id, systems, trials); use the {KEY_FILE} "
                             "`listening-test make` wrote")
    return key
