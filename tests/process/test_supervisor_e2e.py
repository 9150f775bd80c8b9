"""The connector against a real edge: SIGHUP reload, killed and stuck workers, metrics, systemd.

Every test runs the real ``adit edge`` (two tunnel listeners, so two HA connections and two
workers), a real ``adit tunnel run`` over HTTP/2 (test_quic_operations.py has them over QUIC)
and a threaded origin; sd_notify messages arrive on a real
unix datagram socket given as ``NOTIFY_SOCKET``. Request loops run in a thread, bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from adversary import NotifySocket
from harness import (
    Account,
    Edge,
    Origin,
    Proc,
    Processes,
    create_tunnel,
    login,
    request,
    seam_env,
    start_connector,
    start_edge,
    write_config,
)

pytestmark = [pytest.mark.process, pytest.mark.timeout(60)]

HOST = "reload.example.test"
#: These are the HTTP/2 runs (``auto`` would start with QUIC).
HTTP2 = ["--protocol", "http2"]

STARTED = re.compile(r"Started worker pid=(\d+).*slot=(\d+)")


@dataclass
class RequestLoop:
    """Sequential requests from a thread until stopped (bounded by ``limit``)."""

    edge: Edge
    host: str
    path: str = "/"
    interval: float = 0.03
    limit: int = 600
    statuses: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        # Held by the request in flight, and by between_requests.
        self._turn = threading.Lock()

    def _run(self) -> None:
        for _ in range(self.limit):
            if self._stop.is_set():
                return
            with self._turn:
                try:
                    reply = request(self.edge, self.host, path=self.path, timeout=10)
                except OSError as exc:
                    self.failures.append(repr(exc))
                else:
                    self.statuses.append(reply.status)
                    if reply.status != 200:
                        self.failures.append(f"{reply.status} {reply.body[:200]!r}")
            time.sleep(self.interval)

    @contextlib.contextmanager
    def between_requests(self) -> Iterator[None]:
        """While no request is in flight."""
        with self._turn:
            yield

    def __enter__(self) -> RequestLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def wait_count(self, count: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.statuses) + len(self.failures) < count:
            assert time.monotonic() < deadline, "request loop too slow"
            time.sleep(0.02)


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


def ready(port: int) -> dict[str, object]:
    _, body = http_get(port, "/ready")
    data: dict[str, object] = json.loads(body)
    return data


def worker_pids(proc: Proc) -> dict[int, int]:
    """The latest worker pid of each slot, from the connector's log."""
    pids: dict[int, int] = {}
    for match in STARTED.finditer(proc.text()):
        pids[int(match.group(2))] = int(match.group(1))
    return pids


