"""Always-HTTPS redirects name the HTTPS port visitors reach: ``--public-https-port``, else
the HTTPS listener's own port, left out when it is 443."""

from __future__ import annotations

import subprocess
import time

import pytest

from harness import Account, Edge, Processes, create_tunnel, run_cli, start_edge

pytestmark = pytest.mark.process

HOST = "app.example.test"


def _redirect_location(edge: Edge) -> str:
    """``curl -i`` to the plain listener as a visitor of HOST: the 301's Location."""
    for _ in range(150):  # the edge's route watcher picks the zone option up within seconds
        done = subprocess.run(
            ["curl", "-sS", "-i", "--max-time", "10", "-H", f"Host: {HOST}", edge.url("/x?y=1")],
            capture_output=True,
            timeout=30,
            check=False,
        )
        head = done.stdout.decode("latin-1").split("\r\n\r\n", 1)[0].split("\r\n")
        if head[0].split(" ")[1:2] == ["301"]:
            return next(
                line.split(":", 1)[1].strip()
                for line in head
                if line.lower().startswith("location:")
            )
        time.sleep(0.1)
    raise AssertionError(f"no redirect: {done.stdout!r} {done.stderr!r}")


@pytest.fixture(params=[None, "443", "8443"])
def edge(processes: Processes, request: pytest.FixtureRequest) -> Edge:
    flag = request.param
    extra = ["--public-https-port", flag] if flag is not None else []
    return start_edge(processes, https=True, extra=extra)


def test_always_https_redirect_names_the_public_https_port(
    account: Account, edge: Edge, request: pytest.FixtureRequest
) -> None:
    flag = request.node.callspec.params["edge"]
    create_tunnel(account, "web", HOST)
    state = ["--state-dir", str(edge.state_dir)]
    run_cli(["edge", "zone", "options", HOST, "--always-https", *state], home=account.home)
    https_port = edge.https.rsplit(":", 1)[1]
    expected = {
        None: f"https://{HOST}:{https_port}/x?y=1",
        "443": f"https://{HOST}/x?y=1",
        "8443": f"https://{HOST}:8443/x?y=1",
    }[flag]
    assert _redirect_location(edge) == expected
