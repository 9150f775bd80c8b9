"""Issue 13 item 7: a visitor who leaves cancels the work. The edge resets the tunnel stream,
the connector closes the origin request and its connection: the origin stops sending, and no
socket is left open at the edge or in the workers."""

from __future__ import annotations

import time

import pytest

from adversary import (
    ProcessProbe,
    RawOrigin,
    Tenant,
    connect,
    exchange,
    hang,
    probe,
    status_of,
    streaming,
    wait_for_worker_channels,
    worker_pids,
)
from harness import Edge

pytestmark = pytest.mark.process

MIB = 1 << 20


def test_a_download_given_up_stops_the_origin(
    edge: Edge, tenant: Tenant, recorder: RawOrigin
) -> None:
    recorder.responder = streaming(400 * MIB)
    edge_probe = probe(edge.proc)
    with connect(edge.http) as sock:
        sock.sendall(f"GET /big HTTP/1.1\r\nHost: {tenant.hostname}\r\n\r\n".encode())
        got = 0
        while got < MIB:
            data = sock.recv(65536)
            assert data, "the download ended early"
            got += len(data)
    # The visitor is gone: the origin's connection is closed by the connector, long before
    # 400 MiB went out (what is in flight is bounded by the socket buffers and windows).
    recorder.wait_for(lambda o: o.open_connections == 0, what="the origin connection closed")
    sent = recorder.sent
    assert sent < 100 * MIB, f"the origin sent {sent / MIB:.0f} MiB"
    time.sleep(0.5)
    assert recorder.sent == sent
    edge_probe.wait_until(lambda p: p.close_wait() == 0, what="no CLOSE-WAIT at the edge")


def test_visitors_who_give_up_on_a_hung_origin_free_every_socket(
    edge: Edge, tenant: Tenant, recorder: RawOrigin
) -> None:
    # One request first: what a worker opens for its first request stays open for good.
    ok = exchange(
        edge.http,
        f"GET / HTTP/1.1\r\nHost: {tenant.hostname}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert status_of(ok) == 200
    # And the worker's channel to its supervisor, which it opens once registered, is open.
    wait_for_worker_channels(tenant.connector)
    recorder.responder = hang
    edge_probe = probe(edge.proc)
    workers = [ProcessProbe(pid) for pid in worker_pids(tenant.connector)]
    fds_before = edge_probe.fds()
    worker_fds = [w.fds() for w in workers]
    worker_kinds = [w.fd_kinds() for w in workers]
    visitors = [connect(edge.http) for _ in range(200)]
    for sock in visitors:
        sock.sendall(f"GET /hung HTTP/1.1\r\nHost: {tenant.hostname}\r\n\r\n".encode())
    # Bounds for a busy machine (the suite runs two tests at a time beside this one).
    recorder.wait_for(lambda o: len(o.connections) == 200, 30, "200 origin requests")
    for sock in visitors:
        sock.close()
    edge_probe.wait_until(
        lambda p: p.close_wait() == 0 and p.fds() <= fds_before + 2,
        timeout=20,
        what="the edge let go of every visitor",
    )
    recorder.wait_for(lambda o: o.open_connections == 0, 20, "every origin connection closed")
    for worker, before, kinds in zip(workers, worker_fds, worker_kinds, strict=True):
        worker.wait_until(
            lambda p, before=before: p.fds() <= before + 2 and p.close_wait() == 0,  # type: ignore[misc]
            timeout=20,
            what=f"the worker let go of every origin connection (before: {before} {kinds})",
        )
