"""Test harness: real `adit edge`, real `adit tunnel run`, real origins, all on 127.0.0.1.

Every process is started with its output in a file under the test's tmp dir, waited for by
polling that file (bounded), and killed at teardown whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
#: ``sitecustomize`` and the stand-in runtime: test seams for the processes a test starts.
SEAMS = Path(__file__).with_name("seams")


def seam_env(**flags: str) -> dict[str, str]:
    """Environment that turns on test seams (``tests/seams/sitecustomize.py``) in the processes
    started with it and their children, e.g. ``seam_env(ADIT_TEST_STANDIN="1")``."""
    path = os.pathsep.join(p for p in (str(SEAMS), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, **flags}


def adit_command() -> list[str]:
    """The installed `adit` console script of this environment."""
    return [str(BIN / "adit")]


@dataclass
class Proc:
    """A child process whose output goes to a log file."""

    popen: subprocess.Popen[bytes]
    log: Path
    name: str

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_log(self, pattern: str, timeout: float = 20.0, count: int = 1) -> str:
        """Wait until ``pattern`` (regex) appears ``count`` times; fail with the log."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            text = self.text()
            if len(regex.findall(text)) >= count:
                return text
            if self.popen.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"{self.name}: {pattern!r} not seen (exit={self.popen.poll()}); log:\n{self.text()}"
        )

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        return self.popen.wait(timeout=timeout)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)


@dataclass
class Processes:
    """Starts processes for one test and kills every one of them at teardown."""

    tmp: Path
    started: list[Proc] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Proc:
        log = self.tmp / f"{name}.log"
        out = log.open("wb")
        popen = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd or self.tmp,
            start_new_session=True,
        )
        out.close()
        proc = Proc(popen, log, name)
        self.started.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in reversed(self.started):
            # Also when the process itself has ended: what it started lives on in its group
            # (an edge's successor after a hand-over, which outlives it by design).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            if proc.popen.poll() is None:
                proc.popen.wait(timeout=10)


@dataclass
class Edge:
    """A running `adit edge` with its addresses."""

    proc: Proc
    state_dir: Path
    http: str  # host:port of the public listener
    api_url: str
    tunnel: list[str]
    ca: Path
    #: host:port of the public HTTPS listener ("" without one).
    https: str = ""

    def url(self, path: str = "/") -> str:
        return f"http://{self.http}{path}"


def start_edge(
    processes: Processes,
    name: str = "edge",
    location: str = "test",
    tunnel_listen: list[str] | None = None,
    *,
    env: dict[str, str] | None = None,
    https: bool = False,
    http_listen: str = "127.0.0.1:0",
    https_listen: str = "127.0.0.1:0",
    extra: list[str] | None = None,
    command: list[str] | None = None,
) -> Edge:
    """An edge on 127.0.0.1 (``command``: another `adit` than this environment's);
    ``tunnel_listen`` gives several tunnel listeners (HA tests),
    ``env`` extra environment (``ADIT_EDGE_*`` settings), ``https`` a public HTTPS listener,
    ``extra`` more flags. ACME is off unless ``env`` or ``extra`` say otherwise: a test never
    asks a CA on the internet for certificates."""
    state = processes.tmp / f"{name}-state"
    ready = processes.tmp / f"{name}-ready.json"
    listeners: list[str] = []
    for address in tunnel_listen or ["127.0.0.1:0"]:
        listeners += ["--tunnel-listen", address]
    proc = processes.start(
        name,
        [
            *(command or adit_command()),
            "edge",
            "--state-dir",
            str(state),
            *listeners,
            "--http-listen",
            http_listen,
            *(["--https-listen", https_listen] if https else []),
            "--api-listen",
            "127.0.0.1:0",
            "--location",
            location,
            "--ready-file",
            str(ready),
            *(extra or []),
        ],
        env={"ADIT_EDGE_ACME_DIRECTORY": "off", **(env or {})},
    )
    deadline = time.monotonic() + 20
    while not ready.exists():
        if proc.popen.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"edge did not start:\n{proc.text()}")
        time.sleep(0.05)
    info = json.loads(ready.read_text())
    return Edge(
        proc=proc,
        state_dir=state,
        http=info["http"][0],
        api_url=info["api"][0],
        tunnel=info["advertise"],
        ca=Path(info["ca"]),
        https=info["https"][0] if info["https"] else "",
    )


def start_location(
    processes: Processes, name: str, location: str, listen: list[str], shared: Edge | None = None
) -> Edge:
    """An edge process as a location of its own (HA tests); with ``shared``, on that edge's
    state directory (one store and one CA: the stand-in for a multi-node edge's shared
    database)."""
    if shared is not None:
        (processes.tmp / f"{name}-state").symlink_to(shared.state_dir)
    return start_edge(processes, name, location, tunnel_listen=listen)


def edge_args(*edges: Edge) -> list[str]:
    """``--edge`` flags for every tunnel listener of ``edges``."""
    return [flag for edge in edges for address in edge.tunnel for flag in ("--edge", address)]


