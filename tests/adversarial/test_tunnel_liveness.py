"""A frozen or cut-off peer of a tunnel connection is noticed both ways (issue 13, item 13).

Why a frozen worker used to stall the whole tunnel (measured, with 2 workers, 4 connections
and one worker stopped for 8 s): the healthy worker's connections never stopped serving, they
stopped being asked. The edge went on giving the frozen worker every other request (round
robin over four connections, two of them frozen), so every client that waits for its answer
before sending the next request was stuck on its first or second request: 3 requests of two
sequential clients started during the 8 s, against 130 in the 8 s before. Clients that do not
wait (a fixed rate, new connection each) saw exactly the half routed to the frozen worker hang
for the whole freeze. Nothing told the edge that a connection had stopped answering.

Now both ends ping after a second of silence; the edge routes nothing new to a connection
whose PING is 1.5 s overdue and drops it after 5 s of silence; the connector drops a silent
edge connection the same way and dials again.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from adversary import (
    INSIDE_NETNS,
    SequentialLoad,
    SteadyLoad,
    rerun_in_private_netns,
    start_tenant,
    worker_pids,
)
from harness import (
    Origin,
    Processes,
    adit_command,
    create_tunnel,
    login,
    request,
    start_edge,
    write_config,
)

pytestmark = pytest.mark.process

HOST = "app.example.test"
REGISTERED = r"Registered tunnel connection tunnelID="
FREEZE = 8.0
#: The target: a frozen worker receives no new requests this long after it froze.
ROUTED_AWAY_WITHIN = 3.0
#: An answer this slow during the freeze came from the frozen worker after the thaw.
STUCK = 2.0


def test_a_frozen_worker_stops_receiving_requests_within_seconds(
    processes: Processes, origin: Origin
) -> None:
    edge = start_edge(processes, tunnel_listen=["127.0.0.1:0"] * 4)
    tenant = start_tenant(
        processes,
        edge,
        "acme",
        HOST,
        origin.url,
        extra=["--ha-connections", "4", "--workers", "2"],
        wait=4,
    )
    frozen = worker_pids(tenant.connector)[1]
    with SteadyLoad(edge, HOST, rate=20) as steady, SequentialLoad(edge, HOST) as clients:
        time.sleep(1.5)
        froze_at = time.monotonic()
        os.kill(frozen, signal.SIGSTOP)
        try:
            time.sleep(FREEZE)
        finally:
            os.kill(frozen, signal.SIGCONT)
        thawed_at = time.monotonic()
        time.sleep(2.0)

    # Every request that arrives once the edge had its chance to notice is answered, and not
    # by the frozen worker: a request given to it would wait for the thaw (2 s at least).
    window = steady.between(froze_at + ROUTED_AWAY_WITHIN, thawed_at - STUCK)
    stuck = [(round(o.started - froze_at, 2), o.status, round(o.seconds, 2)) for o in window]
    stuck = [s for s in stuck if s[1] != 200 or s[2] >= STUCK]
    assert window and stuck == [], f"{len(stuck)} of {len(window)} requests stuck: {stuck[:8]}"
    # Clients that wait for each answer go on being served by the healthy worker.
    served = clients.answered_between(froze_at + ROUTED_AWAY_WITHIN, thawed_at)
    assert len(served) >= 20, f"sequential clients got {len(served)} answers during the freeze"
    # The frozen worker's connections were dropped by the edge; thawed, it dials again.
    edge.proc.wait_for_log(REGISTERED, count=6, timeout=30)
    log = edge.proc.text()
    assert "does not answer PINGs" in log and "no answer from the peer for 5s" in log


def test_both_ends_turn_tcp_keepalive_on(processes: Processes, origin: Origin) -> None:
    edge = start_edge(processes)
    # TCP keepalive is the HTTP/2 transport's (QUIC has its own PINGs).
    start_tenant(processes, edge, "acme", HOST, origin.url, extra=["--protocol", "http2"])
    if shutil.which("ss") is None:
        pytest.skip("needs ss(8) to see the sockets' timers")
    port = edge.tunnel[0].rsplit(":", 1)[1]
    query = ["ss", "-tno", "state", "established", f"( sport = :{port} or dport = :{port} )"]
    # ss shows the timer running now: a retransmit timer ("on") while a PING is unacknowledged,
    # the keepalive timer otherwise. Both sockets (the edge's and the connector's) show it.
    sockets = ""
    for _ in range(50):
        sockets = subprocess.run(query, capture_output=True, text=True, check=True).stdout
        if sockets.count("timer:(keepalive") == 2:
            break
        time.sleep(0.1)
    assert sockets.count("timer:(keepalive") == 2, sockets


# --- a connection cut off without a FIN -------------------------------------------------------

EDGE_SIDE, CONNECTOR_SIDE = "10.213.0.1", "10.213.0.2"


def test_a_silently_dropped_connection_is_noticed_both_ways() -> None:
    """Runs the test below in a private network namespace (it needs links it can cut)."""
    rerun_in_private_netns(
        f"{Path(__file__)}::test_a_link_cut_without_a_fin_is_redialled",
        240,
        needs=("unshare", "ip", "nsenter"),
    )


def _ip(*args: str, netns: int | None = None) -> None:
    prefix = ["nsenter", f"--net=/proc/{netns}/ns/net"] if netns else []
    subprocess.run([*prefix, "ip", *args], check=True, capture_output=True, timeout=10)


@pytest.mark.skipif(not INSIDE_NETNS, reason="runs inside the namespace made by the test above")
def test_a_link_cut_without_a_fin_is_redialled(processes: Processes, tmp_path: Path) -> None:
    # The connector lives in a namespace of its own, joined to the edge's by a veth pair: a
    # link taken down drops every packet both ways, and neither end is told.
    holder = processes.start("netns", ["unshare", "-n", "sleep", "600"])
    time.sleep(0.2)
    other = holder.popen.pid
    _ip("link", "add", "va", "type", "veth", "peer", "name", "vb")
    _ip("link", "set", "vb", "netns", str(other))
    _ip("addr", "add", f"{EDGE_SIDE}/24", "dev", "va")
    _ip("link", "set", "va", "up")
    _ip("link", "set", "lo", "up", netns=other)
    _ip("addr", "add", f"{CONNECTOR_SIDE}/24", "dev", "vb", netns=other)
    _ip("link", "set", "vb", "up", netns=other)

    edge = start_edge(processes, tunnel_listen=[f"{EDGE_SIDE}:0"])
    account = login(edge, tmp_path / "home")
    tunnel = create_tunnel(account, "cut", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": "hello_world"}])
    connector = processes.start(
        "connector",
        [
            "nsenter",
            f"--net=/proc/{other}/ns/net",
            *adit_command(),
            "tunnel",
            "--config",
            str(config),
            "run",
            "--protocol",
            "http2",
            "--metrics",
            "127.0.0.1:0",
            "--edge",
            edge.tunnel[0],
            "--ha-connections",
            "1",
            "--credentials-file",
            str(tunnel.credentials),
            tunnel.id,  # by id: the API is out of the connector's reach
        ],
        env={"HOME": str(account.home)},
    )
    edge.proc.wait_for_log(REGISTERED, count=1)
    assert request(edge, HOST).status == 200

    cut_at = time.monotonic()
    _ip("link", "set", "va", "down")
    edge.proc.wait_for_log(r"does not answer PINGs", timeout=10)
    edge.proc.wait_for_log(r"no answer from the peer for 5s", timeout=15)
    connector.wait_for_log(r"no answer from the peer for 5s", timeout=15)
    noticed = time.monotonic() - cut_at
    assert noticed < 12.0, f"noticed {noticed:.1f}s after the cut"
    assert request(edge, HOST).status != 200  # no connection: the edge says so at once

    _ip("link", "set", "va", "up")
    edge.proc.wait_for_log(REGISTERED, count=2, timeout=60)
    assert request(edge, HOST).status == 200
