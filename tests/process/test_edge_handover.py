"""Issue 19: `adit edge` hands over to a new version on SIGUSR2 without refusing a visitor.

A bounded load of visitor requests (HTTP and HTTPS, new connections and keep-alive ones) runs
through a tunnel while the edge is sent SIGUSR2: no request fails, no connection is refused;
the old process exits, the new one serves, systemd's stand-in (a real NOTIFY_SOCKET) saw
``MAINPID=<new>`` then ``READY=1``, and the tunnel's connectors registered at the new process.
A new version that fails to start changes nothing: the old edge keeps serving and says why.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from adversary import CLOUDFLARED, start_cloudflared
from harness import (
    BIN,
    Account,
    Edge,
    Origin,
    Proc,
    Processes,
    create_tunnel,
    login,
    start_connector,
    start_edge,
    write_config,
)

pytestmark = pytest.mark.process

HOST = "handover.example.com"
#: How long the load runs before and after the signal (seconds): bounded.
LOAD_BEFORE = 1.0
LOAD_AFTER = 3.0


# --- systemd's stand-in -------------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.1)
    try:
        yield sock
    finally:
        sock.close()


def _notifications(sock: socket.socket, until: str = "", timeout: float = 0.3) -> list[str]:
    """What arrived (waiting up to ``timeout`` for a message containing ``until``)."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
        if until and until in got[-1]:
            deadline = time.monotonic() + 0.2
            until = ""
    return got


# --- the installed `adit` a package upgrade replaces -------------------------------------------


def _installed(tmp_path: Path) -> Path:
    """A copy of this environment's `adit` console script: the one the edge re-executes on
    SIGUSR2, which a test may replace (an upgrade to a broken build)."""
    script = tmp_path / "bin" / "adit"
    script.parent.mkdir()
    shutil.copy2(BIN / "adit", script)
    return script


def _break(script: Path, version: str) -> None:
    """Replace the installed `adit` by a build whose edge fails at start (its --version works)."""
    script.write_text(
        f"#!{BIN / 'python3'}\n"
        "import sys\n"
        "if sys.argv[1:] == ['--version']:\n"
        f"    print('adit version {version}')\n"
        "    sys.exit(0)\n"
        "raise ImportError('adit.edge.server: this build is broken')\n"
    )


# --- visitors -----------------------------------------------------------------------------------


