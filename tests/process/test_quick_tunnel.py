"""`adit tunnel --url` with no edge configured: an embedded edge and a working URL."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from harness import Origin, Processes, adit_command

pytestmark = pytest.mark.process


def _fetch(url: str) -> tuple[int, bytes]:
    # *.localhost is loopback by definition (RFC 6761); resolve it ourselves like curl does.
    match = re.match(r"http://([a-z0-9]+\.localhost):(\d+)(/.*)?$", url)
    assert match, url
    host, port, path = match.group(1), match.group(2), match.group(3) or "/"
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read()


URL = r"http://[a-z0-9]+\.localhost:\d+"


def _quick_url(proc_text: str) -> str:
    match = re.search(URL, proc_text)
    assert match, proc_text
    return match.group(0)


def test_quick_tunnel_reaches_the_origin_and_cleans_up(
    processes: Processes, origin: Origin, tmp_path: Path
) -> None:
    proc = processes.start(
        "quick",
        [*adit_command(), "tunnel", "--url", origin.url, "--metrics", "127.0.0.1:0"],
        env={"HOME": str(tmp_path)},
    )
    text = proc.wait_for_log(URL)
    url = _quick_url(text)
    # Printed once it works: after the registration, and the first request succeeds.
    assert text.index("Registered tunnel connection") < text.index(url), text
    assert "Visit it at" in text
    status, body = _fetch(url + "/quick?x=1")
    assert (status, body) == (200, b"hello /quick?x=1")
    # The metrics server names the quick tunnel as cloudflared's does (its line may come after
    # the URL's: the supervisor starts it while the first worker registers).
    text = proc.wait_for_log(r"Starting metrics server on \S+/metrics")
    metrics = re.search(r"Starting metrics server on (\S+)/metrics", text).group(1)  # type: ignore[union-attr]
    with urllib.request.urlopen(f"http://{metrics}/quicktunnel", timeout=10) as response:
        assert json.loads(response.read()) == {"hostname": url.removeprefix("http://")}
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as response:
        scrape = response.read().decode()
    assert f'cloudflared_tunnel_user_hostnames_counts{{userHostname="{url}"}} 1' in scrape
    state = Path(re.search(r"token-file:(\S+)/token", text).group(1))  # type: ignore[union-attr]
    assert state.is_dir()
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    # The embedded edge notices its parent is gone, stops and removes its state.
    deadline = time.monotonic() + 10
    while state.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not state.exists()


def test_quick_tunnel_hello_world(processes: Processes, tmp_path: Path) -> None:
    proc = processes.start(
        "quick",
        [*adit_command(), "tunnel", "--hello-world", "--metrics", "127.0.0.1:0"],
        env={"HOME": str(tmp_path)},
    )
    url = _quick_url(proc.wait_for_log(URL))
    status, body = _fetch(url + "/")
    assert status == 200
    assert b"<html" in body.lower()
    assert _fetch(url + "/_health")[1].strip() == b"ok"


def test_bare_tunnel_command_explains_what_is_missing(tmp_path: Path) -> None:
    import subprocess

    result = subprocess.run(
        [*adit_command(), "tunnel"],
        capture_output=True,
        text=True,
        check=False,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        timeout=30,
    )
    assert result.returncode == 1
    assert "You did not specify any valid additional argument" in result.stderr
