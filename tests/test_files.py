"""The folder lock, path confinement and name sanitising of ``clipsonic.files``, and the CLI's one-line OS errors."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipsonic.cli import main
from clipsonic.errors import ClipsonicError, one_line
from clipsonic.files import inside, lock_folder, safe_name

SRC = str(Path(__file__).resolve().parents[1] / "src")


def hold_lock(folder: Path) -> subprocess.Popen:
    """A light process (no torch) holding ``lock_folder(folder)`` until killed; returns once it holds it."""
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from clipsonic.files import lock_folder\n"
            "with lock_folder(sys.argv[2], 'test'):\n    print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, SRC, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_with_the_holders_pid_and_the_lock_dies_with_it(tmp_path):
    out = tmp_path / "out"
    holder = hold_lock(out)
    try:
        with pytest.raises(ClipsonicError, match=rf"{out} is in use by another clipsonic process \(pid {holder.pid}\)"):
            with lock_folder(out, "preprocess"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with lock_folder(out, "preprocess") as folder:  # SIGKILL released it: nothing stale to clean up by hand
        (folder / "kept").write_text("x")
    assert sorted(p.name for p in out.iterdir()) == ["kept"]  # no lock file left in the user's folder


def test_a_folder_the_lock_created_goes_again_when_left_empty(tmp_path):
    with pytest.raises(RuntimeError):
        with lock_folder(tmp_path / "new" / "out", "train"):
            raise RuntimeError("failed before writing")
    assert not (tmp_path / "new" / "out").exists()
    (tmp_path / "file").write_text("x")
    for folder in (tmp_path / "file", tmp_path / "file" / "run"):
        with pytest.raises(ClipsonicError, match=f"^{tmp_path / 'file'} is a file; train writes the folder {folder} "):
            with lock_folder(folder, "train"):
                pass


@pytest.mark.parametrize("relative", ["/etc/passwd", "../x", "a/../../x", "a\nb", "a\x1b[2Jb", "", "link/x"])
def test_paths_read_from_files_stay_inside_their_folder(tmp_path, relative):
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(ClipsonicError, match="split"):
        inside(root, relative, "split")


def test_plain_relative_paths_are_kept_and_names_from_data_are_made_safe(tmp_path):
    assert inside(tmp_path, "train/a.tar", "shard") == tmp_path / "train" / "a.tar"
    assert inside(tmp_path, "a/../b", "shard") == tmp_path / "a/../b"
    assert safe_name("../../etc/pass wd\n") == "_.._etc_pass_wd_"
    assert safe_name("...") == "item" and safe_name(".hidden") == "hidden" and len(safe_name("x" * 500)) == 120


def test_os_errors_become_one_line_with_what_to_do():
    full = one_line(OSError(errno.ENOSPC, "No space left on device", "/data/x.tar"))
    assert full == ("/data/x.tar: No space left on device (free space on that disk, or choose another output folder, "
                    "then run the same command again)")
    assert one_line(OSError(errno.EROFS, "Read-only file system", "/mnt/x")).endswith("(choose a folder you can write to)")
    assert one_line(ClipsonicError("a\nb")) == "a b"


def test_the_cli_stops_quietly_when_its_reader_goes_away(tmp_path):
    # `clipsonic generate --list-builtin-prompts | true`: the reader is gone before the first write
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", f"{sys.executable} -m clipsonic generate "
                           "--list-builtin-prompts | true"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": SRC})
    assert proc.returncode == 141 and proc.stderr == ""  # 128 + SIGPIPE, as `cat` reports it
    assert main(["--quiet"]) == 2  # no command: help, exit 2 (sanity of the in-process entry)
