"""Instructions per request, counted by valgrind's callgrind: figures that hold still on a
shared machine.

CPU seconds per request move ±10–20 % from one run to the next on a 2-CPU machine shared with
other work, even with everything else held still (``./run bench``'s ``access_pairs``: one
edge, one connector, the variants in turn). callgrind counts the instructions a process
executes in user space: the same code and inputs give the same count whatever else the
machine is doing. It does not see the kernel's side of the system calls; ``access_pairs``
counts those for the edge (read and write calls per request from ``/proc/PID/io``) and finds
them equal for the variants compared, so the counts compare what differs.

``--compare access`` (issue 18's goal: the policy check and JWT minting add at most 10 % of the
edge's CPU per request) runs the bench's Access set-up (``access_setup.py``) with the edge under
callgrind and adit's connector (one worker, one connection) as usual, and counts the edge for:

* ``plain``: the hostname without Access, no cookie;
* ``cookie``: the same, with the Access hostname's cookie (the same request bytes as
  ``access``);
* ``access``: the Access hostname with its valid ``CF_Authorization`` cookie.

``--compare tls`` (issue 17's goal, read both ways as ``public_tls_bench.py`` does) adds the
edge's public HTTPS listener and a TLS-terminating nginx (``public_tls_bench.py``'s, as one
process with no master) in front of the same origin, also under callgrind, and counts each
over HTTPS (HTTP/1.1 and HTTP/2, one stream at a time) and over plain HTTP: (a) edge ÷ nginx
over HTTPS, (b) what TLS adds to each (HTTPS less plain HTTP, HTTP/1.1), edge ÷ nginx.

Each variant's ``--requests`` small GETs are counted between a zero and a dump of its
process's counters (``callgrind_control``), less what that process executes idle for as long
(its timers: the edge's liveness pings and deadline sweep), measured first. Every variant runs
at each ``--connections`` count (keep-alive connections, one request at a time on each, h2load
``--h1``): 1 is an isolated request, more lets a process take several in one loop turn, as
under load. Rounds rotate the order. Loopback only, bounded in requests; never part of the
test suite. Usage: ``.venv/bin/python loadtests/instructions.py [--compare access|tls]
[--requests N] [--rounds R] [--out DIR]`` (needs valgrind, h2load and nginx: Debian
``valgrind nghttp2-client nginx-light``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import access_setup
from processes import BenchError, Processes, free_port
from public_tls_bench import tls_nginx_conf
from services import (
    ACCESS_HOSTNAME,
    HOSTNAME,
    SMALL_PATH,
    Edge,
    create_tunnel,
    start_adit,
    start_origin,
    write_ingress,
)

#: Requests each variant gets before the first count (imports, caches, the allow remembered).
WARM_UP = 300


def _callgrind(out: Path) -> tuple[str, ...]:
    # Counting starts at once (zeroed before each measure); no per-instruction detail is kept.
    return (
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}/callgrind.%p",
        "--dump-instr=no",
        "--compress-strings=no",
    )


def _control(pid: int, *args: str) -> None:
    subprocess.run(
        ["callgrind_control", *args, str(pid)],
        check=True,
        capture_output=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def _dumped(out: Path, pid: int, before: set[Path], keep: Path | None = None) -> int:
    """The instructions in the dump that appeared since ``before`` (callgrind writes it
    before callgrind_control returns; the wait covers a slow file system)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        fresh = sorted(set(out.glob(f"callgrind.{pid}.*")) - before)
        for dump in fresh:
            match = re.search(r"^summary:\s+(\d+)", dump.read_text(), re.MULTILINE)
            if match:
                if keep is not None:
                    dump.rename(keep)
                else:
                    dump.unlink()
                return int(match.group(1))
        time.sleep(0.1)
    raise BenchError(f"no callgrind dump from {pid} in {out}")


