"""The public HTTPS path next to nginx terminating TLS for the same origin, in one run.

Starts the origin (nginx, as the bench does), ``adit edge`` with ``--https-listen`` and adit's
connector for ``bench.example.test``, and a second nginx that terminates TLS (the same Mozilla
"intermediate" settings, an ECDSA P-256 certificate like the edge CA's leaves, HTTP/2 and
HTTP/1.1, keep-alive to the origin) in front of the same origin. h2load drives each, one after
the other:

* ``h1``: HTTP/1.1 over TLS, keep-alive (``--h1``, 10 connections);
* ``h2``: HTTP/2, 10 connections of 10 streams each;
* ``handshake``: a new TLS connection per request (HTTP/1.1, rounds of 50 connections making
  one request each);
* ``h1-plain``: HTTP/1.1 keep-alive without TLS (the edge's ``--http-listen``, a plain
  ``listen`` of the same nginx server), so that TLS termination's own cost is the difference.

For each: requests/s and CPU per request of the TLS-terminating process (the edge, without the
connector, whose CPU is given apart; nginx's master and workers), from the scheduler's run
time of every thread (``/proc/PID/task/*/schedstat``: exact, where /proc/PID/stat's ticks
are 10 ms). Issue 17's goal has two readings, both reported in the table of goals:

* (a) the whole edge: its CPU per HTTPS keep-alive request / nginx's (at most 2x);
* (b) TLS termination itself: the edge's CPU per request over HTTPS less over plain HTTP,
  / the same difference for nginx (at most 2x);

and the handshake's cost apart (CPU per request on a new connection less on keep-alive).
``--rounds R`` repeats every mode R times (edge, then nginx, each round), for medians and
their spread on a shared machine; ``--adit-src DIR`` runs adit (edge and connector) from
another checkout's source roots (alternate it with this one's to measure a change). Loopback
only, bounded in requests; never part of the test suite. Usage:
``python loadtests/public_tls_bench.py [--requests N] [--rounds R] [--out DIR]`` (needs
nginx and h2load: Debian ``nginx-light nghttp2-client``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from processes import BenchError, Processes, free_port, wait_port
from services import (
    HOSTNAME,
    SMALL_PATH,
    Edge,
    create_tunnel,
    start_adit,
    start_origin,
    write_ingress,
)

from adit.edge.public_tls import INTERMEDIATE_CIPHERS

_TLS_NGINX = """\
{user}daemon off;
{processes}
error_log {tmp}/tls-nginx-error.log warn;
pid {tmp}/tls-nginx.pid;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/tls-body;
    proxy_temp_path {tmp}/tls-proxy;
    fastcgi_temp_path {tmp}/tls-fastcgi;
    uwsgi_temp_path {tmp}/tls-uwsgi;
    scgi_temp_path {tmp}/tls-scgi;
    upstream origin {{ server 127.0.0.1:{origin}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} ssl http2 backlog=4096;
        listen 127.0.0.1:{plain_port} backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {ciphers};
        ssl_prefer_server_ciphers off;
        ssl_session_tickets on;
        keepalive_requests 10000000;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
}}
"""


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """An ECDSA P-256 key and self-signed certificate for :data:`HOSTNAME` (like the edge
    CA's leaves), for the TLS-terminating nginx."""
    key, cert = tmp / "tls.key", tmp / "tls.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec"),
            *("-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *("-keyout", str(key), "-out", str(cert), "-days", "2"),
            *("-subj", f"/CN={HOSTNAME}", "-addext", f"subjectAltName=DNS:{HOSTNAME}"),
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


def tls_nginx_conf(
    tmp: Path, origin: int, port: int, plain_port: int, *, single_process: bool = False
) -> Path:
    """The TLS-terminating nginx's configuration file (one worker; ``single_process``: no
    master either, so that valgrind sees the one process that serves: instructions.py)."""
    key, cert = self_signed(tmp)
    conf = tmp / "tls-nginx.conf"
    conf.write_text(
        _TLS_NGINX.format(
            user="user root;\n" if os.geteuid() == 0 else "",
            processes="master_process off;\n" if single_process else "worker_processes 1;\n",
            tmp=tmp,
            origin=origin,
            port=port,
            plain_port=plain_port,
            cert=cert,
            key=key,
            ciphers=INTERMEDIATE_CIPHERS,
        )
    )
    return conf


def cpu_seconds(pids: list[int]) -> float:
    """Time on CPU of every thread of ``pids`` so far, from the scheduler (ns, exact: the
    tick-sampled utime and stime of /proc/PID/stat come in 10 ms steps, a third of a
    handshake run's difference)."""
    total = 0
    for pid in pids:
        try:
            for task in os.scandir(f"/proc/{pid}/task"):
                with open(f"{task.path}/schedstat", "rb") as file:
                    total += int(file.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / 1e9


def family(pid: int) -> list[int]:
    """``pid`` and its direct children (nginx's workers, the connector's workers)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                children.append(int(entry.name))
    return [pid, *children]


@dataclass
class Figure:
    target: str
    mode: str
    requests: int
    seconds: float
    cpu: float  # of the TLS-terminating process(es)
    connector_cpu: float
    load: float  # the 1-minute load average when the run began
    round: int = 0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def us_per_request(self) -> float:
        return self.cpu / self.requests * 1e6


def h2load(port: int, args: list[str], scheme: str = "https") -> int:
    """Run h2load at ``SCHEME://HOSTNAME:port/1k.bin``; the requests that succeeded."""
    done = subprocess.run(
        [
            "h2load",
            *args,
            "--connect-to",
            f"127.0.0.1:{port}",
            f"{scheme}://{HOSTNAME}:{port}{SMALL_PATH}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    match = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", done.stdout)
    if done.returncode != 0 or match is None:
        raise BenchError(f"h2load failed: {done.stdout}{done.stderr}")
    return int(match.group(1))


def measure(
    target: str,
    port: int,
    pids: list[int],
    connector: list[int],
    mode: str,
    requests: int,
    profile: Path | None = None,
) -> Figure:
    spy = None
    if profile is not None:
        # py-spy's collapsed stacks of the first process, native frames included (ssl, llhttp).
        spy = subprocess.Popen(
            [
                *("py-spy", "record", "--native", "-r", "200", "-f", "raw"),
                *("-o", str(profile / f"{mode}.txt"), "-p", str(pids[0])),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)
    load = os.getloadavg()[0]
    before, before_c, start = cpu_seconds(pids), cpu_seconds(connector), time.monotonic()
    succeeded = 0
    if mode == "h1":
        succeeded = h2load(port, ["--h1", "-n", str(requests), "-c", "10"])
    elif mode == "h1-plain":
        succeeded = h2load(port, ["--h1", "-n", str(requests), "-c", "10"], "http")
    elif mode == "h2":
        succeeded = h2load(port, ["-n", str(requests), "-c", "10", "-m", "10"])
    else:
        for _ in range(max(1, requests // 50)):
            succeeded += h2load(port, ["--h1", "-n", "50", "-c", "50"])
    seconds = time.monotonic() - start
    if spy is not None:
        spy.send_signal(2)
        spy.wait(timeout=60)
    return Figure(
        target,
        mode,
        succeeded,
        seconds,
        cpu_seconds(pids) - before,
        cpu_seconds(connector) - before_c if connector else 0.0,
        load,
    )


MODES = ("h1", "h1-plain", "h2", "handshake")


def spread(values: list[float]) -> str:
    return f"{min(values):.0f}–{max(values):.0f}" if len(values) > 1 else f"{values[0]:.0f}"


def goals(figures: list[Figure]) -> list[dict[str, object]]:
    """The goal's two readings and the handshake's cost. Each side's figure is the median
    over the rounds of that round's figure (for a difference, of the round's difference: its
    two runs are minutes apart, where two rounds may not be); the ratio is of those medians,
    and each round's own ratio shows the spread."""
    rounds: dict[int, dict[tuple[str, str], float]] = {}
    for f in figures:
        rounds.setdefault(f.round, {})[(f.target, f.mode)] = f.us_per_request
    rows: list[dict[str, object]] = []

    def row(name: str, goal: float | None, mode: str, minus: str | None) -> None:
        edges, nginxes = [], []
        for r in rounds.values():
            keys = [(t, m) for t in ("adit edge", "nginx") for m in (mode, minus) if m]
            if not all(key in r for key in keys):
                continue
            edge, nginx = r[("adit edge", mode)], r[("nginx", mode)]
            if minus is not None:
                edge -= r[("adit edge", minus)]
                nginx -= r[("nginx", minus)]
            edges.append(edge)
            nginxes.append(nginx)
        if not edges:
            return
        edge, nginx = statistics.median(edges), statistics.median(nginxes)
        ratio = edge / nginx if nginx > 0 else float("inf")
        rows.append(
            {
                "goal": name.format(mode=mode),
                "edge_us": round(edge, 1),
                "nginx_us": round(nginx, 1),
                "ratio": round(ratio, 2),
                "ratio_per_round": [
                    round(e / n, 2) if n > 0 else None for e, n in zip(edges, nginxes, strict=True)
                ],
                "target": goal,
                "met": None if goal is None else ratio <= goal,
            }
        )

    row("(a) whole edge, HTTPS keep-alive {mode}", 2.0, "h1", None)
    row("(a) whole edge, HTTPS keep-alive {mode}", 2.0, "h2", None)
    row("(b) TLS termination: HTTPS less plain HTTP, keep-alive {mode}", 2.0, "h1", "h1-plain")
    row("handshake: new TLS connection less keep-alive, HTTP/1.1", None, "handshake", "h1")
    return rows


def report(figures: list[Figure], loads: tuple[float, float], note: str) -> str:
    """The run as markdown: every figure's median and spread, then the table of goals."""
    lines = [
        "# The public HTTPS path next to nginx (public_tls_bench.py)",
        "",
        f"{note}Load average (1 min) {loads[0]:.1f} at the start, {loads[1]:.1f} at the end;"
        f" {len({f.round for f in figures})} round(s), medians"
        " (spread: the rounds' lowest–highest).",
        "",
        "| target | mode | req/s | CPU µs/req | spread | connector µs/req | load |",
        "|---|---|---|---|---|---|---|",
    ]
    for target in ("adit edge", "nginx"):
        for mode in MODES:
            runs = [f for f in figures if f.target == target and f.mode == mode]
            if not runs:
                continue
            us = [f.us_per_request for f in runs]
            connector = [f.connector_cpu / f.requests * 1e6 for f in runs if f.connector_cpu]
            lines.append(
                f"| {target} | {mode} | {statistics.median(f.rps for f in runs):.0f}"
                f" | {statistics.median(us):.0f} | {spread(us)}"
                f" | {f'{statistics.median(connector):.0f}' if connector else '-'}"
                f" | {min(f.load for f in runs):.1f}–{max(f.load for f in runs):.1f} |"
            )
    lines += [
        "",
        "## Goals (issue 17: TLS termination at most 2x nginx's CPU per keep-alive request)",
        "",
        "| reading | edge µs/req | nginx µs/req | ratio | per round | goal | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in goals(figures):
        target = "-" if g["target"] is None else f"≤ {g['target']}"
        met = "-" if g["met"] is None else ("yes" if g["met"] else "no")
        per_round = ", ".join(
            "-" if v is None else f"{v:.2f}"
            for v in g["ratio_per_round"]  # type: ignore[attr-defined]
        )
        lines.append(
            f"| {g['goal']} | {g['edge_us']:.0f} | {g['nginx_us']:.0f} | {g['ratio']:.2f}"
            f" | {per_round} | {target} | {met} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000, help="per keep-alive run")
    parser.add_argument("--handshakes", type=int, default=1_000, help="new connections")
    parser.add_argument("--rounds", type=int, default=1, help="every mode this many times")
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"a subset of {','.join(MODES)} (the goals need h1 and h1-plain)",
    )
    parser.add_argument(
        "--adit-src",
        type=Path,
        help="run adit (edge and connector) from this checkout's source roots, to alternate"
        " with this one's",
    )
    parser.add_argument("--out", type=Path, help="write results.md and results.json here")
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy the edge during each of its runs (collapsed stacks into this folder;"
        " the CPU figures then include py-spy's sampling cost)",
    )
    options = parser.parse_args()
    if options.adit_src is not None:
        # Every adit process this run starts (edge, CLI, connector) inherits it.
        roots = ("edge", "protocol", "runtime", "supervisor", "workers")
        src = options.adit_src.resolve()
        os.environ["PYTHONPATH"] = os.pathsep.join(str(src / root) for root in roots)
    modes = [m for m in options.modes.split(",") if m]
    if not modes or not set(modes) <= set(MODES):
        parser.error(f"--modes: a comma-separated subset of {','.join(MODES)}")
    if options.profile is not None:
        options.profile.mkdir(parents=True, exist_ok=True)
    for tool in ("h2load", "openssl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install nghttp2-client openssl")
    tmp = Path(tempfile.mkdtemp(prefix="adit-tls-bench-"))
    processes = Processes(tmp)
    try:
        origin = start_origin(processes, tmp, 1024 * 1024)
        edge = Edge(
            processes,
            tmp / "edge-state",
            (free_port(),),
            free_port(),
            free_port(),
            https_port=free_port(),
        )
        edge.start()
        tunnel = create_tunnel(edge, tmp)
        config = write_ingress(tmp / "config.yml", tunnel, origin)
        connector = start_adit(
            processes, tunnel, config, workers=1, ha=1, name="adit", protocol="http2"
        )
        connector.wait_log("Registered tunnel connection")
        nginx_port, nginx_plain_port = free_port(), free_port()
        conf = tls_nginx_conf(tmp, origin.port, nginx_port, nginx_plain_port)
        nginx = processes.start(
            "tls-nginx",
            [shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(conf), "-p", str(tmp)],
        )
        wait_port(nginx_port)
        time.sleep(0.5)
        assert edge.service is not None
        edge_pids = [edge.service.pid]
        connector_pids = family(connector.pid)
        nginx_pids = family(nginx.pid)
        loads = [os.getloadavg()[0], 0.0]
        figures: list[Figure] = []
        for round_ in range(options.rounds):
            for mode in MODES:
                if mode not in modes:
                    continue
                count = options.handshakes if mode == "handshake" else options.requests
                # Warm up, then measure each side in turn.
                assert edge.https_port is not None
                h2load(edge.https_port, ["--h1", "-n", "200", "-c", "2"])
                h2load(nginx_port, ["--h1", "-n", "200", "-c", "2"])
                edge_port, nginx_at = edge.https_port, nginx_port
                if mode == "h1-plain":
                    edge_port, nginx_at = edge.http_port, nginx_plain_port
                figures.append(
                    measure(
                        "adit edge",
                        edge_port,
                        edge_pids,
                        connector_pids,
                        mode,
                        count,
                        options.profile,
                    )
                )
                figures.append(measure("nginx", nginx_at, nginx_pids, [], mode, count))
                figures[-2].round = figures[-1].round = round_
        loads[1] = os.getloadavg()[0]
        head = ("target", "mode", "requests", "req/s", "CPU us/req", "connector us/req", "load")
        print(
            f"{head[0]:10} {head[1]:10} {head[2]:>8} {head[3]:>8} {head[4]:>11}"
            f" {head[5]:>17} {head[6]:>5}"
        )
        for f in figures:
            connector_us = f"{f.connector_cpu / f.requests * 1e6:.0f}" if f.connector_cpu else "-"
            print(
                f"{f.target:10} {f.mode:10} {f.requests:8d} {f.rps:8.0f}"
                f" {f.us_per_request:11.0f} {connector_us:>17} {f.load:5.1f}"
            )
        note = f"adit from {options.adit_src}. " if options.adit_src is not None else ""
        text = report(figures, (loads[0], loads[1]), note)
        print()
        print(text)
        if options.out is not None:
            options.out.mkdir(parents=True, exist_ok=True)
            (options.out / "results.md").write_text(text)
            data = {
                "adit_src": str(options.adit_src) if options.adit_src else None,
                "load_average": loads,
                "runs": [
                    {
                        "target": f.target,
                        "mode": f.mode,
                        "requests": f.requests,
                        "seconds": round(f.seconds, 3),
                        "cpu_us_per_request": round(f.us_per_request, 1),
                        "connector_us_per_request": round(f.connector_cpu / f.requests * 1e6, 1)
                        if f.connector_cpu
                        else None,
                        "load": f.load,
                        "round": f.round,
                    }
                    for f in figures
                ],
                "goals": goals(figures),
            }
            (options.out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    finally:
        processes.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
