"""Listening-test kit without a browser: building the page folder and scoring answers CSVs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile

from clipsonic.cli import main as cli_main
from clipsonic.errors import ClipsonicError
from clipsonic.listening import make_listening_test, mean_ci, read_key, score_answers
from clipsonic.listening.make import CSV_COLUMNS, read_system, write_manifest

# c3 tries everything that can break out of the page's JSON script element or its HTML
ITEMS = {"a1": "dog barking", "b2": 'a "loud" engine, revving',
         "c3": "rain </script> <!--<script> & &amp; \u2028 \u2029 --> on a roof"}


def make_system(folder: Path, freq: float, manifest: bool = True, items=ITEMS) -> Path:
    folder.mkdir(parents=True)
    lines = []
    for i, (item, query) in enumerate(items.items()):
        t = np.arange(8000) / 16000
        soundfile.write(folder / f"{item}.wav", 0.3 * np.sin(2 * np.pi * freq * (i + 1) * t), 16000)
        if manifest:
            lines.append(json.dumps({"file": f"{item}.wav", "item": item, "query": query}))
        else:
            (folder / f"{item}.txt").write_text(query + "\n")
    if manifest:
        (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture()
def test_dir(tmp_path) -> Path:
    systems = {
        "CLIPSonic-PD": make_system(tmp_path / "pd", 300),
        "CLIPSonic-ZS": make_system(tmp_path / "zs", 500, manifest=False),
    }
    make_listening_test(systems, tmp_path / "test", seed=3, title="Test A")
    return tmp_path / "test"


def test_make_writes_self_contained_page_with_hidden_systems(test_dir):
    page = (test_dir / "page" / "index.html").read_text()
    key = read_key(test_dir)
    assert len(key["trials"]) == 6 and sorted(key["systems"]) == ["CLIPSonic-PD", "CLIPSonic-ZS"]
    audio = sorted((test_dir / "page" / "audio").iterdir())
    assert len(audio) == 6
    for needle in ("CLIPSonic", "PD", "ZS", "pd/", "zs/", "a1.wav"):
        assert needle not in page
        assert not any(needle in p.name for p in audio)
    assert key["test_id"] in page
    # every trial's audio is a byte copy of its system's file
    data = json.loads(page.split('id="test-data" type="application/json">')[1].split("</script>")[0])
    for trial in data["trials"]:
        entry = key["trials"][trial["id"]]
        assert (test_dir / "page" / trial["audio"]).read_bytes() == Path(entry["source"]).read_bytes()
        assert trial["query"] == ITEMS[entry["item"]]
    assert "http://" not in page and "https://" not in page and "src=\"http" not in page  # no network


def test_make_refuses_bad_systems(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ClipsonicError, match="no audio"):
        make_listening_test({"x": empty}, tmp_path / "out")
    bare = tmp_path / "bare"
    bare.mkdir()
    soundfile.write(bare / "q.wav", np.zeros(100), 16000)
    with pytest.raises(ClipsonicError, match="no query for q.wav"):
        make_listening_test({"x": bare}, tmp_path / "out")
    other = make_system(tmp_path / "other", 300, items={"zz": "cat"})
    with pytest.raises(ClipsonicError, match="share no item"):
        make_listening_test({"a": make_system(tmp_path / "a", 200), "b": other}, tmp_path / "out")


def test_items_subset_is_seeded(tmp_path):
    systems = {"a": make_system(tmp_path / "a", 200), "b": make_system(tmp_path / "b", 400)}
    make_listening_test(systems, tmp_path / "t1", num_items=2, seed=1)
    make_listening_test(systems, tmp_path / "t2", num_items=2, seed=1)
    assert read_key(tmp_path / "t1")["items"] == read_key(tmp_path / "t2")["items"]
    assert len(read_key(tmp_path / "t1")["trials"]) == 4


def write_answers(path: Path, key: dict, listener: str, ratings: dict[str, list[tuple]],
                  test_id: str | None = None) -> Path:
    """ratings: system → [(fidelity, relevance), …] in the order of that system's trial ids."""
    rows = []
    for system, values in ratings.items():
        ids = sorted(t for t, e in key["trials"].items() if e["system"] == system)
        for trial_id, (fid, rel) in zip(ids, values, strict=False):
            rows.append({"test_id": test_id or key["test_id"], "listener": listener, "trial_id": trial_id,
                         "position": len(rows) + 1, "query": key["trials"][trial_id]["query"],
                         "fidelity": fid, "relevance": rel, "plays": 1, "answered_at": ""})
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_mean_ci_by_hand():
    # [4, 5, 3, 4]: mean 4, s = √(2/3), t_{0.975,3} = 3.182446305 → 3.182446305 · 0.816497 / 2
    mean, half = mean_ci([4, 5, 3, 4])
    assert mean == 4 and half == pytest.approx(3.182446305 * math.sqrt(2 / 3) / 2, rel=1e-8)
    assert math.isnan(mean_ci([3])[1])
    mean, half = mean_ci([1, 2, 3, 4, 5, 1, 2, 3, 4, 5])  # s² = 20/9, t_{0.975,9} = 2.262157163
    assert mean == 3 and half == pytest.approx(2.262157163 * math.sqrt(20 / 9) / math.sqrt(10), rel=1e-8)


