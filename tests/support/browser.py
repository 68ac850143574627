"""The one browser harness for page tests: Playwright's sync API driving the system's headless Chromium.

Fixtures: ``browser`` (one Chromium per test session, i.e. per xdist worker) and ``page`` (a fresh context per
test, downloads allowed, 30 s default timeout). ``page.errors`` collects the page's uncaught exceptions and
``console.error`` messages, so a test can end with ``assert page.errors == []``.

Needs a Chromium binary on PATH (``apt-get install chromium``) and the ``playwright`` package
(``pip install -e '.[dev]'``); Playwright's own browser downloads are never used. Without either the tests are
skipped, saying what to install, unless ``CLIPSONIC_REQUIRE_BROWSER=1`` (as in CI), where they fail instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING, NoReturn

import pytest

if TYPE_CHECKING:  # playwright is optional: without it the fixtures skip
    from playwright.sync_api import Browser, Page

BINARIES = ("chromium", "chromium-browser", "google-chrome")
# The test machines have no network: without the background-networking flags Chromium keeps retrying refused
# connections (updates, sync, QUIC probes). Autoplay and mute let <audio> load and play without a user gesture.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--no-default-browser-check",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--autoplay-policy=no-user-gesture-required", "--mute-audio"]
TIMEOUT_MS = 30_000


def _unavailable(reason: str) -> NoReturn:
    """Skip, or fail when the environment says a browser must be there (CI)."""
    if os.environ.get("CLIPSONIC_REQUIRE_BROWSER") == "1":
        pytest.fail(f"CLIPSONIC_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """One headless system Chromium for the whole session (per xdist worker), closed at the end."""
    binary = next((path for path in map(shutil.which, BINARIES) if path), None)
    if binary is None:
        _unavailable(f"no Chromium binary on PATH ({', '.join(BINARIES)}): apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed: pip install -e '.[dev]'")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=binary, headless=True, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser: Browser) -> Iterator[Page]:
    """A page in a fresh context (own storage, downloads allowed); ``page.errors`` lists what the page raised."""
    context = browser.new_context(accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(f"uncaught: {error}"))
    page.on("console", lambda message: message.type == "error" and page.errors.append(f"console: {message.text}"))
    yield page
    context.close()