def run_cli(
    args: list[str], *, home: Path, check: bool = True, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run `adit ARGS` with HOME pointed at a test directory."""
    result = subprocess.run(
        [*adit_command(), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HOME": str(home)},
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"adit {' '.join(args)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


@dataclass
class Account:
    """A logged-in user of an edge: HOME with ~/.adit/cert.pem."""

    edge: Edge
    home: Path
    tag: str
    #: The account's API bearer token (for raw API requests).
    token: str = field(default="", repr=False)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(list(args), home=self.home, check=check)


def login(edge: Edge, home: Path, name: str = "acme", zones: tuple[str, ...] = ()) -> Account:
    """A new account with an API token, logged in under ``home``, owning ``zones``."""
    home.mkdir(parents=True, exist_ok=True)
    state = ["--state-dir", str(edge.state_dir)]
    tag = run_cli(["edge", "account", "create", name, *state], home=home).stdout.strip()
    out = run_cli(
        ["edge", "token", "create", "--account", tag, "--api-url", edge.api_url, *state],
        home=home,
    ).stdout
    line = next(x for x in out.splitlines() if "tunnel login" in x)
    args = line.split()[1:]  # drop "adit"
    run_cli(args, home=home)
    account = Account(edge, home, tag, args[args.index("--api-token") + 1])
    for zone in zones:
        add_zone(account, zone)
    return account


def add_zone(account: Account, zone: str) -> None:
    """``adit edge zone add`` as the edge's admin: ``zone`` becomes the account's."""
    state = ["--state-dir", str(account.edge.state_dir)]
    run_cli(["edge", "zone", "add", "--account", account.tag, zone, *state], home=account.home)


def zone_of(hostname: str) -> str:
    """The narrowest zone a route to ``hostname`` needs: the name itself (``*.`` removed), so
    that tests giving neighbouring names to different accounts never overlap."""
    return hostname.removeprefix("*.")


@dataclass
class Tunnel:
    """A created tunnel with its credentials file and routed hostname."""

    account: Account
    name: str
    id: str
    credentials: Path
    hostname: str


def create_tunnel(account: Account, name: str, hostname: str) -> Tunnel:
    """``adit tunnel create NAME`` and a route for ``hostname`` (its zone added first)."""
    out = account.cli("tunnel", "create", name).stdout
    match = re.search(r"Created tunnel \S+ with id ([0-9a-f-]{36})", out)
    assert match, out
    tunnel_id = match.group(1)
    credentials = account.home / ".adit" / f"{tunnel_id}.json"
    assert credentials.exists(), out
    add_zone(account, zone_of(hostname))  # adding a zone the account has is a no-op
    account.cli("tunnel", "route", "dns", name, hostname)
    return Tunnel(account, name, tunnel_id, credentials, hostname)


def start_connector(
    processes: Processes,
    tunnel: Tunnel,
    config: Path,
    *,
    name: str = "connector",
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
    wait: int = 1,
) -> Proc:
    """`adit tunnel --config CONFIG run NAME` as the tunnel's owner; waits for registrations."""
    proc = processes.start(
        name,
        [
            *adit_command(),
            "tunnel",
            "--config",
            str(config),
            "run",
            "--metrics",
            "127.0.0.1:0",
            "--grace-period",
            "10s",
            *(extra or []),
            tunnel.name,
        ],
        env={"HOME": str(tunnel.account.home), **(env or {})},
    )
    if wait:
        proc.wait_for_log(r"Registered tunnel connection", count=wait)
        # The supervisor's own start-up lines (connector ID, initial protocol, metrics server)
        # may come after the prestarted worker 0 registered: the metrics line is the last.
        proc.wait_for_log(r"Starting metrics server on ")
    return proc


def write_config(path: Path, hostname: str, rules: list[dict[str, object]]) -> Path:
    """A config.yml with ``rules`` for ``hostname`` and a 404 catch-all."""
    import yaml

    ingress = [{"hostname": hostname, **rule} for rule in rules]
    ingress.append({"service": "http_status:404"})
    path.write_text(yaml.safe_dump({"ingress": ingress}))
    return path


# --- origins ---------------------------------------------------------------------------------


def pattern_bytes(size: int) -> bytes:
    """Deterministic, incompressible-looking test bytes."""
    import hashlib

    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(counter.to_bytes(8, "big")).digest() * 64
        counter += 1
    return bytes(out[:size])


@dataclass
class Origin:
    """A threaded HTTP/1.1 origin on 127.0.0.1 with test routes."""

    port: int
    release_slow: threading.Event
    accepted: list[int]
    seen_headers: list[list[tuple[str, str]]]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# --- eyeball side ------------------------------------------------------------------------------


@dataclass
class Reply:
    """A response as an eyeball saw it, header names exactly as sent."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)


def request(
    edge: Edge,
    host: str,
    method: str = "GET",
    path: str = "/",
    body: bytes | None = None,
    headers: list[tuple[str, str]] | None = None,
    timeout: float = 30.0,
) -> Reply:
    """One request to the edge's public listener with ``Host: host``."""
    import http.client

    address, port = edge.http.rsplit(":", 1)
    conn = http.client.HTTPConnection(address, int(port), timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        for name, value in headers or []:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        data = response.read()
        return Reply(response.status, list(response.getheaders()), data)
    finally:
        conn.close()
