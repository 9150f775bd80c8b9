"""The connector's operations over QUIC, as its HTTP/2 tests prove them: a real `adit edge`,
a real `adit tunnel run --protocol quic` and a threaded origin on 127.0.0.1.

Under a bounded request load: SIGHUP reloads, a worker killed with SIGKILL, credential
rotation and a stuck worker, with the same zero failed requests, the same sd_notify messages
(a real ``NOTIFY_SOCKET``) and the same drain on SIGTERM as over HTTP/2
(test_supervisor_e2e.py, test_rotation_secret.py); an edge that restarts and a location that
comes back (test_edge_restart_redial.py, test_ha_locations.py); cloudflared's quic_client_*
metrics and the PROTOCOL column of ``adit tunnel info``. Last, ``auto`` with UDP to the edge
dropped (an nftables rule in a private network namespace) falls back to HTTP/2 as cloudflared
does, saying why.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from adit.workers.protocol_choice import UDP_BLOCKED_WARNING
from adversary import INSIDE_NETNS, NotifySocket, rerun_in_private_netns
from harness import (
    Edge,
    Origin,
    Proc,
    Processes,
    Reply,
    Tunnel,
    create_tunnel,
    edge_args,
    login,
    request,
    seam_env,
    start_connector,
    start_edge,
    start_location,
    write_config,
)

pytestmark = pytest.mark.process

HOST = "quic-ops.example.test"
QUIC = ["--protocol", "quic"]
REGISTERED = r"Registered tunnel connection tunnelID="
STARTED = re.compile(r"Started worker pid=(\d+).*slot=(\d+)")


class RequestLoop:
    """Sequential requests from a few threads until stopped (at most ``limit`` each); every
    reply must be the origin's echo of its own path."""

    def __init__(
        self,
        edge: Edge,
        host: str = HOST,
        threads: int = 2,
        limit: int = 3000,
        interval: float = 0.01,
    ) -> None:
        self.edge = edge
        self.host = host
        self.limit = limit
        self.interval = interval
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        # Requests in flight, and whether between_requests holds new ones back.
        self._idle = threading.Condition()
        self._in_flight = 0
        self._held = False
        self._threads = [threading.Thread(target=self._run, args=(t,)) for t in range(threads)]

    def _run(self, number: int) -> None:
        for n in range(self.limit):
            if self.stop.is_set():
                return
            path = f"/loop/{number}/{n}"
            with self._idle:
                self._idle.wait_for(lambda: not self._held, timeout=30)
                self._in_flight += 1
            try:
                reply = request(self.edge, self.host, path=path, timeout=15)
            except (OSError, http.client.HTTPException) as exc:
                outcome = f"{path}: {exc!r}"
            else:
                good = reply.status == 200 and reply.body == f"hello {path}".encode()
                outcome = "" if good else f"{path}: {reply.status} {reply.body[:200]!r}"
            finally:
                with self._idle:
                    self._in_flight -= 1
                    self._idle.notify_all()
            with self._lock:
                if outcome:
                    self.failures.append(outcome)
                else:
                    self.ok += 1
            time.sleep(self.interval)

    @property
    def done(self) -> int:
        with self._lock:
            return self.ok + len(self.failures)

    @contextlib.contextmanager
    def between_requests(self) -> Iterator[None]:
        """While no request is in flight (none starts meanwhile)."""
        with self._idle:
            self._held = True
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=30)
        try:
            yield
        finally:
            with self._idle:
                self._held = False
                self._idle.notify_all()

    def wait_more(self, count: int, timeout: float = 20.0) -> None:
        """Until ``count`` more requests have completed (bounded)."""
        target = self.done + count
        wait_until(lambda: self.done >= target, timeout)

    def __enter__(self) -> RequestLoop:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, KeyError):
            if predicate():
                return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def metrics_port(proc: Proc) -> int:
    text = proc.wait_for_log(r"Starting metrics server on 127\.0\.0\.1:\d+/metrics")
    match = re.search(r"Starting metrics server on 127\.0\.0\.1:(\d+)/metrics", text)
    assert match
    return int(match.group(1))


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def ready_connections(port: int) -> int:
    status, body = http_get(port, "/ready")
    count: int = json.loads(body)["readyConnections"]
    return count if status in (200, 503) else -1


