"""The listening-test page in a real browser, as a listener uses it: opened from its folder's ``index.html``.

Uses the ``page`` fixture of tests/support/browser.py (headless system Chromium through Playwright); skipped,
saying what to install, where no Chromium or no playwright package is found.
"""

from __future__ import annotations

import csv

import pytest
from test_listening import make_system  # tests/ is on sys.path under pytest

from clipsonic.listening import make_listening_test, read_key, score_answers

# Resolves with the player's duration once the browser has read the audio file's header.
AUDIO_READY = """() => new Promise((resolve, reject) => {
  const a = document.getElementById('player');
  if (a.readyState >= 1) resolve(a.duration);
  a.addEventListener('loadedmetadata', () => resolve(a.duration), {once: true});
  a.addEventListener('error', () => reject(new Error('audio failed: ' + a.src)), {once: true});
})"""


def _rate(page, fidelity: int, relevance: int) -> None:
    page.locator(f"#fidelity input[value='{fidelity}']").check()
    assert page.locator("#next").is_disabled()  # both ratings needed
    page.locator(f"#relevance input[value='{relevance}']").check()
    assert page.locator("#next").is_enabled()


def test_page_in_headless_chromium(tmp_path, page):
    systems = {"PD": make_system(tmp_path / "pd", 300), "ZS": make_system(tmp_path / "zs", 500)}
    index = make_listening_test(systems, tmp_path / "test", seed=1)
    key = read_key(tmp_path / "test")
    page.goto(index.as_uri())

    assert page.locator("#start").is_visible()
    page.locator("#listener").fill("ann o'neil")
    page.locator("#start-button").click()
    total = len(key["trials"])
    given: dict[str, tuple[int, int]] = {}
    seen_order = []
    for step in range(total):
        assert page.locator("#progress-text").text_content() == f"Trial {step + 1} of {total}"
        trial_id = page.locator("#player").get_attribute("data-trial")
        seen_order.append(trial_id)
        # the query shown is this trial's, the audio plays from the copied file
        assert page.locator("#query").text_content() == key["trials"][trial_id]["query"]
        assert page.evaluate(AUDIO_READY) == pytest.approx(0.5, abs=0.01)
        given[trial_id] = (1 + step % 5, 5 - step % 5)
        _rate(page, *given[trial_id])
        page.locator("#next").click()
        if step == 2:  # a reload resumes where the listener was, with the same order
            page.reload()
            assert "ann o'neil" in page.locator("#resume").text_content()
            page.locator("#resume").click()
    assert sorted(seen_order) == sorted(key["trials"])  # every trial exactly once
    assert page.locator("#done").is_visible()

    png = page.screenshot(path=tmp_path / "done.png")
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    with page.expect_download() as download_info:
        page.locator("#download").click()
    download = download_info.value
    assert download.suggested_filename == f"answers-{key['test_id']}-ann_o_neil.csv"
    path = tmp_path / download.suggested_filename
    download.save_as(path)
    assert page.errors == []

    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["trial_id"] for r in rows] == seen_order
    for row in rows:
        assert row["test_id"] == key["test_id"] and row["listener"] == "ann o'neil"
        assert (int(row["fidelity"]), int(row["relevance"])) == given[row["trial_id"]]
        assert row["query"] == key["trials"][row["trial_id"]]["query"]  # commas and quotes survive CSV

    results = {(r.system, r.criterion): r for r in score_answers([path], tmp_path / "test")}
    for system in ("PD", "ZS"):
        mine = [given[t] for t, e in key["trials"].items() if e["system"] == system]
        assert results[(system, "fidelity")].mean == pytest.approx(sum(f for f, _ in mine) / len(mine))
        assert results[(system, "relevance")].n == len(mine)
