"""The edge's instructions per request, counted by valgrind's callgrind: a figure that holds
still on a shared machine.

CPU seconds per request move ±10–20 % from one run to the next on a 2-CPU machine shared with
other work, even with everything else held still (``./run bench``'s ``access_pairs``: one
edge, one connector, the variants in turn). callgrind counts the instructions the edge
executes in user space: the same code and inputs give the same count whatever else the machine
is doing. It does not see the kernel's side of the edge's system calls; ``access_pairs``
counts those (read and write calls per request from ``/proc/PID/io``) and finds them equal
for the variants compared here, so the counts compare what differs.

The ``access`` comparison (issue 18's goal: the policy check and JWT minting add at most 10 %
of the edge's CPU per request) runs the bench's Access set-up (``access_setup.py``) with the
edge under callgrind and adit's connector (one worker, one connection) as usual, and sends
``--requests`` small GETs per variant, in turn:

* ``plain``: the hostname without Access, no cookie;
* ``cookie``: the same, with the Access hostname's cookie (the same request bytes as
  ``access``);
* ``access``: the Access hostname with its valid ``CF_Authorization`` cookie.

Each round zeroes the edge's counters before a variant's requests and dumps them after
(``callgrind_control``), less what the edge does idle for as long (its timers: liveness pings,
the deadline sweep), measured at the start. Every variant is run at each ``--connections``
(keep-alive connections, one request at a time on each, h2load ``--h1``): 1 is an isolated
request, more lets the edge take several in one loop turn as under load. Rounds rotate the
order. Loopback only, bounded in requests; never part of the test suite. Usage:
``.venv/bin/python loadtests/instructions.py [--requests N] [--rounds R] [--out DIR]``
(needs valgrind, h2load and nginx: Debian ``valgrind nghttp2-client nginx-light``).
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import access_setup
from processes import BenchError, Processes, free_port
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

#: The variants of the ``access`` comparison, in the order of the first round.
VARIANTS = ("plain", "cookie", "access")
#: Requests each variant gets before the first count (imports, caches, the allow remembered).
WARM_UP = 300
#: The goal: Access's instructions per request over the same request bytes without Access.
GOAL = 1.10


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
    before callgrind_control returns; a second's wait covers a slow file system)."""
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
    """Zero, run, dump: the edge's instructions over one stretch of work."""

    def __init__(self, pid: int, out: Path, keep: Path | None = None) -> None:
        self.pid = pid
        self.out = out
        #: Keep each dump here, named for its measure (for callgrind_annotate).
        self.keep = keep

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


def _h2load(url: str, headers: list[str], requests: int, connections: int) -> None:
    argv = ["h2load", "--h1", f"-n{requests}", f"-c{connections}", "-m1"]
    for header in headers:
        argv += ["-H", header]
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