def test_score_reproduces_hand_computed_mos(test_dir, tmp_path, capsys):
    key = read_key(test_dir)
    a = write_answers(tmp_path / "a.csv", key, "ann", {"CLIPSonic-PD": [(4, 5), (5, 4), (3, "")],
                                                        "CLIPSonic-ZS": [(2, 1), (3, 2), (1, 3)]})
    b = write_answers(tmp_path / "b.csv", key, "bob", {"CLIPSonic-PD": [(4, 4)], "CLIPSonic-ZS": [(2, 2)]})
    results = {(r.system, r.criterion): r for r in score_answers([a, b], test_dir)}
    pd_fid = results[("CLIPSonic-PD", "fidelity")]
    assert pd_fid.n == 4 and pd_fid.mean == 4
    assert pd_fid.ci95 == pytest.approx(3.182446305 * math.sqrt(2 / 3) / 2, rel=1e-8)
    pd_rel = results[("CLIPSonic-PD", "relevance")]  # blank rating skipped: [5, 4, 4]
    assert pd_rel.n == 3 and pd_rel.mean == pytest.approx(13 / 3)
    zs_rel = results[("CLIPSonic-ZS", "relevance")]  # [1, 2, 3, 2]: mean 2, s² = 2/3
    assert zs_rel.mean == 2 and zs_rel.ci95 == pytest.approx(3.182446305 * math.sqrt(2 / 3) / 2, rel=1e-8)

    out = tmp_path / "scores"
    assert cli_main(["listening-test", "score", str(a), str(b), "--test", str(test_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| CLIPSonic-PD | 4.00 ± 1.30 (n=4) | 4.33 ± " in printed
    assert (out / "mos.md").read_text().count("CLIPSonic-") == 2
    assert json.loads((out / "mos.json").read_text())["test_id"] == key["test_id"]


def test_score_refuses_foreign_duplicate_and_bad_answers(test_dir, tmp_path, capsys):
    key = read_key(test_dir)
    foreign = write_answers(tmp_path / "f.csv", key, "eve", {"CLIPSonic-PD": [(4, 4)]}, test_id="0123456789ab")
    with pytest.raises(ClipsonicError, match="answers to test 0123456789ab, not to test"):
        score_answers([foreign], test_dir)
    a = write_answers(tmp_path / "a.csv", key, "ann", {"CLIPSonic-PD": [(4, 4)]})
    with pytest.raises(ClipsonicError, match="in both"):
        score_answers([a, a], test_dir)
    bad = write_answers(tmp_path / "bad.csv", key, "ann", {"CLIPSonic-PD": [(7, 4)]})
    with pytest.raises(ClipsonicError, match="not 1–5"):
        score_answers([bad], test_dir)
    (tmp_path / "other.csv").write_text("x,y\n1,2\n")
    with pytest.raises(ClipsonicError, match="missing columns"):
        score_answers([tmp_path / "other.csv"], test_dir)
    # the CLI turns these into one line and exit code 2
    assert cli_main(["listening-test", "score", str(foreign), "--test", str(test_dir)]) == 2
    assert "not to test" in capsys.readouterr().err


def test_cli_make(tmp_path):
    make_system(tmp_path / "pd", 300)
    make_system(tmp_path / "zs", 500)
    code = cli_main(["listening-test", "make", "--systems", f"PD={tmp_path / 'pd'}", f"ZS={tmp_path / 'zs'}",
                     "--out", str(tmp_path / "t"), "--items", "2", "--seed", "5"])
    assert code == 0
    assert len(read_key(tmp_path / "t")["trials"]) == 4
    assert cli_main(["listening-test", "make", "--systems", "no-equals-sign", "--out", str(tmp_path / "u")]) == 2


def test_score_finds_the_key_above_the_answers(test_dir, capsys):
    key = read_key(test_dir)
    (test_dir / "answers").mkdir()
    answers = write_answers(test_dir / "answers" / "ann.csv", key, "ann", {"CLIPSonic-PD": [(5, 5)]})
    assert cli_main(["listening-test", "score", str(answers)]) == 0  # no --test: key.json two folders up
    assert "| CLIPSonic-PD | 5.00 (n=1) |" in capsys.readouterr().out


def test_score_reads_answers_saved_with_a_byte_order_mark(test_dir):
    """A spreadsheet that re-saves the CSV as "UTF-8 with BOM" must not hide the test_id column."""
    key = read_key(test_dir)
    plain = write_answers(test_dir / "ann.csv", key, "ann", {"CLIPSonic-PD": [(4, 2)]})
    bom = test_dir / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    rated = {(r.system, r.criterion): r.mean for r in score_answers([bom], test_dir) if r.n}
    assert rated == {("CLIPSonic-PD", "fidelity"): 4.0, ("CLIPSonic-PD", "relevance"): 2.0}


def test_page_escapes_everything_it_embeds(tmp_path):
    systems = {"a": make_system(tmp_path / "a", 200)}
    page = make_listening_test(systems, tmp_path / "t", title="<script>alert(1)</script> & co").read_text()
    head, rest = page.split('<script id="test-data" type="application/json">')
    payload, tail = rest.split("</script>", 1)
    for raw in ("<", ">", "&", "\u2028", "\u2029"):
        assert raw not in payload, raw
    assert sorted(t["query"] for t in json.loads(payload)["trials"]) == sorted(ITEMS.values())
    assert "<script>alert" not in head and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in head
    template = (Path(make_listening_test.__code__.co_filename).parent / "page.html").read_text()
    assert page.count("<script") == template.count("<script") and page.count("</script>") == template.count("</script>")


def test_manifest_queries_may_hold_unicode_line_separators(tmp_path):
    """evaluate writes manifests with ensure_ascii=False: U+2028 inside a query is not the end of a line."""
    folder = make_system(tmp_path / "a", 200)
    write_manifest(folder, [{"file": f"{item}.wav", "item": item, "query": query} for item, query in ITEMS.items()])
    assert "\u2028" in (folder / "manifest.jsonl").read_text(encoding="utf-8")
    assert {item: query for item, (query, _) in read_system("a", folder).items()} == ITEMS


def test_make_refuses_an_existing_test_unless_overwrite(test_dir, tmp_path, capsys):
    systems = [f"PD={tmp_path / 'pd'}", f"ZS={tmp_path / 'zs'}"]
    key, page = (test_dir / "key.json").read_bytes(), (test_dir / "page" / "index.html").read_bytes()
    argv = ["listening-test", "make", "--systems", *systems, "--out", str(test_dir), "--seed", "9"]
    assert cli_main(argv) == 2
    assert "already holds a listening test" in capsys.readouterr().err
    assert (test_dir / "key.json").read_bytes() == key and (test_dir / "page" / "index.html").read_bytes() == page
    assert cli_main([*argv, "--overwrite"]) == 0
    assert read_key(test_dir)["test_id"] != json.loads(key)["test_id"]
    assert len(list((test_dir / "page" / "audio").iterdir())) == 6  # the old audio is gone, not mixed in
    assert sorted(p.name for p in test_dir.iterdir()) == ["README.txt", "key.json", "page"]
