"""``adit access login`` driven from a test: the URL it prints, and the browser's part (sign in
at the provider, then allow the hand-over to the command line)."""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from urllib.parse import urlsplit

from playwright.sync_api import Page

from access_support.oidc import USERS, sign_in_at_provider


def login_url(proc: subprocess.Popen[str]) -> str:
    """The URL ``adit access login`` prints (bounded wait; a thread reads, since a pipe read
    cannot be bounded by itself)."""
    assert proc.stderr is not None
    stderr = proc.stderr
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stderr:
            lines.put(line)
            if line.startswith("https://"):
                return

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 30
    seen = ""
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        seen += line
        if line.startswith("https://"):
            return line.strip()
    raise AssertionError(f"adit access login printed no URL:\n{seen}")


def allow_cli_login(page: Page, cli_url: str, host: str) -> None:
    """In a browser with no session yet: the CLI's URL leads to the login page of ``host``,
    the first test user signs in, and the hand-over is asked for (never automatic) and given."""
    page.goto(cli_url)
    assert urlsplit(page.url).path == f"/cdn-cgi/access/login/{host}"
    page.click("text=Sign in with Test IdP")
    sign_in_at_provider(page, USERS[0].email, USERS[0].password, None)
    page.wait_for_selector("text=Allow the command line")
    page.click("text=Allow the command line")
    page.wait_for_selector("text=The command line now has your token")