class Counter:
    """Zero, run, dump: one process's instructions over one stretch of work, less what it
    executes idle for as long (:meth:`calibrate`)."""

    def __init__(self, pid: int, out: Path, keep: Path | None = None) -> None:
        self.pid = pid
        self.out = out
        #: Keep each dump here, named for its measure (for callgrind_annotate).
        self.keep = keep
        self.idle_rate = 0.0

    def calibrate(self, seconds: float) -> None:
        idle, spent = self.measure(lambda: time.sleep(seconds))
        self.idle_rate = idle / spent

    def measure(self, work: Callable[[], None], name: str = "") -> tuple[int, float]:
        """The instructions and seconds of ``work()``."""
        before = set(self.out.glob(f"callgrind.{self.pid}.*"))
        _control(self.pid, "--zero")
        started = time.monotonic()
        work()
        seconds = time.monotonic() - started
        _control(self.pid, "--dump")
        kept = self.keep / f"{name}.callgrind" if self.keep is not None and name else None
        return _dumped(self.out, self.pid, before, kept), seconds

    def per_request(self, work: Callable[[], None], requests: int, name: str) -> float:
        counted, seconds = self.measure(work, name)
        return (counted - self.idle_rate * seconds) / requests


def _h2load(
    url: str,
    headers: list[str],
    requests: int,
    connections: int,
    connect_to: str | None = None,
    http2: bool = False,
) -> None:
    argv = ["h2load", *(() if http2 else ("--h1",)), f"-n{requests}", f"-c{connections}", "-m1"]
    for header in headers:
        argv += ["-H", header]
    if connect_to is not None:
        argv += ["--connect-to", connect_to]
    result = subprocess.run(
        [*argv, url],
        capture_output=True,
        text=True,
        timeout=60 + requests,  # ~5-20 ms a request under valgrind
        check=False,
        stdin=subprocess.DEVNULL,
    )
    done = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored", result.stdout)
    codes = re.search(r"status codes: (\d+) 2xx", result.stdout)
    if (
        result.returncode != 0
        or done is None
        or int(done.group(1)) != requests
        or codes is None
        or int(codes.group(1)) != requests
    ):
        raise BenchError(f"h2load {url} {headers}: {result.stdout[-800:]}{result.stderr[-300:]}")


@dataclass(frozen=True)
class Variant:
    """One kind of request, sent to one process whose instructions are counted."""

    name: str
    counter: Counter
    url: str
    headers: tuple[str, ...] = ()
    connect_to: str | None = None
    #: HTTP/2 (over TLS, ALPN h2) instead of HTTP/1.1.
    http2: bool = False

    def send(self, requests: int, connections: int) -> None:
        _h2load(self.url, list(self.headers), requests, connections, self.connect_to, self.http2)


#: A figure of one round from its variants' instructions per request, e.g. access ÷ cookie.
Ratio = tuple[str, Callable[[dict[str, float]], float]]


def measure(
    variants: list[Variant], ratios: list[Ratio], options: argparse.Namespace
) -> dict[str, object]:
    """Warm every variant up, count each process idle, then ``options.rounds`` rounds of
    every variant at each connection count (the order rotated each round); the medians and
    spreads of the variants and of ``ratios``."""
    for variant in variants:
        print(f"warming up {variant.name}", file=sys.stderr, flush=True)
        variant.send(WARM_UP, max(options.connections))
    for counter in {id(v.counter): v.counter for v in variants}.values():
        counter.calibrate(options.idle_seconds)
    runs: dict[int, list[dict[str, float]]] = {c: [] for c in options.connections}
    for round_ in range(options.rounds):
        turn = round_ % len(variants)
        order = variants[turn:] + variants[:turn]
        for connections in options.connections:
            got: dict[str, float] = {}
            for variant in order:
                got[variant.name] = spent = variant.counter.per_request(
                    lambda v=variant, c=connections: v.send(options.requests, c),
                    options.requests,
                    f"r{round_ + 1}-c{connections}-{variant.name}",
                )
                print(
                    f"round {round_ + 1} c{connections} {variant.name}: {spent:,.0f}"
                    " instructions a request",
                    file=sys.stderr,
                    flush=True,
                )
            runs[connections].append(got)
    figures: dict[str, object] = {
        "requests_each": options.requests,
        "rounds": options.rounds,
        "idle_instructions_per_s": {v.name: round(v.counter.idle_rate) for v in variants},
    }
    for connections, rounds in runs.items():
        row: dict[str, object] = {}
        for variant in variants:
            values = [r[variant.name] for r in rounds]
            row[variant.name] = round(statistics.median(values))
            row[f"{variant.name} spread"] = [round(min(values)), round(max(values))]
        for label, ratio in ratios:
            values = [ratio(r) for r in rounds]
            row[label] = round(statistics.median(values), 4)
            row[f"{label} rounds"] = [round(v, 4) for v in values]
        figures[f"c{connections}"] = row
    return figures


