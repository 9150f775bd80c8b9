"""The public HTTPS path next to nginx terminating TLS for the same origin, in one run.

Starts the origin (nginx, as the bench does), ``adit edge`` with ``--https-listen`` and adit's
connector for ``bench.example.test``, and a second nginx that terminates TLS (the same Mozilla
"intermediate" settings, an ECDSA P-256 certificate like the edge CA's leaves, HTTP/2 and
HTTP/1.1, keep-alive to the origin) in front of the same origin. h2load drives each, one after
the other:

* ``h1``: HTTP/1.1 over TLS, keep-alive (``--h1``, 10 connections);
* ``h2``: HTTP/2, 10 connections of 10 streams each;
* ``handshake``: a new TLS connection per request (HTTP/1.1, rounds of 50 connections making
  one request each).

For each: requests/s and CPU per request of the TLS-terminating process (the edge, without the
connector, whose CPU is given apart; nginx's master and workers). The goal: on keep-alive
connections the edge costs at most 2x nginx's CPU per request. Loopback only, bounded in
requests; never part of the test suite. Usage:
``python loadtests/public_tls_bench.py [--requests N]`` (needs nginx and h2load:
Debian ``nginx-light nghttp2-client``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from processes import BenchError, Processes, free_port, wait_port
from services import (
    ADIT,
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
worker_processes 1;
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


class HttpsEdge(Edge):
    """The bench's edge with a public HTTPS listener too."""

    https_port: int = 0

    def start(self) -> float:
        ready = self.state.parent / "edge-ready.json"
        ready.unlink(missing_ok=True)
        argv = [ADIT, "edge", "--state-dir", str(self.state), "--location", "bench"]
        for port in self.tunnel_ports:
            argv += ["--tunnel-listen", f"127.0.0.1:{port}"]
        argv += ["--http-listen", f"127.0.0.1:{self.http_port}"]
        argv += ["--https-listen", f"127.0.0.1:{self.https_port}"]
        argv += ["--api-listen", f"127.0.0.1:{self.api_port}", "--ready-file", str(ready)]
        argv += ["--max-connections-per-ip", "100000"]
        self.generation += 1
        self.service = self.processes.start(f"edge-{self.generation}", argv)
        deadline = time.monotonic() + 20
        while not ready.exists():
            if self.service.popen.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"edge did not start:\n{self.service.text()}")
            time.sleep(0.05)
        return time.monotonic()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of ``pids`` so far (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / tick


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

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def us_per_request(self) -> float:
        return self.cpu / self.requests * 1e6


def h2load(port: int, args: list[str]) -> int:
    """Run h2load at ``https://HOSTNAME:port/1k.bin``; the requests that succeeded."""
    done = subprocess.run(
        [
            "h2load",
            *args,
            "--connect-to",
            f"127.0.0.1:{port}",
            f"https://{HOSTNAME}:{port}{SMALL_PATH}",
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
    before, before_c, start = cpu_seconds(pids), cpu_seconds(connector), time.monotonic()
    succeeded = 0
    if mode == "h1":
        succeeded = h2load(port, ["--h1", "-n", str(requests), "-c", "10"])
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
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000, help="per keep-alive run")
    parser.add_argument("--handshakes", type=int, default=1_000, help="new connections")
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy the edge during each of its runs (collapsed stacks into this folder;"
        " the CPU figures then include py-spy's sampling cost)",
    )
    options = parser.parse_args()
    if options.profile is not None:
        options.profile.mkdir(parents=True, exist_ok=True)
    for tool in ("h2load", "openssl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install nghttp2-client openssl")
    tmp = Path(tempfile.mkdtemp(prefix="adit-tls-bench-"))
    processes = Processes(tmp)
    try:
        origin = start_origin(processes, tmp, 1024 * 1024)
        edge = HttpsEdge(processes, tmp / "edge-state", (free_port(),), free_port(), free_port())
        edge.https_port = free_port()
        edge.start()
        tunnel = create_tunnel(edge, tmp)
        config = write_ingress(tmp / "config.yml", tunnel, origin)
        connector = start_adit(
            processes, tunnel, config, workers=1, ha=1, name="adit", protocol="http2"
        )
        connector.wait_log("Registered tunnel connection")
        key, cert = tmp / "tls.key", tmp / "tls.pem"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-days",
                "2",
                "-subj",
                f"/CN={HOSTNAME}",
                "-addext",
                f"subjectAltName=DNS:{HOSTNAME}",
            ],
            check=True,
            capture_output=True,
        )
        nginx_port = free_port()
        conf = tmp / "tls-nginx.conf"
        conf.write_text(
            _TLS_NGINX.format(
                user="user root;\n" if os.geteuid() == 0 else "",
                tmp=tmp,
                origin=origin.port,
                port=nginx_port,
                cert=cert,
                key=key,
                ciphers=INTERMEDIATE_CIPHERS,
            )
        )
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
        figures = []
        for mode in ("h1", "h2", "handshake"):
            count = options.handshakes if mode == "handshake" else options.requests
            # Warm up, then measure each side in turn.
            h2load(edge.https_port, ["--h1", "-n", "200", "-c", "2"])
            h2load(nginx_port, ["--h1", "-n", "200", "-c", "2"])
            figures.append(
                measure(
                    "adit edge",
                    edge.https_port,
                    edge_pids,
                    connector_pids,
                    mode,
                    count,
                    options.profile,
                )
            )
            figures.append(measure("nginx", nginx_port, nginx_pids, [], mode, count))
        head = ("target", "mode", "requests", "req/s", "CPU us/req", "connector us/req")
        print(f"{head[0]:10} {head[1]:10} {head[2]:>8} {head[3]:>8} {head[4]:>11} {head[5]:>17}")
        for f in figures:
            connector_us = f"{f.connector_cpu / f.requests * 1e6:.0f}" if f.connector_cpu else "-"
            print(
                f"{f.target:10} {f.mode:10} {f.requests:8d} {f.rps:8.0f}"
                f" {f.us_per_request:11.0f} {connector_us:>17}"
            )
        by = {(f.target, f.mode): f for f in figures}
        for mode in ("h1", "h2", "handshake"):
            ratio = by[("adit edge", mode)].us_per_request / by[("nginx", mode)].us_per_request
            goal = " (goal <= 2.0)" if mode != "handshake" else ""
            print(f"edge / nginx CPU per request, {mode}: {ratio:.2f}{goal}")
    finally:
        processes.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