def scrape(port: int) -> dict[str, float]:
    status, body = http_get(port, "/metrics")
    assert status == 200
    samples: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def worker_pids(proc: Proc) -> dict[int, int]:
    """The latest worker pid of each slot, from the connector's log."""
    return {int(m.group(2)): int(m.group(1)) for m in STARTED.finditer(proc.text())}


def quic_registrations(proc: Proc) -> int:
    """Registrations over QUIC, by the workers' lines (the only ones: the supervisor does not
    repeat them)."""
    worker_line = r"Registered tunnel connection connIndex=.*protocol=quic slot=\d+$"
    return len(re.findall(worker_line, proc.text(), re.MULTILINE))


def start_quic_connector(
    processes: Processes, edge: Edge, tunnel: Tunnel, config: Path, connections: int, **kw: Any
) -> Proc:
    """`adit tunnel run --protocol quic`, once the edge has all its ``connections``."""
    proc = start_connector(processes, tunnel, config, wait=0, **kw)
    edge.proc.wait_for_log(REGISTERED, count=connections, timeout=30)
    wait_until(lambda: quic_registrations(proc) == connections)
    return proc


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


def _slow_request(edge: Edge, into: list[Reply]) -> threading.Thread:
    thread = threading.Thread(target=lambda: into.append(request(edge, HOST, path="/slow")))
    thread.start()
    return thread


# -- metrics and tunnel info -------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_quic_client_metrics_and_the_protocol_tunnel_info_shows(
    processes: Processes, origin: Origin, tmp_path: Path
) -> None:
    edge = start_edge(processes, tunnel_listen=["127.0.0.1:0", "127.0.0.1:0"])
    account = login(edge, tmp_path / "home")
    quic_tunnel = create_tunnel(account, "over-quic", HOST)
    http2_tunnel = create_tunnel(account, "over-http2", "h2." + HOST)
    config = write_config(tmp_path / "quic.yml", HOST, [{"service": origin.url}])
    config2 = write_config(tmp_path / "http2.yml", "h2." + HOST, [{"service": origin.url}])
    over_quic = start_quic_connector(processes, edge, quic_tunnel, config, 2, extra=QUIC)
    over_http2 = start_connector(
        processes, http2_tunnel, config2, name="http2", extra=["--protocol", "http2"], wait=0
    )
    edge.proc.wait_for_log(REGISTERED, count=4, timeout=30)
    for n in range(20):
        assert request(edge, HOST, path=f"/n/{n}").body == f"hello /n/{n}".encode()
        assert request(edge, "h2." + HOST, path=f"/n/{n}").status == 200

    port = metrics_port(over_quic)
    wait_until(lambda: scrape(port).get("cloudflared_tunnel_total_requests") == 20)
    samples = scrape(port)
    assert samples["quic_client_total_connections"] == 2
    assert samples["quic_client_closed_connections"] == 0
    assert samples["quic_client_packet_too_big_dropped"] == 0
    for index in ("0", "1"):
        assert samples[f'quic_client_sent_bytes{{conn_index="{index}"}}'] > 0
        assert samples[f'quic_client_receive_bytes{{conn_index="{index}"}}'] > 0
        assert samples[f'quic_client_mtu{{conn_index="{index}"}}'] == 1232
        assert samples[f'quic_client_max_udp_payload{{conn_index="{index}"}}'] > 1200
        assert samples[f'quic_client_congestion_window{{conn_index="{index}"}}'] > 0
        assert samples[f'quic_client_congestion_state{{conn_index="{index}"}}'] in (0, 1, 2, 3)
        smoothed = samples[f'quic_client_smoothed_rtt{{conn_index="{index}"}}']
        assert samples[f'quic_client_min_rtt{{conn_index="{index}"}}'] <= smoothed
        assert f'quic_client_latest_rtt{{conn_index="{index}"}}' in samples
        # The control stream's RPC at least, and what the handshake took.
        for direction in ("sent", "received"):
            for frame in ("Stream", "Ack", "Crypto"):
                key = f'quic_client_{direction}_frames{{conn_index="{index}",frame_type="{frame}"}}'
                assert samples[key] > 0, key
    # Each request went over one of the two connections: a stream the edge opened each.
    streams = sum(
        samples[f'quic_client_received_frames{{conn_index="{i}",frame_type="Stream"}}']
        for i in ("0", "1")
    )
    assert streams >= 20
    # An HTTP/2 connector never dialled QUIC: cloudflared registers no quic_client_* then.
    http2_metrics = http_get(metrics_port(over_http2), "/metrics")[1].decode()
    assert "cloudflared_tunnel_total_requests" in http2_metrics
    assert "quic_client_" not in http2_metrics

    # `adit tunnel info`: the last column is the protocol each connector registered with.
    for name, protocol in (("over-quic", "quic"), ("over-http2", "http2")):
        info = account.cli("tunnel", "info", name).stdout
        header, row = [line for line in info.splitlines() if line.strip()][-2:]
        assert header.split()[-1] == "PROTOCOL", info
        assert row.split()[-1] == f"2x{protocol}", info