def _edge(
    processes: Processes, tmp: Path, dumps: Path, keep: Path | None, https: bool = False
) -> tuple[Edge, Counter]:
    edge = Edge(
        processes,
        tmp / "edge-state",
        (free_port(),),
        free_port(),
        free_port(),
        prefix=_callgrind(dumps),
        start_timeout=600,
        https_port=free_port() if https else None,
    )
    print("starting the edge under callgrind (a minute or so)", file=sys.stderr, flush=True)
    edge.start()
    assert edge.service is not None
    return edge, Counter(edge.service.pid, dumps, keep)


def _wait_routed(variant: Variant) -> None:
    deadline = time.monotonic() + 300
    while True:
        try:
            variant.send(1, 1)
            return
        except BenchError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def compare_access(
    options: argparse.Namespace, tmp: Path, processes: Processes, dumps: Path
) -> dict[str, object]:
    """Issue 18's goal: plain, cookie and Access, all counted at the edge."""
    origin = start_origin(processes, tmp, 2**20)
    edge, counter = _edge(processes, tmp, dumps, options.keep_dumps)
    tunnel = create_tunnel(edge, tmp)
    config = write_ingress(tmp / "config.yml", tunnel, origin)
    cookie = f"Cookie: CF_Authorization={access_setup.protect(edge, tunnel)}"
    start_adit(processes, tunnel, config, workers=1, ha=1, name="adit", protocol="http2")
    url = f"http://127.0.0.1:{edge.http_port}{SMALL_PATH}"
    variants = [
        Variant("plain", counter, url, (f":authority: {HOSTNAME}",)),
        Variant("cookie", counter, url, (f":authority: {HOSTNAME}", cookie)),
        Variant("access", counter, url, (f":authority: {ACCESS_HOSTNAME}", cookie)),
    ]
    _wait_routed(variants[0])
    ratios: list[Ratio] = [
        ("access ÷ cookie (goal ≤ 1.10)", lambda r: r["access"] / r["cookie"]),
        ("access ÷ plain", lambda r: r["access"] / r["plain"]),
    ]
    return measure(variants, ratios, options)


