"""Headless Chromium (Debian's ``/usr/bin/chromium``) driven by Playwright, for the Access
tests: one browser per test module, a fresh context (cookies, cache) per test.

Never ``playwright install``: that downloads a browser from a host this machine cannot reach;
Debian's chromium is given as the executable. ``*.example.test`` resolves to 127.0.0.1 inside
the browser (``--host-resolver-rules``), so a test's hostnames work without DNS. Screenshots go
to the test's tmp dir (``screenshots/``), kept as artifacts.

A test folder gets the fixtures by importing them in its conftest.py (tests/access/conftest.py
does). Playwright's sync API keeps its event loop running in the main thread while the browser
is open: a test that uses the browser and also asyncio runs its coroutines in another thread.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

CHROMIUM = os.environ.get("ADIT_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP *.example.test 127.0.0.1",
]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """The module's browser; skips the test where Debian's chromium is not installed.

    Per module, not per session: Playwright's sync API keeps its event loop running in the
    main thread while it is open, and every asyncio test after it in the same worker would
    fail ("asyncio.run() cannot be called from a running event loop")."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (tests/debian-packages.txt: chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=ARGS, timeout=60_000
        )
        try:
            yield browser
        finally:
            browser.close()


class Screens:
    """Saves full-page screenshots as ``<tmp>/screenshots/NN-name.png``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.saved: list[Path] = []

    def shot(self, page: Page, name: str) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "-", name)
        path = self.folder / f"{len(self.saved):02d}-{safe}.png"
        page.screenshot(path=str(path), full_page=True)
        self.saved.append(path)
        return path


@pytest.fixture
def screens(tmp_path: Path) -> Screens:
    return Screens(tmp_path / "screenshots")


def new_context(browser: Browser, *, ignore_https_errors: bool = False) -> BrowserContext:
    """A fresh context with bounded waits; ``ignore_https_errors`` only where a test's CA
    cannot be given to the browser."""
    context = browser.new_context(ignore_https_errors=ignore_https_errors)
    context.set_default_timeout(20_000)
    context.set_default_navigation_timeout(20_000)
    return context


@pytest.fixture
def browser_context(chromium: Browser) -> Iterator[BrowserContext]:
    context = new_context(chromium)
    try:
        yield context
    finally:
        context.close()