# -- reload, a killed worker, drain ----------------------------------------------------------


@pytest.mark.timeout(120)
def test_reload_killed_worker_and_drain_over_quic(
    processes: Processes, origin: Origin, notify: NotifySocket, tmp_path: Path
) -> None:
    import psutil

    edge = start_edge(processes, tunnel_listen=["127.0.0.1:0", "127.0.0.1:0"])
    account = login(edge, tmp_path / "home")
    tunnel = create_tunnel(account, "reload", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    proc = start_quic_connector(
        processes, edge, tunnel, config, 2, extra=QUIC, env={"NOTIFY_SOCKET": notify.path}
    )
    port = metrics_port(proc)
    ready_at = notify.wait_for("READY=1")
    wait_until(lambda: ready_connections(port) == 2)
    assert quic_registrations(proc) == 2
    assert "Initial protocol quic" in proc.text()

    # 1. SIGHUP with changed rules under load: applied by both workers, nothing fails.
    with RequestLoop(edge) as loop:
        loop.wait_more(20)
        write_config(
            config, HOST, [{"path": "^/new", "service": "http_status:201"}, {"service": origin.url}]
        )
        proc.signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING=1", start=ready_at + 1)
        reloaded = notify.wait_for("READY=1", start=reloading + 1)
        proc.wait_for_log(r"Applied ingress version 2", count=2)
        loop.wait_more(20)
    assert loop.failures == []
    assert request(edge, HOST, path="/new").status == 201
    assert "MONOTONIC_USEC=" in notify.states()[reloading]

    # 2. kill -9 of a worker under load: replaced, registered again over QUIC, nothing fails
    # (the other worker's connection serves meanwhile). The load of the HTTP/2 test: over
    # either transport a request the killed worker had begun to answer is lost with it, so
    # the kill comes between two requests (the CI once killed it amid one: a 502). Over QUIC
    # nothing tells the edge at once that the worker is gone (no reset as with TCP): what it
    # routes there meanwhile, unacknowledged, goes over the other connection.
    pids = worker_pids(proc)
    with RequestLoop(edge, threads=1, interval=0.03) as loop:
        loop.wait_more(20)
        with loop.between_requests():
            psutil.Process(pids[1]).kill()
        wait_until(lambda: worker_pids(proc)[1] != pids[1], timeout=10)
        wait_until(lambda: ready_connections(port) == 2, timeout=15)
        loop.wait_more(20)
    assert loop.failures == []
    assert quic_registrations(proc) == 3
    wait_until(lambda: scrape(port).get('adit_worker_restarts_total{slot="1"}') == 1)
    # The new worker dialled QUIC too: its telemetry is in the sums again.
    wait_until(lambda: scrape(port)["quic_client_total_connections"] == 2)

    # 3. SIGTERM with a request in flight: /ready says 503 at once, STOPPING=1, the request
    # finishes over its QUIC stream, exit 0.
    slow: list[Reply] = []
    before = len(origin.seen_headers)
    waiter = _slow_request(edge, slow)
    wait_until(lambda: len(origin.seen_headers) > before)
    proc.signal(signal.SIGTERM)
    notify.wait_for("STOPPING=1", start=reloaded + 1)
    wait_until(lambda: http_get(port, "/ready")[0] == 503, timeout=5)
    assert proc.popen.poll() is None  # still draining the slow stream
    origin.release_slow.set()
    waiter.join(timeout=15)
    assert [(r.status, r.body) for r in slow] == [(200, b"first piece\nsecond piece\n")]
    assert proc.wait(timeout=20) == 0
    assert "Unregistered tunnel connection" in proc.text()
    assert edge.proc.text().count("connector unregistered") >= 2


@pytest.mark.timeout(90)
def test_a_stuck_worker_over_quic_is_aborted_and_the_watchdog_pauses(
    processes: Processes, origin: Origin, notify: NotifySocket, tmp_path: Path
) -> None:
    edge = start_edge(processes, tunnel_listen=["127.0.0.1:0", "127.0.0.1:0"])
    account = login(edge, tmp_path / "home")
    tunnel = create_tunnel(account, "stuck", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    proc = start_quic_connector(
        processes,
        edge,
        tunnel,
        config,
        2,
        extra=[*QUIC, "--worker-timeout", "4s"],
        env={
            "NOTIFY_SOCKET": notify.path,
            "WATCHDOG_USEC": "1000000",
            **seam_env(ADIT_TEST_STUCK_ON_SIGUSR2="1"),
        },
    )
    notify.wait_for("READY=1")
    notify.wait_for("WATCHDOG=1")
    pids = worker_pids(proc)
    stuck_at = time.monotonic()
    os.kill(pids[0], signal.SIGUSR2)
    proc.wait_for_log(r"Worker is stuck: no heartbeat", timeout=10)
    proc.wait_for_log(r"Fatal Python error: Aborted", timeout=5)
    text = proc.wait_for_log(rf"Started worker pid=(?!{pids[0]}\b)\d+.*slot=0", timeout=10)
    assert "_block_forever" in text
    quiet = [
        t for t, m in notify.messages if m == "WATCHDOG=1" and stuck_at + 1.8 < t < stuck_at + 3.4
    ]
    assert quiet == []
    notify.wait_for("WATCHDOG=1", start=len(notify.states()))
    # The replacement registers over QUIC, replacing the connection the stuck worker held.
    wait_until(lambda: quic_registrations(proc) >= 3, timeout=20)
    assert request(edge, HOST, path="/after").body == b"hello /after"


# -- credential rotation -----------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_rotation_under_load_over_quic(
    processes: Processes, origin: Origin, tmp_path: Path
) -> None:
    edge = start_edge(processes, tunnel_listen=["127.0.0.1:0", "127.0.0.1:0"])
    account = login(edge, tmp_path / "home")
    tunnel = create_tunnel(account, "rot", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    connector = start_quic_connector(
        processes, edge, tunnel, config, 2, extra=[*QUIC, "--ha-connections", "2"]
    )
    slow: list[Reply] = []
    with RequestLoop(edge) as loop:
        loop.wait_more(10)
        waiter = _slow_request(edge, slow)
        wait_until(lambda: len(origin.seen_headers) > 0 and loop.done > 12)
        out = account.cli("tunnel", "rotate", "rot").stdout
        assert "Rotated the secret of tunnel rot" in out, out
        connector.signal(signal.SIGHUP)
        # Both connections rolled over QUIC, each replacement registered before the old
        # one was unregistered and drained.
        edge.proc.wait_for_log(r"connection replaced tunnelID=", count=2, timeout=30)
        edge.proc.wait_for_log(r"secret rotation finished", timeout=15)
        origin.release_slow.set()
        waiter.join(timeout=30)
        loop.wait_more(20)
    assert loop.failures == []
    assert [(r.status, r.body) for r in slow] == [(200, b"first piece\nsecond piece\n")]
    assert quic_registrations(connector) == 4
    assert "protocol=http2" not in connector.text()
    assert connector.popen.poll() is None


# -- the edge restarts, a location comes back ---------------------------------------------------


@pytest.mark.timeout(120)
def test_a_restarted_edge_gets_its_quic_connection_back(
    processes: Processes, origin: Origin, tmp_path: Path
) -> None:
    edge = start_edge(processes, "edge-1")
    account = login(edge, tmp_path / "home")
    tunnel = create_tunnel(account, "redial", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    connector = start_quic_connector(
        processes, edge, tunnel, config, 1, extra=[*QUIC, "--ha-connections", "1"]
    )
    assert request(edge, HOST, path="/before").body == b"hello /before"

    edge.proc.popen.kill()
    edge.proc.popen.wait(timeout=10)
    # UDP has no reset: the silence ends the connection (quic-go's idle timeout, 5 s) and
    # the redials are handshakes that hear nothing, still over QUIC (--protocol quic).
    connector.wait_for_log(r"Connection to the edge ended; retrying in", timeout=20)
    (processes.tmp / "edge-2-state").symlink_to(edge.state_dir)
    again = start_edge(processes, "edge-2", tunnel_listen=edge.tunnel)
    assert again.tunnel == edge.tunnel
    again.proc.wait_for_log(REGISTERED, timeout=60)
    assert request(again, HOST, path="/after").body == b"hello /after"
    assert quic_registrations(connector) == 2
    assert "Switching to fallback protocol" not in connector.text()
    assert connector.popen.poll() is None


def _registered_indexes(edge_log: str) -> list[int]:
    return [int(i) for i in re.findall(REGISTERED + r"\S+ connIndex=(\d+)", edge_log)]


@pytest.mark.timeout(150)
def test_two_locations_over_quic_one_killed_and_restarted(
    processes: Processes, origin: Origin, tmp_path: Path
) -> None:
    any_port = ["127.0.0.1:0", "127.0.0.1:0"]
    edge_a = start_location(processes, "edge-a", "a", any_port)
    edge_b = start_location(processes, "edge-b", "b", any_port, edge_a)
    account = login(edge_a, tmp_path / "home")
    tunnel = create_tunnel(account, "ha", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    connector = start_connector(
        processes,
        tunnel,
        config,
        extra=[*QUIC, *edge_args(edge_a, edge_b), "--ha-connections", "4", "--workers", "2"],
        wait=0,
    )
    edge_a.proc.wait_for_log(REGISTERED, count=2, timeout=30)
    edge_b.proc.wait_for_log(REGISTERED, count=2, timeout=30)
    in_a = _registered_indexes(edge_a.proc.text())
    in_b = _registered_indexes(edge_b.proc.text())
    assert sorted(in_a + in_b) == [0, 1, 2, 3]
    assert "protocol=quic" in edge_a.proc.text() and "protocol=quic" in edge_b.proc.text()

    # Location b dies at once (no CONNECTION_CLOSE): requests through location a never fail
    # while b's two connections notice the silence and dial b again, in vain. (With as many
    # connections as addresses none is free at location a: they stay and back off.)
    with RequestLoop(edge_a) as loop:
        loop.wait_more(10)
        edge_b.proc.popen.kill()
        edge_b.proc.popen.wait(timeout=10)
        connector.wait_for_log(r"failed to dial to edge with quic", count=2, timeout=30)
        loop.wait_more(20)
    assert loop.failures == []

    # Restarted on its addresses, location b gets its two connections back, over QUIC.
    edge_b2 = start_location(processes, "edge-b2", "b", edge_b.tunnel, edge_a)
    edge_b2.proc.wait_for_log(REGISTERED, count=2, timeout=60)
    assert sorted(_registered_indexes(edge_b2.proc.text())) == sorted(in_b)
    assert "protocol=quic" in edge_b2.proc.text()
    assert request(edge_b2, HOST, path="/back").body == b"hello /back"
    # Location a was never touched: still exactly its first two registrations.
    assert sorted(_registered_indexes(edge_a.proc.text())) == sorted(in_a)
    assert "protocol=http2" not in connector.text()


# -- auto with UDP blocked ---------------------------------------------------------------------


def _nft(*rule: str) -> None:
    subprocess.run(["nft", *rule], check=True, capture_output=True, text=True, timeout=10)


@pytest.mark.timeout(160)
def test_auto_falls_back_to_http2_when_udp_to_the_edge_is_dropped() -> None:
    rerun_in_private_netns(
        f"{Path(__file__)}::test_udp_blocked_inside_the_namespace",
        needs=("unshare", "nft"),
        timeout=150,
    )


@pytest.mark.timeout(140)
@pytest.mark.skipif(not INSIDE_NETNS, reason="runs inside the namespace of its twin")
def test_udp_blocked_inside_the_namespace(
    processes: Processes, origin: Origin, tmp_path: Path
) -> None:
    assert shutil.which("nft")
    edge = start_edge(processes)
    port = int(edge.tunnel[0].rsplit(":", 1)[1])
    # Every UDP datagram to the edge's port is dropped on its way out: no answer, no ICMP.
    _nft("add", "table", "inet", "adit_test")
    _nft(
        "add",
        "chain",
        "inet",
        "adit_test",
        "out",
        "{ type filter hook output priority 0 ; policy accept ; }",
    )
    _nft("add", "rule", "inet", "adit_test", "out", "udp", "dport", str(port), "drop")
    account = login(edge, tmp_path / "home")
    tunnel = create_tunnel(account, "blocked", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    # The default protocol (auto), one connection. cloudflared lets the dial error after
    # --max-edge-addr-retries of them change a connection's protocol. With its default (8)
    # that is 9 silent handshakes of 5 s and 1 + 2 + 4 + 8 + 16 + 4 x 32 s of backoff, three
    # minutes of the suite: the default's count and the backoff are the protocol choice's
    # unit tests (tests/unit/workers/test_workers_protocol_choice.py); here the flag says 2.
    connector = start_connector(
        processes,
        tunnel,
        config,
        extra=["--ha-connections", "1", "--max-edge-addr-retries", "2"],
        wait=0,
    )
    # At most 3 x 5 s of handshakes and 1 + 2 s of backoff.
    text = connector.wait_for_log(r"Switching to fallback protocol http2", timeout=90)
    text = connector.wait_for_log(r"Registered tunnel connection connIndex=0.*protocol=http2")
    assert "Initial protocol quic" in connector.wait_for_log("Initial protocol quic")
    switch = text.index("Switching to fallback protocol http2")
    dials = re.findall(
        r"retrying in .*failed to dial to edge with quic at \S+: QUIC", text[:switch]
    )
    assert len(dials) == 3, dials
    # The UDP warning comes with the switch, as cloudflared's does.
    assert UDP_BLOCKED_WARNING.split(",")[0] in text[:switch]
    assert "Tunnel connection failed" not in text  # a silent handshake is the dial's failure
    assert request(edge, HOST, path="/over-http2").body == b"hello /over-http2"
