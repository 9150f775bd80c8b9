"""Load drivers: wrk, h2load, curl and a WebSocket client, each returning plain figures.

Every driver is bounded in time; a failure is recorded as an ``error`` figure rather than
ending the run, so one broken path still leaves the others' numbers.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import uvloop
from services import BIG_PATH, SMALL_PATH, UPLOAD_PATH, WS_PATH
from websockets.asyncio.client import ClientConnection, connect

Figures = dict[str, float | int | str | None]


@dataclass(frozen=True)
class Target:
    """Where one path is reached by eyeballs: base ``host:port`` of each origin."""

    name: str
    static: str
    sink: str
    ws: str
    host_header: str | None = None
    #: More request headers ("Name: value"), sent by every driver: an Access cookie.
    headers: tuple[str, ...] = ()

    def header_args(self, flag: str = "-H", name: str = "Host") -> list[str]:
        host = [flag, f"{name}: {self.host_header}"] if self.host_header else []
        return host + [arg for header in self.headers for arg in (flag, header)]


#: curl's exit code when ``--max-time`` ran out (its ``-w`` figures are still written).
CURL_TIMED_OUT = 28


def _run(argv: list[str], timeout: float, ok: tuple[int, ...] = (0,)) -> str:
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
    )
    if result.returncode not in ok:
        raise RuntimeError(f"{argv[0]} exited {result.returncode}: {result.stderr[-500:]}")
    return result.stdout


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def small_gets(target: Target, *, seconds: int, connections: int = 64, threads: int = 2) -> Figures:
    """wrk: closed loop, ``connections`` keep-alive connections, 1 KiB GETs; requests/s."""
    out = _run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            *target.header_args(),
            f"http://{target.static}{SMALL_PATH}",
        ],
        timeout=seconds + 30,
    )
    figures: Figures = {}
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    figures["rps"] = float(match.group(1)) if match else None
    match = re.search(r"(\d+) requests in", out)
    figures["requests"] = int(match.group(1)) if match else None
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    figures["non_2xx"] = int(match.group(1)) if match else 0
    match = re.search(r"Socket errors: (.*)", out)
    figures["socket_errors"] = match.group(1).strip() if match else ""
    for pct in ("50", "99"):
        match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        if match:
            figures[f"sat_p{pct}_ms"] = round(float(match.group(1)) * _UNITS[match.group(2)], 3)
    return figures


def latency(
    target: Target, *, rate: int, clients: int, seconds: int, log_file: Path
) -> tuple[Figures, list[float]]:
    """h2load --h1 at a fixed request rate (``rate`` total), percentiles from per-request logs.

    ``clients`` separate h2load processes, one connection each, at ``rate/clients`` per second,
    started ``1/rate`` s apart: requests arrive evenly spread. (One h2load with ``-c`` clients
    starts all their schedules at once, so requests came in bursts of ``clients`` and every
    path's figure measured the burst, not the rate.) Each connection sends at most one request
    at a time; the rate is far below saturation, so the schedule is kept (``late`` counts the
    exceptions).
    """
    per_client = max(1, rate // clients)
    logs = [log_file.with_suffix(f".{index}.log") for index in range(clients)]
    running = []
    for index, client_log in enumerate(logs):
        client_log.unlink(missing_ok=True)
        if index:
            time.sleep(1.0 / (per_client * clients))
        running.append(
            subprocess.Popen(
                [
                    "h2load",
                    "--h1",
                    "-c1",
                    "-m1",
                    f"--rps={per_client}",
                    f"-D{seconds}",
                    "--warm-up-time=1",
                    f"--log-file={client_log}",
                    # h2load sends its own Host; a second one would be a 400 at the edge.
                    *target.header_args("-H", ":authority"),
                    f"http://{target.static}{SMALL_PATH}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
    failed = []
    for process in running:
        try:
            _, stderr = process.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
        if process.returncode != 0:
            failed.append(stderr.decode(errors="replace")[-300:])
    if failed:
        raise RuntimeError(f"h2load failed: {failed[0]}")
    lines = [line for client_log in logs for line in client_log.read_text().splitlines()]
    log_file.write_text("\n".join(lines))
    samples: list[float] = []
    errors = 0
    for line in lines:
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        if parts[1] != "200":
            errors += 1
            continue
        samples.append(int(parts[2]) / 1000.0)
    if not samples:
        return {"error": "no successful requests", "errors": errors}, []
    ordered = sorted(samples)
    interval_ms = 1000.0 / per_client

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 3)

    figures: Figures = {
        "rate": per_client * clients,
        "count": len(samples),
        "errors": errors,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "max_ms": round(ordered[-1], 3),
        "mean_ms": round(statistics.fmean(samples), 3),
        "late": sum(1 for s in samples if s > interval_ms),
    }
    return figures, ordered


def _curl_figures(out: str, key: str) -> Figures:
    code, size, seconds = out.split()
    figures: Figures = {"status": int(code), "bytes": int(size), "seconds": float(seconds)}
    figures[key] = round(int(size) / float(seconds) / 1e6, 1) if float(seconds) > 0 else None
    return figures


def download(target: Target, *, expected: int, max_seconds: int) -> Figures:
    """curl -o /dev/null of the big file; MB/s (10^6 bytes). A transfer still going after
    ``max_seconds`` is stopped: its MB/s are those of the bytes moved so far (marked ⚠)."""
    out = _run(
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            str(max_seconds),
            "-w",
            "%{http_code} %{size_download} %{time_total}",
            *target.header_args(),
            f"http://{target.static}{BIG_PATH}",
        ],
        timeout=max_seconds + 10,
        ok=(0, CURL_TIMED_OUT),
    )
    figures = _curl_figures(out, "mbps")
    if figures["bytes"] != expected:
        figures["error"] = f"incomplete: {figures['bytes']} of {expected} bytes"
        if float(figures["seconds"] or 0) >= max_seconds - 1:
            figures["error"] += f" in the {max_seconds} s allowed"
    return figures


def upload(target: Target, file: Path, *, max_seconds: int) -> Figures:
    """curl -T of the big file to the sink (which reads it all, then answers 204); MB/s (of
    the bytes sent so far when ``max_seconds`` ran out, marked ⚠)."""
    out = _run(
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            str(max_seconds),
            "-T",
            str(file),
            "-w",
            "%{http_code} %{size_upload} %{time_total}",
            *target.header_args(),
            f"http://{target.sink}{UPLOAD_PATH}",
        ],
        timeout=max_seconds + 10,
        ok=(0, CURL_TIMED_OUT),
    )
    figures = _curl_figures(out, "mbps")
    expected = file.stat().st_size
    if figures["status"] != 204 or figures["bytes"] != expected:
        figures["error"] = f"status {figures['status']}, {figures['bytes']} of {expected} bytes"
    return figures


def first_ok(target: Target, *, since: float, timeout: float) -> float | None:
    """Seconds from ``since`` (monotonic) until a GET through ``target`` answers 200."""
    deadline = time.monotonic() + timeout
    argv = [
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "--max-time",
        "2",
        "-w",
        "%{http_code}",
        *target.header_args(),
        f"http://{target.static}{SMALL_PATH}",
    ]
    while time.monotonic() < deadline:
        result = subprocess.run(
            argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
        )
        if result.stdout.strip() == "200":
            return round(time.monotonic() - since, 3)
        time.sleep(0.01)
    return None


async def _open_websocket(target: Target) -> ClientConnection:
    host, port = target.ws.rsplit(":", 1)
    authority = target.host_header or target.ws
    return await connect(
        f"ws://{authority}{WS_PATH}",
        host=host,
        port=int(port),
        open_timeout=30,
        ping_interval=None,
        compression=None,
        max_queue=1,
    )


async def _idle_websockets(target: Target, count: int, measure: Callable[[], Figures]) -> Figures:
    sockets: list[ClientConnection] = []
    gate = asyncio.Semaphore(64)

    async def one() -> None:
        async with gate:
            sockets.append(await _open_websocket(target))

    started = time.monotonic()
    figures: Figures = {"requested": count}
    try:
        results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        figures["opened"] = len(sockets)
        figures["open_seconds"] = round(time.monotonic() - started, 2)
        if failures:
            figures["error"] = f"{len(failures)} failed, first: {failures[0]!r}"[:300]
        # Every socket really goes end to end: one echo each.
        echoed = 0
        for ws in sockets:
            await ws.send("ping")
            if await asyncio.wait_for(ws.recv(), 10) == "ping":
                echoed += 1
        figures["echoed"] = echoed
        await asyncio.sleep(1.0)  # let allocations settle before measuring
        figures.update(measure())
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return figures


def idle_websockets(target: Target, count: int, measure: Callable[[], Figures]) -> Figures:
    """Open ``count`` WebSockets (echo checked on each), call ``measure`` while they idle."""
    return uvloop.run(asyncio.wait_for(_idle_websockets(target, count, measure), 120))
