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
import signal
import time

import pytest

from adversary import SequentialLoad, SteadyLoad, start_tenant, worker_pids
from harness import Origin, Processes, start_edge

pytestmark = pytest.mark.process

HOST = "app.example.test"
REGISTERED = r"Registered tunnel connection tunnelID="
FREEZE = 8.0
#: The target: a frozen worker receives no new requests this long after it froze.
ROUTED_AWAY_WITHIN = 3.0


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

    # Every request that arrives once the edge had its chance to notice is answered at once.
    window = steady.between(froze_at + ROUTED_AWAY_WITHIN, thawed_at)
    stuck = [(round(o.started - froze_at, 2), o.status, round(o.seconds, 2)) for o in window]
    stuck = [s for s in stuck if s[1] != 200 or s[2] > 1.0]
    assert window and stuck == [], f"{len(stuck)} of {len(window)} requests stuck: {stuck[:8]}"
    # Clients that wait for each answer go on being served by the healthy worker.
    served = clients.answered_between(froze_at + ROUTED_AWAY_WITHIN, thawed_at)
    assert len(served) >= 20, f"sequential clients got {len(served)} answers during the freeze"
    # The frozen worker's connections were dropped by the edge; thawed, it dials again.
    edge.proc.wait_for_log(REGISTERED, count=6, timeout=30)
    log = edge.proc.text()
    assert "does not answer PINGs" in log and "no answer from the peer for 5s" in log
