"""The listening-test page in a real browser: headless Chromium driven over the DevTools protocol.

Needs Debian's ``chromium`` (``apt-get install chromium``); nothing else: Chromium's
``--remote-debugging-pipe`` speaks the DevTools protocol as NUL-separated JSON on file
descriptors 3 (commands in) and 4 (events and replies out), so no driver or websocket package is
involved. Skipped, saying so, when no Chromium binary is found.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from test_listening import make_system  # tests/ is on sys.path under pytest

from clipsonic.listening import make_listening_test, read_key, score_answers

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium binary: install Debian's `chromium` package to run the page test"
)


class DevTools:
    """A minimal DevTools-protocol client over Chromium's debugging pipe."""

    def __init__(self, binary: str, profile: Path):
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()
        devnull = os.open(os.devnull, os.O_WRONLY)
        args = [binary, "--headless=new", "--no-sandbox", "--remote-debugging-pipe", "--disable-gpu",
                "--no-first-run", "--no-default-browser-check", "--autoplay-policy=no-user-gesture-required",
                "--mute-audio", f"--user-data-dir={profile}", "about:blank"]
        self.pid = os.posix_spawn(binary, args, dict(os.environ), file_actions=[
            (os.POSIX_SPAWN_DUP2, cmd_r, 3), (os.POSIX_SPAWN_DUP2, out_w, 4),
            (os.POSIX_SPAWN_DUP2, devnull, 1), (os.POSIX_SPAWN_DUP2, devnull, 2)])
        for fd in (cmd_r, out_w, devnull):
            os.close(fd)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        self.session: str | None = None

    def send(self, method: str, params: dict | None = None, session: bool = True, timeout: float = 30) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._read(deadline))

    def _read(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out_r], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._out_r, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the debugging pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def open(self, url: str, downloads: Path) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)["sessionId"]
        self.send("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads),
                                                  "eventsEnabled": True}, session=False)
        self.send("Page.enable")
        self.goto(url)

    def goto(self, url: str) -> None:
        self.events.clear()
        self.send("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired")

    def js(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error in {expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False, timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            os.kill(self.pid, signal.SIGKILL)
        for _ in range(50):
            if os.waitpid(self.pid, os.WNOHANG)[0]:
                break
            time.sleep(0.1)
        else:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self._cmd_w)
        os.close(self._out_r)


@pytest.fixture()
def browser(tmp_path):
    tools = DevTools(CHROMIUM, tmp_path / "profile")
    yield tools
    tools.close()


AUDIO_READY = """new Promise((resolve, reject) => {
  const a = document.getElementById('player');
  if (a.readyState >= 1) resolve(a.duration);
  a.addEventListener('loadedmetadata', () => resolve(a.duration), {once: true});
  a.addEventListener('error', () => reject(new Error('audio failed: ' + a.src)), {once: true});
})"""


def _rate(browser: DevTools, fidelity: int, relevance: int) -> None:
    browser.js(f"document.querySelector('input[name=fidelity][value=\"{fidelity}\"]').click()")
    assert browser.js("document.getElementById('next').disabled") is True  # both ratings needed
    browser.js(f"document.querySelector('input[name=relevance][value=\"{relevance}\"]').click()")
    assert browser.js("document.getElementById('next').disabled") is False


def test_page_in_headless_chromium(tmp_path, browser):
    systems = {"PD": make_system(tmp_path / "pd", 300), "ZS": make_system(tmp_path / "zs", 500)}
    index = make_listening_test(systems, tmp_path / "test", seed=1)
    key = read_key(tmp_path / "test")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.open(index.as_uri(), downloads)

    assert browser.js("document.getElementById('start').hidden") is False
    browser.js("document.getElementById('listener').value = 'ann o\\'neil'; document.getElementById('start-button').click()")
    total = len(key["trials"])
    given: dict[str, tuple[int, int]] = {}
    seen_order = []
    for step in range(total):
        assert browser.js("document.getElementById('progress-text').textContent") == f"Trial {step + 1} of {total}"
        trial_id = browser.js("document.getElementById('player').dataset.trial")
        seen_order.append(trial_id)
        # the query shown is this trial's, the audio plays from the copied file
        assert browser.js("document.getElementById('query').textContent") == key["trials"][trial_id]["query"]
        assert browser.js(AUDIO_READY) == pytest.approx(0.5, abs=0.01)
        rating = (1 + step % 5, 5 - step % 5)
        _rate(browser, *rating)
        given[trial_id] = rating
        if step == 2:  # a reload resumes where the listener was, with the same order
            browser.js("document.getElementById('next').click()")
            browser.goto(index.as_uri())
            assert "ann o'neil" in browser.js("document.getElementById('resume').textContent")
            browser.js("document.getElementById('resume').click()")
            continue
        browser.js("document.getElementById('next').click()")
    assert sorted(seen_order) == sorted(key["trials"])  # every trial exactly once
    assert browser.js("document.getElementById('done').hidden") is False

    png = browser.send("Page.captureScreenshot", {"format": "png"})["data"]
    assert len(png) > 1000
    name = browser.js("document.getElementById('download').download")
    assert name == f"answers-{key['test_id']}-ann_o_neil.csv"
    browser.js("document.getElementById('download').click()")
    path = downloads / name
    deadline = time.monotonic() + 20
    while not path.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert path.is_file(), f"no download in {list(downloads.iterdir())}"

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