@dataclass
class Tally:
    ok: int = 0
    #: Successes by kind of visitor (``http/new``, ``https/keep-alive``, ``https/h2``...).
    by_kind: dict[str, int] = field(default_factory=dict)
    #: Failures: (kind, what happened).
    failed: list[tuple[str, str]] = field(default_factory=list)
    refused: int = 0
    #: Keep-alive requests sent again on a new connection because the reused one had been
    #: closed before any byte of an answer (RFC 9112 §9.3.1: what every client does for an
    #: idempotent request; never counted as a success of the first try).
    retried: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Load:
    """Visitors (bounded in number and time) until stopped: HTTP and HTTPS, each with a new
    connection per request and over one keep-alive connection."""

    def __init__(self, edge: Edge, ca: Path, host: str = HOST) -> None:
        self.edge = edge
        self.host = host
        self.tally = Tally()
        self.stop = threading.Event()
        self.context = ssl.create_default_context(cafile=str(ca))
        self.ca = ca
        self.threads = [
            threading.Thread(target=self._run, args=(tls, keep), daemon=True)
            for tls in (False, True)
            for keep in (False, True)
        ]
        if shutil.which("curl") is not None:
            self.threads.append(threading.Thread(target=self._run_http2, daemon=True))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(VISITOR_TIMEOUT + 5)

    def _run(self, tls: bool, keep: bool) -> None:
        kind = f"{'https' if tls else 'http'}/{'keep-alive' if keep else 'new'}"
        conn: http.client.HTTPConnection | None = None
        count = 0
        while not self.stop.is_set() and count < 5000:
            count += 1
            reused = conn is not None
            if conn is None:
                conn = _visitor_connection(self.edge, tls, self.host, self.context)
            try:
                status, body = _get(conn, self.host, f"/n{count}", keep)
            except ConnectionRefusedError:
                with self.tally.lock:
                    self.tally.refused += 1
                conn.close()
                conn = None
                continue
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                conn = None
                if reused:
                    with self.tally.lock:
                        self.tally.retried += 1
                    conn = _visitor_connection(self.edge, tls, self.host, self.context)
                    try:
                        status, body = _get(conn, self.host, f"/n{count}", keep)
                    except (OSError, http.client.HTTPException) as again:
                        self._fail(kind, repr(again))
                        conn.close()
                        conn = None
                        continue
                else:
                    self._fail(kind, repr(exc))
                    continue
            except (OSError, http.client.HTTPException) as exc:
                self._fail(kind, repr(exc))
                conn.close()
                conn = None
                continue
            if status == 200 and body == f"hello /n{count}".encode():
                self._ok(kind, 1)
            else:
                self._fail(kind, f"{status} {body[:200]!r}")
            if not keep:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def _run_http2(self) -> None:
        """HTTP/2 visitors (curl: a new connection each, two requests on it)."""
        port = self.edge.https.rsplit(":", 1)[1]
        count = 0
        while not self.stop.is_set() and count < 2000:
            count += 1
            urls = [f"https://{self.host}:{port}/h{count}-{n}" for n in (1, 2)]
            try:
                done = subprocess.run(
                    [
                        "curl",
                        "-sS",
                        "--http2",
                        "--cacert",
                        str(self.ca),
                        "--resolve",
                        f"{self.host}:{port}:127.0.0.1",
                        "-w",
                        "|%{http_code} %{http_version}\n",
                        *urls,
                    ],
                    capture_output=True,
                    timeout=60,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                self._fail("https/h2", "curl timed out")
                continue
            if done.returncode == 7:
                with self.tally.lock:
                    self.tally.refused += 1
                continue
            expected = b"".join(f"hello /h{count}-{n}|200 2\n".encode() for n in (1, 2))
            if done.returncode != 0 or done.stdout != expected:
                self._fail("https/h2", f"{done.returncode} {done.stdout[:200]!r} {done.stderr!r}")
            else:
                self._ok("https/h2", 2)

    def _ok(self, kind: str, count: int) -> None:
        with self.tally.lock:
            self.tally.ok += count
            self.tally.by_kind[kind] = self.tally.by_kind.get(kind, 0) + count

    def _fail(self, kind: str, what: str) -> None:
        with self.tally.lock:
            self.tally.failed.append((kind, what))


#: A visitor waits longer than the new edge holds a request for a tunnel whose connectors are
#: still moving (``--handover-hold``, 30 s): cloudflared over HTTP/2 redials after its own
#: backoff, 7-21 s seen, and a request held meanwhile is answered then, not dropped.
VISITOR_TIMEOUT = 40


def _visitor_connection(
    edge: Edge, tls: bool, host: str, context: ssl.SSLContext
) -> http.client.HTTPConnection:
    address = edge.https if tls else edge.http
    ip, port = address.rsplit(":", 1)
    if not tls:
        return http.client.HTTPConnection(ip, int(port), timeout=VISITOR_TIMEOUT)
    conn = http.client.HTTPSConnection(ip, int(port), timeout=VISITOR_TIMEOUT, context=context)
    # Connect by address, present the routed hostname (SNI and certificate check).
    raw = socket.create_connection((ip, int(port)), timeout=VISITOR_TIMEOUT)
    conn.sock = context.wrap_socket(raw, server_hostname=host)
    return conn


def _get(conn: http.client.HTTPConnection, host: str, path: str, keep: bool) -> tuple[int, bytes]:
    conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", host)
    if not keep:
        conn.putheader("Connection", "close")
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    if response.getheader("Connection", "").lower() == "close":
        conn.close()
    return response.status, body


# --- the edge and its tunnel --------------------------------------------------------------------


@dataclass
class Scene:
    edge: Edge
    account: Account
    script: Path
    ready_file: Path


@pytest.fixture
def scene(processes: Processes, tmp_path: Path, notify_socket: socket.socket) -> Scene:
    script = _installed(tmp_path)
    edge = start_edge(
        processes,
        https=True,
        command=[str(script)],
        extra=["--metrics", "127.0.0.1:0"],
        env={
            "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
            "ADIT_EDGE_GRACE_PERIOD": "15s",
            "ADIT_EDGE_HANDOVER_TIMEOUT": "20s",
        },
    )
    assert _notifications(notify_socket, "READY=1", 5) == ["READY=1"]
    account = login(edge, tmp_path / "home", zones=(HOST,))
    return Scene(edge, account, script, tmp_path / "edge-ready.json")


def _ready_pid(path: Path) -> int:
    return int(json.loads(path.read_text())["pid"])


def _metrics(ready_file: Path) -> str:
    address = json.loads(ready_file.read_text())["metrics"][0]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def _wait_new_pid(scene: Scene, old: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = _ready_pid(scene.ready_file)
        except (OSError, ValueError, KeyError):
            pid = old
        if pid != old:
            return pid
        time.sleep(0.05)
    raise AssertionError(f"no new edge wrote its ready file:\n{scene.edge.proc.text()}")


def _alive(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _connector(
    kind: str, processes: Processes, scene: Scene, origin: Origin, tmp_path: Path
) -> Proc:
    tunnel = create_tunnel(scene.account, "moving", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    if kind == "cloudflared-http2":
        return start_cloudflared(processes, tunnel, config, scene.edge, protocol="http2")
    if kind == "cloudflared-quic":
        return start_cloudflared(processes, tunnel, config, scene.edge, protocol="quic")
    protocol = kind.removeprefix("adit-")
    return start_connector(
        processes,
        tunnel,
        config,
        extra=["--protocol", protocol],
        wait=1,
    )


KINDS = [
    "adit-quic",
    "adit-http2",
    pytest.param(
        "cloudflared-http2",
        marks=pytest.mark.skipif(not CLOUDFLARED, reason="set ADIT_CLOUDFLARED"),
    ),
    pytest.param(
        "cloudflared-quic",
        marks=pytest.mark.skipif(not CLOUDFLARED, reason="set ADIT_CLOUDFLARED"),
    ),
]


@pytest.mark.parametrize("kind", KINDS)
def test_sigusr2_hands_over_without_a_failed_request(
    kind: str,
    processes: Processes,
    scene: Scene,
    origin: Origin,
    tmp_path: Path,
    notify_socket: socket.socket,
) -> None:
    connector = _connector(kind, processes, scene, origin, tmp_path)
    registered = connector.text().count("Registered tunnel connection")
    edge = scene.edge
    old = edge.proc.popen.pid
    # A request in flight across the hand-over: the origin answers its second half later.
    slow: dict[str, object] = {}

    def slow_request() -> None:
        ip, port = edge.http.rsplit(":", 1)
        conn = http.client.HTTPConnection(ip, int(port), timeout=30)
        try:
            slow["reply"] = _get(conn, HOST, "/slow", keep=False)
        except Exception as exc:
            slow["reply"] = exc
        finally:
            conn.close()

    slow_thread = threading.Thread(target=slow_request, daemon=True)
    with Load(edge, edge.ca) as load:
        slow_thread.start()
        time.sleep(LOAD_BEFORE)
        edge.proc.signal(signal.SIGUSR2)
        new = _wait_new_pid(scene, old)
        edge.proc.wait_for_log("handing over to adit")
        time.sleep(1.0)
        origin.release_slow.set()  # the old edge still relays the rest of the answer
        slow_thread.join(20)
        assert edge.proc.wait(timeout=30) == 0
        connector.wait_for_log("Registered tunnel connection", count=registered + 1, timeout=30)
        time.sleep(LOAD_AFTER)
    tally = load.tally
    assert tally.failed == [], (tally.failed[:10], edge.proc.text()[-4000:])
    assert tally.refused == 0
    assert tally.ok > 50, tally
    assert all(tally.by_kind.get(kind) for kind in ("http/new", "https/keep-alive")), tally
    assert slow["reply"] == (200, b"first piece\nsecond piece\n"), slow
    # The old process is gone, the new one serves and is systemd's main process now.
    assert not _alive(old)
    assert _alive(new)
    notes = _notifications(notify_socket, "READY=1", 10)
    assert f"MAINPID={new}" in notes, notes
    assert notes.index(f"MAINPID={new}") < notes.index("READY=1"), notes
    assert "STOPPING=1" not in notes, notes
    # The tunnel is registered at the new process (the only one left to answer the API).
    info = scene.account.cli("tunnel", "info", "moving").stdout
    assert "CONNECTOR ID" in info, info
    log = edge.proc.text()
    assert "took over from the previous edge" in log, log[-3000:]
    print(
        f"{kind}: {tally.ok} requests {tally.by_kind}, {tally.retried} keep-alive retries "
        "after a close, 0 failed"
    )


def test_a_broken_new_version_changes_nothing(
    processes: Processes,
    scene: Scene,
    origin: Origin,
    tmp_path: Path,
    notify_socket: socket.socket,
) -> None:
    connector = _connector("adit-http2", processes, scene, origin, tmp_path)
    edge = scene.edge
    old = edge.proc.popen.pid
    good = scene.script.read_bytes()
    _break(scene.script, "2099.1.0")
    with Load(edge, edge.ca) as load:
        time.sleep(LOAD_BEFORE)
        edge.proc.signal(signal.SIGUSR2)
        edge.proc.wait_for_log(r"hand-over to adit 2099\.1\.0 \(pid \d+\) failed: ")
        time.sleep(LOAD_AFTER)
    tally = load.tally
    assert tally.failed == [] and tally.refused == 0, tally.failed[:10]
    assert tally.ok > 50
    assert _alive(old) and _ready_pid(scene.ready_file) == old
    line = next(x for x in edge.proc.text().splitlines() if "hand-over to adit 2099.1.0" in x)
    assert "exited with status 1 before it was ready" in line, line
    assert "this edge keeps serving" in line
    assert not [n for n in _notifications(notify_socket) if "MAINPID" in n]
    assert "adit_edge_handover_failures_total 1" in _metrics(scene.ready_file)
    # Fixed: the next SIGUSR2 hands over (the failure left nothing behind).
    scene.script.write_bytes(good)
    edge.proc.signal(signal.SIGUSR2)
    new = _wait_new_pid(scene, old)
    assert edge.proc.wait(timeout=30) == 0
    connector.wait_for_log("Registered tunnel connection", count=2, timeout=30)
    assert _alive(new)
    # The new edge hands over in turn (its sockets were inherited, its successor inherits
    # them again), serving all along.
    with Load(edge, edge.ca) as load:
        time.sleep(LOAD_BEFORE)
        os.kill(new, signal.SIGUSR2)
        third = _wait_new_pid(scene, new)
        connector.wait_for_log("Registered tunnel connection", count=3, timeout=30)
        deadline = time.monotonic() + 30
        while _alive(new) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(LOAD_AFTER)
    assert load.tally.failed == [] and load.tally.refused == 0, load.tally.failed[:10]
    assert not _alive(new) and _alive(third)
    # The metrics listener moved too (the count is the new process's own).
    assert "adit_edge_handover_failures_total 0" in _metrics(scene.ready_file)
    notes = _notifications(notify_socket, f"MAINPID={third}", 10)
    assert f"MAINPID={third}" in notes, notes


def test_a_new_version_that_never_gets_ready_is_stopped(
    processes: Processes, tmp_path: Path, notify_socket: socket.socket
) -> None:
    script = _installed(tmp_path)
    edge = start_edge(
        processes,
        command=[str(script)],
        env={
            "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
            "ADIT_EDGE_HANDOVER_TIMEOUT": "2s",
        },
    )
    _notifications(notify_socket, "READY=1", 5)
    # A build that hangs at start (it answers --version).
    script.write_text(
        f"#!{BIN / 'python3'}\n"
        "import sys, time\n"
        "if sys.argv[1:] == ['--version']:\n"
        "    print('adit version 2099.2.0')\n"
        "    sys.exit(0)\n"
        "time.sleep(120)\n"
    )
    edge.proc.signal(signal.SIGUSR2)
    text = edge.proc.wait_for_log(r"hand-over to adit 2099\.2\.0 \(pid \d+\) failed: ")
    line = next(x for x in text.splitlines() if "hand-over to adit 2099.2.0" in x)
    assert "it was not ready within 2s" in line, line
    pid = int(line.split("(pid ")[1].split(")")[0])
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the hanging new edge was not stopped"
    assert edge.proc.popen.poll() is None
    ip, port = edge.http.rsplit(":", 1)
    conn = http.client.HTTPConnection(ip, int(port), timeout=10)
    try:
        assert _get(conn, "nowhere.example.com", "/", keep=False)[0] == 404
    finally:
        conn.close()


def test_sigusr2_during_a_sigterm_drain_neither_cuts_it_short_nor_starts_an_edge(
    processes: Processes, scene: Scene, origin: Origin, tmp_path: Path
) -> None:
    _connector("adit-http2", processes, scene, origin, tmp_path)
    edge = scene.edge
    reply: list[object] = []

    def slow_request() -> None:
        ip, port = edge.http.rsplit(":", 1)
        conn = http.client.HTTPConnection(ip, int(port), timeout=30)
        try:
            reply.append(_get(conn, HOST, "/slow", keep=False))
        except Exception as exc:
            reply.append(exc)
        finally:
            conn.close()

    flight = threading.Thread(target=slow_request, daemon=True)
    flight.start()
    deadline = time.monotonic() + 10
    while not origin.accepted and time.monotonic() < deadline:
        time.sleep(0.05)
    edge.proc.signal(signal.SIGTERM)
    edge.proc.wait_for_log("shutting down on SIGTERM")
    edge.proc.signal(signal.SIGUSR2)
    edge.proc.wait_for_log("SIGUSR2 while draining: ignored")
    origin.release_slow.set()
    flight.join(20)
    assert reply == [(200, b"first piece\nsecond piece\n")], reply
    assert edge.proc.wait(timeout=30) == 0
    assert "started the new edge" not in edge.proc.text()


def test_every_listening_socket_is_handed_over(processes: Processes, tmp_path: Path) -> None:
    # Two --http-listen flags; the first a name, which may resolve to several addresses (a
    # socket each: all of them are handed over).
    edge = start_edge(processes, http_listen="localhost:0", extra=["--http-listen", "127.0.0.1:0"])
    ready = tmp_path / "edge-ready.json"
    addresses = json.loads(ready.read_text())["http"]
    assert len(addresses) >= 2
    old = edge.proc.popen.pid
    edge.proc.signal(signal.SIGUSR2)
    deadline = time.monotonic() + 30
    while _ready_pid(ready) == old and time.monotonic() < deadline:
        time.sleep(0.05)
    assert edge.proc.wait(timeout=30) == 0
    assert json.loads(ready.read_text())["http"] == addresses
    assert "is not used by this configuration" not in edge.proc.text()
    for address in addresses:
        ip, port = address.rsplit(":", 1)
        conn = http.client.HTTPConnection(ip.strip("[]"), int(port), timeout=10)
        try:
            assert _get(conn, "nowhere.example.com", "/", keep=False)[0] == 404
        finally:
            conn.close()