def wait_until(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if predicate():  # type: ignore[operator]
                return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
def edge2(processes: Processes) -> Edge:
    return start_edge(processes, tunnel_listen=["127.0.0.1:0", "127.0.0.1:0"])


@pytest.fixture
def account2(edge2: Edge, tmp_path: Path) -> Account:
    return login(edge2, tmp_path / "home")


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


def test_sighup_applies_new_rules_refuses_bad_ones_and_drops_nothing(
    processes: Processes,
    edge2: Edge,
    account2: Account,
    origin: Origin,
    notify: NotifySocket,
    tmp_path: Path,
) -> None:
    tunnel = create_tunnel(account2, "reload", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    proc = start_connector(
        processes, tunnel, config, extra=HTTP2, env={"NOTIFY_SOCKET": notify.path}, wait=2
    )
    assert len(worker_pids(proc)) == 2
    ready_at = notify.wait_for("READY=1")
    assert request(edge2, HOST, path="/new").status == 200  # the origin answers everything

    # 1. A changed ingress: /new now answers 201 from the edge's side of the connector.
    with RequestLoop(edge2, HOST) as loop:
        loop.wait_count(20)
        write_config(
            config, HOST, [{"path": "^/new", "service": "http_status:201"}, {"service": origin.url}]
        )
        proc.signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING=1", start=ready_at + 1)
        done = notify.wait_for("READY=1", start=reloading + 1)
        proc.wait_for_log(r"Applied ingress version 2", count=2)
        loop.wait_count(len(loop.statuses) + 20)
    assert loop.failures == []
    assert request(edge2, HOST, path="/new").status == 201
    assert request(edge2, HOST, path="/other").status == 200
    assert "MONOTONIC_USEC=" in notify.states()[reloading]

    # 2. A broken config: refused, said so, the previous rules keep serving.
    with RequestLoop(edge2, HOST) as loop:
        loop.wait_count(20)
        config.write_text(yaml.safe_dump({"ingress": [{"hostname": HOST, "service": origin.url}]}))
        proc.signal(signal.SIGHUP)
        rejected = notify.wait_for("RELOADING=1", start=done + 1)
        ready_again = notify.wait_for("READY=1", start=rejected + 1)
        status = notify.wait_for("STATUS=", start=ready_again + 1)
        loop.wait_count(len(loop.statuses) + 20)
    assert loop.failures == []
    assert "reload rejected:" in notify.states()[status]
    assert "catch-all" in notify.states()[status] or "last" in notify.states()[status]
    text = proc.wait_for_log(r"ERR Rejected the new configuration")
    line = next(x for x in text.splitlines() if "Rejected the new configuration" in x)
    assert str(config) in line and "error=" in line
    assert request(edge2, HOST, path="/new").status == 201

    # 3. Stop: STOPPING=1, exit 0; the whole sequence in order.
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    stopping = notify.wait_for("STOPPING=1", start=status + 1)
    order = [
        s.split("\n")[0]
        for s in notify.states()[: stopping + 1]
        if not s.startswith(("STATUS=", "WATCHDOG="))
    ]
    assert order == ["READY=1", "RELOADING=1", "READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]


def _scrape(port: int) -> dict[str, float]:
    status, body = http_get(port, "/metrics")
    assert status == 200
    samples: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_workers_metrics_affinity_and_a_killed_worker(
    processes: Processes,
    edge2: Edge,
    account2: Account,
    origin: Origin,
    tmp_path: Path,
) -> None:
    import base64

    import psutil

    tunnel = create_tunnel(account2, "metrics", HOST)
    secret = json.loads(tunnel.credentials.read_text())["TunnelSecret"]
    token = account2.cli("tunnel", "token", "metrics").stdout.strip()
    assert token and base64.b64decode(token + "==")  # a real token, to look for in the logs
    logfile = tmp_path / "logs" / "adit.json"
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    proc = start_connector(
        processes,
        tunnel,
        config,
        extra=[*HTTP2, "--token", token, "--logfile", str(logfile), "--loglevel", "debug"],
        wait=2,
    )
    port = metrics_port(proc)
    wait_until(lambda: ready(port)["readyConnections"] == 2)
    body = ready(port)
    assert body["status"] == 200
    # Each registration names its protocol, in one line (the worker's; the supervisor does
    # not repeat it, even at debug level).
    text = proc.text()
    assert "Initial protocol http2" in text
    assert len(re.findall(r"Registered tunnel connection .*protocol=http2", text)) == 2

    # Each worker runs on exactly the CPU it was assigned (slot i → i-th usable CPU).
    cpus = sorted(psutil.Process(proc.popen.pid).cpu_affinity())
    pids = worker_pids(proc)
    assert sorted(pids) == [0, 1]
    for slot, pid in pids.items():
        assert psutil.Process(pid).cpu_affinity() == [cpus[slot]]
        assert psutil.Process(pid).ppid() == proc.popen.pid

    # Request counters summed over the workers equal the requests sent.
    sent = 40
    for index in range(sent):
        assert request(edge2, HOST, path=f"/n/{index}").status == 200
    wait_until(lambda: _scrape(port).get("cloudflared_tunnel_total_requests") == sent)
    samples = _scrape(port)
    assert samples['cloudflared_tunnel_response_by_code{status_code="200"}'] == sent
    assert samples["cloudflared_tunnel_ha_connections"] == 2
    assert samples["adit_config_version"] == 1
    for slot in (0, 1):
        assert samples[f'adit_worker_rss_bytes{{slot="{slot}"}}'] > 0
        assert f'adit_worker_cpu_seconds_total{{slot="{slot}"}}' in samples
        assert f'adit_worker_loop_lag_seconds{{slot="{slot}"}}' in samples

    # kill -9 of worker 1: replaced, its connection registered again within 5 s, while
    # worker 0 keeps serving. Between two requests: one the killed worker was answering is
    # lost with it (the edge resends only what provably never reached a connector).
    with RequestLoop(edge2, HOST) as loop:
        loop.wait_count(10)
        with loop.between_requests():
            killed_at = time.monotonic()
            psutil.Process(pids[1]).kill()
        wait_until(lambda: worker_pids(proc)[1] != pids[1], timeout=5)
        wait_until(lambda: ready(port)["readyConnections"] == 2, timeout=5)
        assert time.monotonic() - killed_at < 5.0
        loop.wait_count(len(loop.statuses) + 20)
    assert loop.failures == []
    assert psutil.Process(worker_pids(proc)[1]).cpu_affinity() == [cpus[1]]
    wait_until(lambda: _scrape(port).get('adit_worker_restarts_total{slot="1"}') == 1)

    # SIGTERM with a stream in flight: /ready answers 503 at once, the stream finishes, exit 0.
    slow: list[bytes] = []
    before = len(origin.seen_headers)
    waiter = threading.Thread(target=lambda: slow.append(request(edge2, HOST, path="/slow").body))
    waiter.start()
    wait_until(lambda: len(origin.seen_headers) > before)  # the origin is holding the stream open
    proc.signal(signal.SIGTERM)
    wait_until(lambda: http_get(port, "/ready")[0] == 503, timeout=5)
    assert ready(port)["readyConnections"] == 0
    assert proc.popen.poll() is None  # still draining the slow stream
    origin.release_slow.set()
    waiter.join(timeout=15)
    assert slow == [b"first piece\nsecond piece\n"]
    assert proc.wait(timeout=20) == 0

    # Secrets never reach a log: neither the token nor the tunnel secret.
    for text in (proc.text(), logfile.read_text()):
        assert token not in text and secret not in text
    lines = [json.loads(line) for line in logfile.read_text().splitlines()]
    assert all({"level", "time", "message"} <= set(line) for line in lines)
    assert any(line.get("slot") == 1 and line.get("connIndex") == 1 for line in lines) or any(
        line.get("slot") == 1 and "connIndex=1" in str(line["message"]) for line in lines
    )


def test_stuck_worker_is_aborted_with_a_traceback_and_the_watchdog_pauses(
    processes: Processes,
    edge2: Edge,
    account2: Account,
    origin: Origin,
    notify: NotifySocket,
    tmp_path: Path,
) -> None:
    tunnel = create_tunnel(account2, "stuck", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    proc = start_connector(
        processes,
        tunnel,
        config,
        extra=[*HTTP2, "--worker-timeout", "4s"],
        env={
            "NOTIFY_SOCKET": notify.path,
            "WATCHDOG_USEC": "1000000",
            **seam_env(ADIT_TEST_STUCK_ON_SIGUSR2="1"),
        },
        wait=2,
    )
    notify.wait_for("READY=1")
    notify.wait_for("WATCHDOG=1")
    pids = worker_pids(proc)
    stuck_at = time.monotonic()
    os.kill(pids[0], signal.SIGUSR2)
    text = proc.wait_for_log(r"Worker is stuck: no heartbeat", timeout=10)
    proc.wait_for_log(r"Fatal Python error: Aborted", timeout=5)
    text = proc.wait_for_log(rf"Started worker pid=(?!{pids[0]}\b)\d+.*slot=0", timeout=10)
    assert "_block_forever" in text  # the stuck frame, from faulthandler's traceback
    assert "most recent call first" in text
    # No WATCHDOG=1 while the worker was stuck (its heartbeat stale, before the abort).
    quiet = [
        t for t, m in notify.messages if m == "WATCHDOG=1" and stuck_at + 1.8 < t < stuck_at + 3.4
    ]
    assert quiet == []
    resumed = notify.wait_for("WATCHDOG=1", start=len(notify.states()))
    assert resumed >= 0
    wait_until(lambda: worker_pids(proc)[0] != pids[0])
    proc.wait_for_log(r"Registered tunnel connection", count=3)
    assert request(edge2, HOST).status == 200


def test_sighup_with_a_new_worker_count_moves_connections_without_failures(
    processes: Processes,
    edge2: Edge,
    account2: Account,
    origin: Origin,
    tmp_path: Path,
) -> None:
    import psutil

    tunnel = create_tunnel(account2, "resize", HOST)
    config = tmp_path / "config.yml"
    rules = [{"hostname": HOST, "service": origin.url}, {"service": "http_status:404"}]
    config.write_text(yaml.safe_dump({"workers": 2, "ingress": rules}))
    proc = start_connector(processes, tunnel, config, extra=HTTP2, wait=2)
    port = metrics_port(proc)
    wait_until(lambda: ready(port)["readyConnections"] == 2)

    def workers() -> int:
        return len(psutil.Process(proc.popen.pid).children())

    assert workers() == 2
    with RequestLoop(edge2, HOST) as loop:
        loop.wait_count(10)
        config.write_text(yaml.safe_dump({"workers": 1, "ingress": rules}))
        proc.signal(signal.SIGHUP)
        proc.wait_for_log(r"Retired worker exited")
        wait_until(lambda: workers() == 1 and ready(port)["readyConnections"] == 2)
        loop.wait_count(len(loop.statuses) + 10)
        config.write_text(yaml.safe_dump({"workers": 2, "ingress": rules}))
        proc.signal(signal.SIGHUP)
        wait_until(lambda: workers() == 2)
        wait_until(lambda: ready(port)["readyConnections"] == 2)
        loop.wait_count(len(loop.statuses) + 10)
    assert loop.failures == []

    # The credentials file found by the tunnel's name is watched too.
    stat = tunnel.credentials.stat()
    os.utime(tunnel.credentials, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    proc.wait_for_log(r'Reloading configuration reason="credentials file changed"', timeout=8)
