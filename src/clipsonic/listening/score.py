"""Score a listening test: MOS ± 95% confidence interval per system and criterion (Tables 3/4 layout).

The interval is Student's t: ``mean ± t_{0.975, n−1} · s / √n`` with ``s`` the sample standard
deviation (ddof 1) of all ratings a system got on a criterion, pooled over listeners and items.
Answers from another test (a different test id) are refused, as are two files holding the same
listener's answers to the same trial.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clipsonic.errors import ClipsonicError
from clipsonic.files import lock_folder, write_bytes_atomic, write_json_atomic
from clipsonic.listening.make import CRITERIA, CSV_COLUMNS, read_key


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """``(mean, half-width)`` of the Student-t confidence interval; half-width is NaN for n < 2."""
    if len(values) < 2:
        return (float(values[0]) if values else math.nan), math.nan
    from scipy import stats  # heavy (1 s): loaded only to score a listening test

    half = stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * stats.sem(values)  # sem: s / √n, ddof 1
    return float(np.mean(values)), float(half)


@dataclasses.dataclass(frozen=True)
class MosResult:
    system: str
    criterion: str
    n: int
    mean: float
    ci95: float

    def cell(self) -> str:
        """``mean ± ci95 (n=…)``; no interval for a single rating, "–" for none."""
        if self.n == 0:
            return "–"
        interval = "" if math.isnan(self.ci95) else f" ± {self.ci95:.2f}"
        return f"{self.mean:.2f}{interval} (n={self.n})"


def read_answers(path: str | os.PathLike, test_id: str) -> list[dict[str, str]]:
    """Rows of one answers CSV, checked: expected columns, this test's id, ratings 1–5 or blank."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: a spreadsheet may add a BOM
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise ClipsonicError(f"{path} not found") from None
    except IsADirectoryError:
        raise ClipsonicError(f"{path} is a folder; pass the answers CSV files listeners downloaded") from None
    except UnicodeDecodeError as exc:
        raise ClipsonicError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); pass the answers CSV "
                             "as the page downloaded it") from None
    except csv.Error as exc:
        raise ClipsonicError(f"{path} is not a CSV file ({exc})") from None
    if not rows:
        raise ClipsonicError(f"{path} holds no answers")
    missing = [c for c in CSV_COLUMNS if c not in rows[0]]
    if missing:
        raise ClipsonicError(f"{path} is not a listening-test answers CSV (missing columns {missing})")
    for number, row in enumerate(rows, 2):
        if any(row[c] is None for c in CSV_COLUMNS):  # csv.DictReader fills the fields of a short row with None
            raise ClipsonicError(f"{path}:{number}: the row has fewer fields than the header; the file is cut short")
    foreign = {r["test_id"] for r in rows} - {test_id}
    if foreign:
        raise ClipsonicError(f"{path} holds answers to test {', '.join(sorted(foreign))}, not to test {test_id}: "
                             "score it with the key of the test it came from")
    for number, row in enumerate(rows, 2):
        for criterion in CRITERIA:
            value = row[criterion].strip()
            if value and value not in {"1", "2", "3", "4", "5"}:
                raise ClipsonicError(f"{path}:{number}: {criterion} rating {value!r} is not 1–5")
    return rows


def score_answers(answer_files: Sequence[str | os.PathLike], test_dir: str | os.PathLike) -> list[MosResult]:
    """MOS ± 95% CI for every (system, criterion) from the answers of all listeners."""
    if not answer_files:
        raise ClipsonicError("give at least one answers CSV")
    key = read_key(test_dir)
    trials = key["trials"]
    ratings: dict[tuple[str, str], list[float]] = {(s, c): [] for s in key["systems"] for c in CRITERIA}
    seen: dict[tuple[str, str], Path] = {}
    for file in answer_files:
        for row in read_answers(file, key["test_id"]):
            trial = trials.get(row["trial_id"])
            if trial is None:
                raise ClipsonicError(f"{file}: trial {row['trial_id']!r} is not in test {key['test_id']}")
            who = (row["listener"], row["trial_id"])
            if who in seen:
                raise ClipsonicError(f"listener {row['listener']!r} answered trial {row['trial_id']} in both "
                                     f"{seen[who]} and {file}: pass each answers file once")
            seen[who] = Path(file)
            for criterion in CRITERIA:
                if row[criterion].strip():
                    ratings[(trial["system"], criterion)].append(float(row[criterion]))
    return [MosResult(s, c, len(v), *mean_ci(v)) for (s, c), v in ratings.items()]


def format_table(results: Sequence[MosResult]) -> str:
    """Markdown: one row per system, one ``MOS ± CI`` column per criterion."""
    cell = {(r.system, r.criterion): r.cell() for r in results}
    lines = ["| System | " + " | ".join(c.capitalize() for c in CRITERIA) + " |",
             "|---|" + "---|" * len(CRITERIA)]
    for system in dict.fromkeys(r.system for r in results):
        lines.append(f"| {system} | " + " | ".join(cell[(system, c)] for c in CRITERIA) + " |")
    return "\n".join(lines) + "\n"


def write_results(results: Sequence[MosResult], out: str | os.PathLike, test_id: str) -> tuple[Path, Path]:
    """``mos.md`` (the table) and ``mos.json`` (every number) under ``out``."""
    with lock_folder(out, "listening-test score"):
        return _write_results(results, Path(out), test_id)


def _write_results(results: Sequence[MosResult], out: Path, test_id: str) -> tuple[Path, Path]:
    table = f"MOS ± 95% CI (Student t), listening test {test_id}\n\n{format_table(results)}"
    write_bytes_atomic(out / "mos.md", table.encode())
    write_json_atomic(out / "mos.json", {
        "format": "clipsonic-listening-mos", "version": 1, "test_id": test_id,
        "results": [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                     for k, v in dataclasses.asdict(r).items()} for r in results],
    })
    return out / "mos.md", out / "mos.json"
