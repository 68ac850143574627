"""Every file clipsonic writes goes through here: atomic files and folders, the one JSON reader, the lock on an
output folder and the check that keeps paths read from files inside their folder.

Readers never see half a file or half a folder, and a failure (or a kill) leaves what was there:
files and folders are written beside their target under a dot-name and renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from clipsonic.errors import ClipsonicError


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """The parsed JSON at ``path``; a :class:`ClipsonicError` naming the file, and ``what`` it should be, otherwise."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClipsonicError(f"{path}: no such file (expected a {what})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClipsonicError(f"{path}: not a readable {what} ({exc})") from None
    except RecursionError:  # json's recursive parser on thousands of nested brackets
        raise ClipsonicError(f"{path}: not a readable {what} (nested too deeply)") from None


def read_versioned_json(path: str | os.PathLike, fmt: str, version: int, *,
                        unversioned: int | None = None) -> dict[str, Any]:
    """A JSON object with ``"format": fmt`` and ``"version": version``; one line naming both versions otherwise.
    ``unversioned``: the version of files written before these two fields existed."""
    data = read_json(path, f"{fmt} file")
    if unversioned is not None and isinstance(data, dict) and "format" not in data:
        data = {**data, "format": fmt, "version": unversioned}
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise ClipsonicError(f"{path}: not a {fmt} file")
    if data.get("version") != version:
        raise ClipsonicError(f"{path}: {fmt} version {data.get('version')} was written by another clipsonic; "
                             f"this one reads version {version} (use the clipsonic that wrote it, or re-create it)")
    return data


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON to a temporary file in the same folder, then rename: readers never see half a file."""
    write_bytes_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def write_bytes_atomic(path: str | os.PathLike, payload: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(payload)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path ``.{name}.XXXX.tmp`` beside ``path`` (removed on error; resumable writers clean up
    strays); on success it is fsynced, given the umask's permissions (not mkstemp's 0600) and renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        mask = os.umask(0)  # the only way to read the umask is to set it
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target`` (removed on error); on success it replaces ``target``
    whole. A folder cannot be renamed over a non-empty one, so the old one is renamed aside first and put
    back if the second rename fails: readers see the old folder or the new one, never a mixture."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        if target.exists():
            os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            if old.exists():
                os.replace(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
        fsync_dir(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder below ``root`` (and ``root``): what a rename then publishes is on disk."""
    for path in [root, *root.rglob("*")]:
        if path.is_dir():
            fsync_dir(path)
        elif path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


# Control characters (a newline, an escape) never belong in a name taken from a file.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def inside(root: str | os.PathLike, relative: str | os.PathLike, what: str) -> Path:
    """``root / relative`` for a path read from a file (a manifest, dataset.json, model_index.json); a
    :class:`ClipsonicError` naming ``what`` when it is absolute, holds a control character, or resolves
    (``..``, symlinks) outside ``root``."""
    text = os.fspath(relative)
    if not text or _CONTROL.search(text) or Path(text).is_absolute():
        raise ClipsonicError(f"{what} {text!r} is not a plain relative path inside {root}")
    path = Path(root) / text
    if not path.resolve().is_relative_to(Path(root).resolve()):
        raise ClipsonicError(f"{what} {text!r} leads outside {root}; paths read from files must stay inside it")
    return path


def safe_name(text: str, fallback: str = "item") -> str:
    """``text`` as one file name: letters, digits, ``._-`` kept, anything else ``_``; no leading dot; ≤ 120 chars."""
    name = re.sub(r"[^\w.-]", "_", text, flags=re.ASCII).lstrip(".")[:120]
    return name or fallback


@contextlib.contextmanager
def lock_folder(folder: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold an exclusive OS lock (``flock``) on ``folder`` while ``command`` writes it; a second writer gets a
    :class:`ClipsonicError` naming the holder's pid. The kernel drops the lock when the holder dies, so nothing
    can go stale, and no lock file is left behind: the lock is on the folder itself. A folder this call created
    is removed again when the command leaves it empty (a refused or failed first run leaves nothing)."""
    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except (FileExistsError, NotADirectoryError):  # the folder, or a folder above it, is a file
        file = next(p for p in (folder, *folder.parents) if p.exists() and not p.is_dir())
        raise ClipsonicError(f"{file} is a file; {command} writes the folder {folder} (choose another path)") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            holder = _lock_holder(folder)
            pid = f" (pid {holder})" if holder else ""
            raise ClipsonicError(f"{folder} is in use by another clipsonic process{pid}; wait for it to finish, "
                                 f"or stop it, before running {command} on the same folder") from None
        try:
            yield folder
        finally:
            if created and not any(folder.iterdir()):
                folder.rmdir()
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _lock_holder(folder: Path) -> int | None:
    """The pid that holds a flock on ``folder``, from Linux's /proc/locks (None elsewhere or when gone)."""
    st = folder.stat()
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if "FLOCK" in fields and ident in fields:
            return int(fields[fields.index(ident) - 1])
    return None


def read_safetensors_header(fh: BinaryIO, path: str | os.PathLike) -> bytes:
    """The header of the safetensors file open in ``fh`` (at its start) as key-sorted JSON, leaving ``fh`` at the
    tensor data; for hashing by content: safetensors writes its metadata from a hash map, so the same tensors saved
    twice can order the keys differently. A file that is not safetensors is refused in one line."""
    length = int.from_bytes(fh.read(8), "little")
    try:
        size = os.fstat(fh.fileno()).st_size
        if 8 + length > size:  # a corrupt length would otherwise ask read() for exabytes
            raise ValueError(f"header of {length} bytes in a {size}-byte file")
        return json.dumps(json.loads(fh.read(length)), sort_keys=True).encode()
    except ValueError as e:
        raise ClipsonicError(f"{path} is not a safetensors file ({e}); re-export or re-download it") from e
