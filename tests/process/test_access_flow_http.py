"""Issue 18: the login flow's paths are the edge's own, for HTTP/1.1 and HTTP/2 visitors
alike: answered by the edge (never forwarded, even where no tunnel serves the hostname), with
form bodies read only up to a bound, and the pre-login cookie host-only, HttpOnly, Secure and
SameSite=Lax. curl is the visitor here (no browser, no provider: the paths that need none)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from adversary import access_api as api
from harness import Edge, Processes, add_zone, login, start_edge

pytestmark = [pytest.mark.process, pytest.mark.timeout(120)]

HOST = "app.example.test"


@pytest.fixture
def edge(processes: Processes) -> Edge:
    return start_edge(processes, https=True)


def curl(edge: Edge, *args: str, path: str, http2: bool) -> tuple[int, str, bytes]:
    """(status, the HTTP version, headers and body) of one curl to the HTTPS listener."""
    port = edge.https.rsplit(":", 1)[1]
    done = subprocess.run(
        [
            "curl",
            "-sS",
            "-i",
            "--max-time",
            "60",
            "--cacert",
            str(edge.ca),
            "--resolve",
            f"{HOST}:{port}:127.0.0.1",
            "--http2" if http2 else "--http1.1",
            "-w",
            "\n%{http_code} %{http_version}",
            *args,
            f"https://{HOST}:{port}{path}",
        ],
        capture_output=True,
        timeout=90,
        check=True,
    )
    body, _, last = done.stdout.rpartition(b"\n")
    status, version = last.decode().split()
    return int(status), version, body


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "http2"])
def test_flow_paths_are_answered_by_the_edge_with_bounded_bodies(
    edge: Edge, tmp_path: Path, http2: bool
) -> None:
    account = login(edge, tmp_path / "home")
    add_zone(account, HOST)
    api(account, "POST", "apps", {"name": "Wiki", "domain": HOST})
    # No route, no tunnel: anything forwarded would be a 404/530 from the edge's routing.
    status, version, page = curl(
        edge, path=f"/cdn-cgi/access/login/{HOST}?redirect_url=%2Fdocs", http2=http2
    )
    assert version == ("2" if http2 else "1.1")
    assert status == 200 and b"Sign in to Wiki" in page
    (cookie,) = [
        line for line in page.decode().splitlines() if line.lower().startswith("set-cookie:")
    ]
    attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert attributes == {"path", "httponly", "samesite", "secure"}  # no Domain: host-only
    assert "SameSite=Lax" in cookie
    assert b"x-frame-options: deny" in page.lower()

    # A query of garbage (more fields than any of ours) is no query, not a failure.
    fields = "&".join(f"f{i}=1" for i in range(40))
    status, _, page = curl(edge, path=f"/cdn-cgi/access/login/{HOST}?{fields}", http2=http2)
    assert status == 200 and b"Sign in to Wiki" in page

    status, _, page = curl(edge, path="/cdn-cgi/access/no-such-page", http2=http2)
    assert status == 404 and b"no such Access page" in page

    # A form larger than a login form is refused without reading it all.
    big = "a" * (64 * 1024)
    status, _, page = curl(
        edge, "--data-binary", f"csrf={big}", path="/cdn-cgi/access/login/start", http2=http2
    )
    assert status == 413
    # A small form without this browser's CSRF token: refused (login CSRF).
    status, _, page = curl(
        edge,
        "--data",
        "provider=x&return_to=%2F&csrf=0",
        path="/cdn-cgi/access/login/start",
        http2=http2,
    )
    assert status == 403 and b"not sent from this browser" in page
    # get-identity without a session: 401 JSON.
    status, _, page = curl(edge, path="/cdn-cgi/access/get-identity", http2=http2)
    assert status == 401 and b'"err"' in page
