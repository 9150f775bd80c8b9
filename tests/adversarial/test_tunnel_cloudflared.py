"""The tunnel listener's limits and liveness rule never touch the unmodified cloudflared.

cloudflared (Go's HTTP/2 server) never sends a PING, answers the edge's at once, and credits
every 4 KiB a handler reads with two WINDOW_UPDATEs: an idle connection must outlive the idle
timeout, and uploads and downloads at full speed must not look like a flood.

Needs ADIT_CLOUDFLARED (see tests/process/test_cloudflared_interop.py); cloudflared looks up
DNS at start, so the test re-runs itself in a loopback-only network namespace.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

from adversary import (
    CLOUDFLARED,
    INSIDE_NETNS,
    SteadyLoad,
    probe,
    rerun_in_private_netns,
    start_cloudflared,
)
from harness import Account, Edge, Origin, Processes, create_tunnel, request, write_config

pytestmark = pytest.mark.process

HOST = "cfd.example.test"
MIB = 1024 * 1024


@pytest.mark.skipif(not CLOUDFLARED, reason="set ADIT_CLOUDFLARED to a cloudflared binary")
def test_cloudflared_under_load_is_neither_a_flood_nor_silent() -> None:
    rerun_in_private_netns(f"{Path(__file__)}::test_cloudflared_idle_then_at_full_speed", 400)


@pytest.mark.skipif(not INSIDE_NETNS, reason="runs inside the namespace made by the test above")
def test_cloudflared_idle_then_at_full_speed(
    processes: Processes, edge: Edge, account: Account, origin: Origin, tmp_path: Path
) -> None:
    tunnel = create_tunnel(account, "cfd", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    cloudflared = start_cloudflared(processes, tunnel, config, edge)

    # Idle for longer than the edge's idle timeout (5 s): kept by cloudflared's PING answers.
    time.sleep(8.0)
    assert request(edge, HOST).status == 200

    # Uploads and downloads at full speed, several at once, with a steady trickle beside them.
    failures: list[str] = []

    def upload(n: int) -> None:
        body = hashlib.sha256(str(n).encode()).digest() * (16 * MIB // 32)
        reply = request(edge, HOST, "POST", "/sha", body=body, timeout=120)
        if reply.body != hashlib.sha256(body).hexdigest().encode():
            failures.append(f"upload {n}: {reply.status}")

    def download(n: int) -> None:
        reply = request(edge, HOST, path=f"/big/{16 * MIB}", timeout=120)
        if len(reply.body) != 16 * MIB:
            failures.append(f"download {n}: {reply.status} {len(reply.body)}")

    threads = [threading.Thread(target=upload, args=(n,)) for n in range(4)]
    threads += [threading.Thread(target=download, args=(n,)) for n in range(4)]
    with SteadyLoad(edge, HOST, rate=10) as load:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
    assert failures == []
    assert load.failures() == []

    log = edge.proc.text()
    for sign in ("flood", "does not answer PINGs", "no answer from the peer", "failed:"):
        assert sign not in log, log
    assert "Lost connection" not in cloudflared.text()
    assert probe(edge.proc).close_wait() == 0
