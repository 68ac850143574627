"""The table-driven bad-input harness (tests/test_bad_inputs_*.py): run one CLI command in-process and assert what
a user must see when they hand it something wrong — exit code 2, one error line naming the problem, no traceback —
and that nothing under the watched folders was created, changed or removed (no partial output left behind)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from clipsonic.cli import main


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input: ``argv`` (``{tmp}`` is the test's folder) must fail with an error line matching ``match``."""

    id: str  # "<command>-<what is wrong>": the bad-input report counts cases per command from it
    argv: tuple[str, ...]
    match: str  # a regex the error line must contain
    code: int = 2


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root``: relative path → (size, mtime in ns); folders (-1, 0): a folder's
    mtime moves when anything inside is made and removed again, which is not output."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, 0)
            for p in sorted(root.rglob("*"))}


def error_line(argv: list[str], capsys, code: int = 2) -> str:
    """Run ``clipsonic argv``; assert the exit code, no traceback and exactly one error line; return that line."""
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own errors (unknown choice, wrong type) exit 2 after the usage
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == code, f"exit {rc}, expected {code}; stderr:\n{err}"
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if re.match(r"^clipsonic[\w -]*: error:", line)]
    assert len(errors) == 1, f"expected one error line in:\n{err}"
    assert "\n" not in errors[0]
    return errors[0]


def check(case: Case, tmp: Path, capsys, watch: Path | None = None) -> str:
    """Run ``case`` with ``{tmp}`` filled in; assert its error and that ``watch`` (default ``tmp``) is unchanged."""
    watch = watch or tmp
    before = snapshot(watch)
    line = error_line([a.replace("{tmp}", str(tmp)) for a in case.argv], capsys, case.code)
    assert re.search(case.match, line), f"{line!r} does not match {case.match!r}"
    after = snapshot(watch)
    assert after == before, f"{case.id} left partial output: {sorted(set(after.items()) ^ set(before.items()))}"
    return line