def run_access(options: argparse.Namespace, tmp: Path, processes: Processes) -> dict[str, object]:
    """The ``access`` comparison; its figures as a dict (also ``results.json``)."""
    dumps = tmp / "callgrind"
    dumps.mkdir()
    origin = start_origin(processes, tmp, 2**20)
    edge = Edge(
        processes,
        tmp / "edge-state",
        (free_port(),),
        free_port(),
        free_port(),
        prefix=_callgrind(dumps),
        start_timeout=600,
    )
    print("starting the edge under callgrind (a minute or so)", file=sys.stderr, flush=True)
    edge.start()
    assert edge.service is not None
    tunnel = create_tunnel(edge, tmp)
    config = write_ingress(tmp / "config.yml", tunnel, origin)
    cookie = f"Cookie: CF_Authorization={access_setup.protect(edge, tunnel)}"
    start_adit(processes, tunnel, config, workers=1, ha=1, name="adit", protocol="http2")
    url = f"http://127.0.0.1:{edge.http_port}{SMALL_PATH}"
    variants = {
        "plain": [f":authority: {HOSTNAME}"],
        "cookie": [f":authority: {HOSTNAME}", cookie],
        "access": [f":authority: {ACCESS_HOSTNAME}", cookie],
    }
    _wait_routed(url, variants["plain"])
    counter = Counter(edge.service.pid, dumps, options.keep_dumps)
    for name, headers in variants.items():
        print(f"warming up {name}", file=sys.stderr, flush=True)
        _h2load(url, headers, WARM_UP, max(options.connections))
    idle, idle_seconds = counter.measure(lambda: time.sleep(options.idle_seconds))
    idle_rate = idle / idle_seconds
    per_request: dict[str, list[float]] = {
        f"{kind}_c{c}": [] for c in options.connections for kind in variants
    }
    kinds = list(variants)
    for round_ in range(options.rounds):
        order = kinds[round_ % 3 :] + kinds[: round_ % 3]
        for connections in options.connections:
            for kind in order:
                headers = variants[kind]

                def work(headers: list[str] = headers, connections: int = connections) -> None:
                    _h2load(url, headers, options.requests, connections)

                counted, seconds = counter.measure(work, f"r{round_ + 1}-c{connections}-{kind}")
                spent = (counted - idle_rate * seconds) / options.requests
                per_request[f"{kind}_c{connections}"].append(spent)
                print(
                    f"round {round_ + 1} c{connections} {kind}: {spent:,.0f} instructions"
                    f" a request ({seconds:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    figures: dict[str, object] = {
        "requests_each": options.requests,
        "rounds": options.rounds,
        "idle_instructions_per_s": round(idle_rate),
    }
    for connections in options.connections:
        runs = {kind: per_request[f"{kind}_c{connections}"] for kind in variants}
        deciding = [a / c for c, a in zip(runs["cookie"], runs["access"], strict=True)]
        whole = [a / p for p, a in zip(runs["plain"], runs["access"], strict=True)]
        figures[f"c{connections}"] = {
            **{f"{kind}_per_req": round(statistics.median(v)) for kind, v in runs.items()},
            **{f"{kind}_spread": [round(min(v)), round(max(v))] for kind, v in runs.items()},
            "access_over_cookie": round(statistics.median(deciding), 4),
            "access_over_cookie_rounds": [round(r, 4) for r in deciding],
            "access_over_plain": round(statistics.median(whole), 4),
            "access_over_plain_rounds": [round(r, 4) for r in whole],
        }
    return figures


def _wait_routed(url: str, headers: list[str]) -> None:
    deadline = time.monotonic() + 300
    while True:
        try:
            _h2load(url, headers, 1, 1)
            return
        except BenchError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def report(figures: dict[str, object], connections: list[int]) -> str:
    """results.md: a table per connection count, and the goal."""
    lines = [
        "# The edge's instructions per request (instructions.py, callgrind)",
        "",
        f"{figures['requests_each']} requests per variant and round, {figures['rounds']}"
        f" rounds, medians (spread: the rounds' lowest–highest); the edge idle:"
        f" {figures['idle_instructions_per_s']:,} instructions/s, subtracted.",
        "",
        "| connections | plain | cookie | access | access ÷ cookie (goal ≤ 1.10)"
        " | access ÷ plain |",
        "|---|---|---|---|---|---|",
    ]
    for c in connections:
        row = figures[f"c{c}"]
        assert isinstance(row, dict)
        cells = []
        for kind in VARIANTS:
            low, high = row[f"{kind}_spread"]
            cells.append(f"{row[f'{kind}_per_req']:,} ({low:,}–{high:,})")
        lines.append(
            f"| {c} | {' | '.join(cells)} | {row['access_over_cookie']:.3f}"
            f" ({min(row['access_over_cookie_rounds']):.3f}–"
            f"{max(row['access_over_cookie_rounds']):.3f})"
            f" | {row['access_over_plain']:.3f} ({min(row['access_over_plain_rounds']):.3f}–"
            f"{max(row['access_over_plain_rounds']):.3f}) |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
    for tool in ("valgrind", "callgrind_control", "h2load", "nginx"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            raise SystemExit(f"{tool} not found: apt-get install valgrind nghttp2-client nginx")
    tmp = Path(tempfile.mkdtemp(prefix="adit-instructions-"))
    processes = Processes(tmp)
    try:
        figures = run_access(options, tmp, processes)
    finally:
        processes.cleanup()
    figures["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = report(figures, options.connections)
    print(text)
    if options.out is not None:
        options.out.mkdir(parents=True, exist_ok=True)
        (options.out / "results.md").write_text(text)
        (options.out / "results.json").write_text(json.dumps(figures, indent=2) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