def compare_tls(
    options: argparse.Namespace, tmp: Path, processes: Processes, dumps: Path
) -> dict[str, object]:
    """Issue 17's goal read both ways: the edge and a TLS-terminating nginx (one process,
    also under callgrind) in front of the same origin, each over HTTPS and plain HTTP."""
    origin = start_origin(processes, tmp, 2**20)
    edge, edge_counter = _edge(processes, tmp, dumps, options.keep_dumps, https=True)
    tunnel = create_tunnel(edge, tmp)
    config = write_ingress(tmp / "config.yml", tunnel, origin)
    start_adit(processes, tunnel, config, workers=1, ha=1, name="adit", protocol="http2")
    port, plain_port = free_port(), free_port()
    conf = tls_nginx_conf(tmp, origin.port, port, plain_port, single_process=True)
    nginx_binary = shutil.which("nginx") or "/usr/sbin/nginx"
    nginx = processes.start(
        "tls-nginx", [*_callgrind(dumps), nginx_binary, "-c", str(conf), "-p", str(tmp)]
    )
    nginx_counter = Counter(nginx.pid, dumps, options.keep_dumps)
    assert edge.https_port is not None
    https = f"https://{HOSTNAME}:{{port}}{SMALL_PATH}"
    http = f"http://{HOSTNAME}:{{port}}{SMALL_PATH}"
    variants = [
        Variant(
            "edge https",
            edge_counter,
            https.format(port=edge.https_port),
            connect_to=f"127.0.0.1:{edge.https_port}",
        ),
        Variant(
            "edge http",
            edge_counter,
            http.format(port=edge.http_port),
            connect_to=f"127.0.0.1:{edge.http_port}",
        ),
        Variant(
            "nginx https", nginx_counter, https.format(port=port), connect_to=f"127.0.0.1:{port}"
        ),
        Variant(
            "nginx http",
            nginx_counter,
            http.format(port=plain_port),
            connect_to=f"127.0.0.1:{plain_port}",
        ),
    ]
    variants += [
        Variant(
            "edge h2",
            edge_counter,
            https.format(port=edge.https_port),
            connect_to=f"127.0.0.1:{edge.https_port}",
            http2=True,
        ),
        Variant(
            "nginx h2",
            nginx_counter,
            https.format(port=port),
            connect_to=f"127.0.0.1:{port}",
            http2=True,
        ),
    ]
    for variant in (variants[0], variants[2]):
        _wait_routed(variant)
    ratios: list[Ratio] = [
        ("(a) edge https ÷ nginx https", lambda r: r["edge https"] / r["nginx https"]),
        ("(a) edge h2 ÷ nginx h2", lambda r: r["edge h2"] / r["nginx h2"]),
        (
            "(b) TLS: edge (https − http) ÷ nginx (https − http)",
            lambda r: (r["edge https"] - r["edge http"]) / (r["nginx https"] - r["nginx http"]),
        ),
    ]
    return measure(variants, ratios, options)


COMPARISONS = {"access": compare_access, "tls": compare_tls}


def report(figures: dict[str, object], options: argparse.Namespace) -> str:
    """results.md: per connection count, each variant's and each ratio's median and spread."""
    idle = figures["idle_instructions_per_s"]
    assert isinstance(idle, dict)
    lines = [
        f"# Instructions per request under callgrind (instructions.py --compare {options.compare})",
        "",
        f"{figures['requests_each']} requests per variant and round, {figures['rounds']}"
        " rounds; medians (spread: the rounds' lowest–highest). Idle instructions/s,"
        " subtracted: " + ", ".join(f"{k} {v:,}" for k, v in idle.items()) + ".",
        "",
        "| connections | figure | median | spread |",
        "|---|---|---|---|",
    ]
    for c in options.connections:
        row = figures[f"c{c}"]
        assert isinstance(row, dict)
        for key, value in row.items():
            if key.endswith((" spread", " rounds")):
                continue
            spread = row.get(f"{key} spread") or row.get(f"{key} rounds")
            assert isinstance(spread, list)
            if isinstance(value, float):
                cells = f"{value:.3f} | {min(spread):.3f}–{max(spread):.3f}"
            else:
                cells = f"{value:,} | {min(spread):,}–{max(spread):,}"
            lines.append(f"| {c} | {key} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare", choices=sorted(COMPARISONS), default="access")
    parser.add_argument("--requests", type=int, default=2000, help="per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--connections", default="1,16", help="comma-separated keep-alive connection counts"
    )
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, help="write results.md and results.json here")
    parser.add_argument(
        "--keep-dumps",
        type=Path,
        help="keep each measure's callgrind dump in this folder (for callgrind_annotate)",
    )
    options = parser.parse_args()
    if options.keep_dumps is not None:
        options.keep_dumps.mkdir(parents=True, exist_ok=True)
    options.connections = [int(c) for c in options.connections.split(",") if c]
    for tool in ("valgrind", "callgrind_control", "h2load", "openssl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install valgrind nghttp2-client openssl")
    tmp = Path(tempfile.mkdtemp(prefix="adit-instructions-"))
    dumps = tmp / "callgrind"
    dumps.mkdir()
    processes = Processes(tmp)
    try:
        figures = COMPARISONS[options.compare](options, tmp, processes, dumps)
    finally:
        processes.cleanup()
    figures["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = report(figures, options)
    print(text)
    if options.out is not None:
        options.out.mkdir(parents=True, exist_ok=True)
        (options.out / "results.md").write_text(text)
        (options.out / "results.json").write_text(json.dumps(figures, indent=2) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
