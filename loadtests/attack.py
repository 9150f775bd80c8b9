"""A tenant under attack: tunnel A driven at a fixed rate while tunnel B attacks the edge.

Two accounts on one ``adit edge``. Tenant A runs ``adit tunnel run`` in front of nginx and is
driven at a fixed rate (one request every 1/rate s, each alone on a keep-alive connection from a
small pool, so a slow answer is seen as such and never hides behind a queue). Tenant B is the
attacker: a connector that registers with B's real credentials and then floods the tunnel
listener with one kind of HTTP/2 frame at a time, and a visitor that opens slowloris
connections to B's hostname on the public listener. Each attack runs for ``--flood`` seconds
after a quiet window; the report gives, per attack:

* A's p50/p99 and errors over the quiet window before it, over the attack, and from 1 s after
  the flood started to its end (the goal: no error for A, and A's p99 back under 2x its quiet
  value within 1 s of the flood starting);
* how long the edge took to close the abusive connection, from its first flood frame (seen by
  the attacker: EOF or a refused write; the median over the attack, since the attacker dials
  and registers again each time it is closed, for the whole ``--flood`` seconds), or "never";
* the edge's RSS and CPU seconds over the attack.

    .venv/bin/python loadtests/attack.py [--rate 100] [--quiet 4] [--flood 5] [--out DIR]

Loopback only (best inside ``unshare -n``, as ``./run bench`` does); every process is stopped
at the end. Never part of the test suite: it reports figures, it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
from processes import BenchError, Processes, Service
from services import SMALL_PATH, Edge, create_tunnel, start_adit, start_edge, start_origin

from adit.credentials import load_credentials_file
from adit.protocol.http2_frames import FrameType, frame

HERE = Path(__file__).resolve().parent
# The hostile connector is the one the adversarial tests use (tests/adversary.py).
sys.path.insert(0, str(HERE.parent / "tests"))
from adversary import HostileConnector  # noqa: E402

HOST_A = "a.bench.example.test"
HOST_B = "b.bench.example.test"
#: The shortest slowloris attack (the edge's default --header-timeout is 10 s).
SLOWLORIS_SECONDS = 12.0
#: Frames written per batch by the flooding connector (one write each).
BATCH = 512


# -- the attacker's connector -------------------------------------------------------------------


def _flood_frame(kind: str, control_stream: int) -> bytes:
    """The frame a flood of ``kind`` repeats."""
    if kind == "ping":
        return frame(FrameType.PING, 0, 0, b"\0" * 8)
    if kind == "settings":
        return frame(FrameType.SETTINGS, 0, 0, b"")
    if kind == "rst_stream":
        # RST_STREAM on the control stream's id, over and over: once closed, each one is a
        # reset of a closed stream the edge still has to look at (Rapid Reset, server side).
        return frame(FrameType.RST_STREAM, 0, control_stream, (8).to_bytes(4, "big"))
    if kind == "window_update":
        return frame(FrameType.WINDOW_UPDATE, 0, 0, (1).to_bytes(4, "big"))
    if kind == "continuation":
        # Empty CONTINUATIONs of a header block that never ends (opened in flood()).
        return frame(FrameType.CONTINUATION, 0, control_stream, b"")
    raise ValueError(kind)


async def flood(
    edge: Edge, credentials: Path, kind: str, seconds: float, *, redial: bool
) -> tuple[list[float], int, int, int]:
    """Tenant B's connector floods ``kind`` frames for ``seconds``: it registers (with
    tests/adversary.py's hostile connector), stops reading what the edge sends and writes the
    frames as fast as the edge takes them; with ``redial``, when the edge closes the
    connection it dials and registers again, until the time is up. Returns how long each closed
    connection lasted from its first frame, how many dials were made, how many of them were
    refused registration, and how many were turned away before TLS."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    closed: list[float] = []
    made = refused = turned_away = 0
    while loop.time() < end - 0.05:
        attacker = HostileConnector(
            f"127.0.0.1:{edge.tunnel_ports[0]}",
            edge.ca.read_text(),
            load_credentials_file(credentials),
        )
        made += 1
        try:
            await attacker.open()
        except AssertionError:
            # Refused (the edge holds the tunnel in cooldown after a flood): an attacker floods
            # anyway, on the connection it has until the edge drops it.
            pass
        except (OSError, TimeoutError):
            # Turned away before TLS (this address dials too fast): dial again at once.
            turned_away += 1
            await asyncio.sleep(0.005)
            continue
        attacker.stop_reading()
        one = _flood_frame(kind, attacker.control_stream or 1)
        if kind == "continuation":
            # An open header block on the control stream (trailers without END_HEADERS).
            await attacker.send(frame(FrameType.HEADERS, 0, attacker.control_stream or 1, b""))
        try:
            result = await attacker.flood(
                lambda _n, one=one: one, seconds=max(0.0, end - loop.time()), batch=BATCH
            )
        finally:
            await attacker.close()
        if not result.closed:
            break
        closed.append(round(result.seconds, 3))
        refused += attacker.registered is None
        if not redial:
            break
    return closed, made, refused, turned_away


# -- slowloris on the public listener -----------------------------------------------------------


async def slowloris(port: int, host: str, count: int, seconds: float) -> float | None:
    """``count`` connections to ``host`` that send their head one byte a second; returns the
    seconds until the edge had closed half of them (None if it did not within ``seconds``)."""
    head = f"GET / HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode()
    started = time.monotonic()
    closed: list[float] = []

    async def one() -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            closed.append(time.monotonic())
            return
        try:
            writer.write(head)
            while time.monotonic() < started + seconds:
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    if await asyncio.wait_for(reader.read(65536), 1.0) == b"":
                        closed.append(time.monotonic())
                        return
                writer.write(b"a")
        except OSError:
            closed.append(time.monotonic())
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(count)))
    closed.sort()
    if len(closed) * 2 >= count:
        return closed[count // 2 - 1] - started if count > 1 else closed[0] - started
    return None


# -- tenant A at a fixed rate -------------------------------------------------------------------


@dataclass
class Sample:
    """One request of tenant A."""

    started: float
    seconds: float
    ok: bool


class FixedRate:
    """GETs of ``path`` on ``host`` at ``rate`` per second, each on an idle keep-alive
    connection (a new one when none is idle); every outcome kept with its start time."""

    def __init__(self, port: int, host: str, path: str, rate: float, timeout: float = 5.0):
        self.port = port
        self.request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        self.interval = 1.0 / rate
        self.timeout = timeout
        self.samples: list[Sample] = []
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not self._stop.is_set():
            task = asyncio.ensure_future(self._one())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            next_at += self.interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, next_at - loop.time()))

    async def stop(self) -> None:
        self._stop.set()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.timeout + 1)
        for _, writer in self._idle:
            writer.close()

    async def _one(self) -> None:
        started = time.monotonic()
        ok = False
        pair = self._idle.pop() if self._idle else None
        try:
            async with asyncio.timeout(self.timeout):
                if pair is None:
                    pair = await asyncio.open_connection("127.0.0.1", self.port)
                reader, writer = pair
                writer.write(self.request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                ok = head.startswith(b"HTTP/1.1 200")
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            ok = False
        self.samples.append(Sample(started, time.monotonic() - started, ok))
        if ok and pair is not None:
            self._idle.append(pair)
        elif pair is not None:
            pair[1].close()

    def window(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.started < end]


def _ms(samples: list[Sample], q: float) -> float | None:
    times = sorted(s.seconds for s in samples if s.ok)
    if not times:
        return None
    if len(times) == 1:
        return round(times[0] * 1000, 2)
    return round(statistics.quantiles(times, n=100, method="inclusive")[int(q) - 1] * 1000, 2)


def _figures(samples: list[Sample]) -> dict[str, float | int | None]:
    return {
        "requests": len(samples),
        "errors": sum(1 for s in samples if not s.ok),
        "p50_ms": _ms(samples, 50),
        "p99_ms": _ms(samples, 99),
    }


# -- the run ------------------------------------------------------------------------------------


@dataclass
class AttackResult:
    """What one attack did to tenant A and to the edge."""

    attack: str
    quiet: dict[str, float | int | None]
    during: dict[str, float | int | None]
    after_first_second: dict[str, float | int | None]
    closed_after_s: float | None
    edge_rss_mib_before: float
    edge_rss_mib_after: float
    edge_cpu_s: float
    notes: list[str] = field(default_factory=list)


async def attacker_main(args: argparse.Namespace) -> int:
    """The attacker's own process (so its CPU does not slow tenant A's client): one attack,
    its result as a JSON line on stdout."""
    # A real attacker floods from its own machine. Here it shares two cores with the edge,
    # tenant A's connector, nginx and A's client: at the lowest priority it takes only the
    # CPU they leave, so what A feels is what the edge does, not a busy neighbour.
    os.nice(19)
    edge = Edge(None, Path(args.ca).parent, (args.tunnel_port,), args.http_port, 0)  # type: ignore[arg-type]
    result: dict[str, object] = {"closed_after_s": None, "note": ""}
    if args.kind == "slowloris":
        # Long enough for the edge's default head timeout (--header-timeout, 10 s) to act.
        result["closed_after_s"] = await slowloris(
            args.http_port, HOST_B, args.slowloris, max(args.seconds, SLOWLORIS_SECONDS)
        )
    else:
        try:
            closed, made, refused, turned_away = await flood(
                edge, Path(args.credentials), args.kind, args.seconds, redial=args.redial
            )
        except (OSError, AssertionError, TimeoutError) as exc:
            result["note"] = f"attacker could not connect: {exc!r}"
        else:
            result["closed_after_s"] = statistics.median(closed) if closed else None
            result["note"] = (
                f"{made} dials: {turned_away} turned away before TLS, {len(closed)} closed"
                f" by the edge ({refused} of them refused registration)"
            )
    print(json.dumps(result), flush=True)
    return 0


async def _attack(
    edge: Edge, credentials_b: Path, kind: str, args: argparse.Namespace
) -> dict[str, object]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "attack.py"),
        "attacker",
        "--kind",
        kind,
        "--seconds",
        str(args.flood),
        *(["--redial"] if args.redial else []),
        "--slowloris",
        str(args.slowloris),
        "--tunnel-port",
        str(edge.tunnel_ports[0]),
        "--http-port",
        str(edge.http_port),
        "--ca",
        str(edge.ca),
        "--credentials",
        str(credentials_b),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(process.communicate(), max(args.flood, SLOWLORIS_SECONDS) + 60)
    lines = out.decode().strip().splitlines()
    parsed: dict[str, object] = json.loads(lines[-1]) if lines else {"note": "attacker failed"}
    return parsed


async def run_attacks(
    edge: Edge, edge_pid: int, credentials_b: Path, args: argparse.Namespace
) -> list[AttackResult]:
    driver = FixedRate(edge.http_port, HOST_A, SMALL_PATH, args.rate)
    driving = asyncio.ensure_future(driver.run())
    edge_proc = psutil.Process(edge_pid)
    windows = []
    try:
        for attack in args.attacks:
            quiet_start = time.monotonic()
            await asyncio.sleep(args.quiet)
            rss_before = edge_proc.memory_info().rss / 2**20
            cpu_before = sum(edge_proc.cpu_times()[:2])
            flood_start = time.monotonic()
            outcome = await _attack(edge, credentials_b, attack, args)
            # A's attack window is the same length whatever the edge did: an attack it cut
            # short is measured over the seconds it would have lasted.
            await asyncio.sleep(max(0.0, flood_start + args.flood - time.monotonic()))
            flood_end = time.monotonic()
            rss_after = edge_proc.memory_info().rss / 2**20
            cpu = sum(edge_proc.cpu_times()[:2]) - cpu_before
            windows.append(
                (attack, quiet_start, flood_start, flood_end, outcome, rss_before, rss_after, cpu)
            )
        await asyncio.sleep(args.quiet)
    finally:
        # Requests still in flight belong to the windows they started in: wait for them.
        await driver.stop()
        driving.cancel()
        with contextlib.suppress(BaseException):
            await driving
    results = []
    for attack, quiet_start, flood_start, flood_end, outcome, before, after, cpu in windows:
        # The flood itself starts a moment after the attacker process does (it registers
        # first): the attacker's own figure is the closing time; A's windows count from the
        # process start, which only makes them stricter.
        closed = outcome.get("closed_after_s")
        note = str(outcome.get("note") or "")
        results.append(
            AttackResult(
                attack=attack,
                quiet=_figures(driver.window(quiet_start, flood_start)),
                during=_figures(driver.window(flood_start, flood_end)),
                after_first_second=_figures(driver.window(flood_start + 1.0, flood_end)),
                closed_after_s=None if closed is None else round(float(closed), 3),  # type: ignore[arg-type]
                edge_rss_mib_before=round(before, 1),
                edge_rss_mib_after=round(after, 1),
                edge_cpu_s=round(cpu, 2),
                notes=[note] if note else [],
            )
        )
    return results


def _report(results: list[AttackResult], args: argparse.Namespace) -> str:
    lines = [
        "# Tenant under attack",
        "",
        f"Tenant A at {args.rate:g} requests/s; each attack {args.flood:g} s after {args.quiet:g} s"
        " quiet; the flooding connector "
        + ("dials and registers again each time it is closed" if args.redial else "stops once")
        + ". Goal: no error for A, and A's p99 from 1 s after the flood started under 2x its"
        " quiet p99.",
        "",
        "| attack | A quiet p50/p99 ms | A during p50/p99 ms (errors) | A after 1 s p99 ms"
        " | goal | abusive conn. closed after | edge RSS MiB | edge CPU s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        quiet_p99 = r.quiet["p99_ms"]
        late_p99 = r.after_first_second["p99_ms"]
        errors = int(r.during["errors"] or 0)
        met = (
            errors == 0
            and quiet_p99 is not None
            and late_p99 is not None
            and late_p99 <= 2 * float(quiet_p99)
        )
        closed = "never" if r.closed_after_s is None else f"{r.closed_after_s:.2f} s"
        lines.append(
            f"| {r.attack} | {r.quiet['p50_ms']}/{quiet_p99} | {r.during['p50_ms']}/"
            f"{r.during['p99_ms']} ({errors}) | {late_p99} | {'met' if met else 'missed'}"
            f" | {closed} | {r.edge_rss_mib_before} → {r.edge_rss_mib_after}"
            f" | {r.edge_cpu_s} |"
        )
        for note in r.notes:
            lines.append(f"|  | {note} |||||||")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["attacker"]:
        inner = argparse.ArgumentParser(prog="attack.py attacker")
        for name in ("--kind", "--ca", "--credentials"):
            inner.add_argument(name, required=True)
        for name in ("--tunnel-port", "--http-port", "--slowloris"):
            inner.add_argument(name, type=int, required=True)
        inner.add_argument("--seconds", type=float, required=True)
        inner.add_argument("--redial", action="store_true")
        return asyncio.run(attacker_main(inner.parse_args(argv[1:])))
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rate", type=float, default=100.0, help="tenant A's requests/s")
    parser.add_argument("--quiet", type=float, default=4.0, help="seconds before each attack")
    parser.add_argument("--flood", type=float, default=5.0, help="seconds of each attack")
    parser.add_argument(
        "--redial",
        action="store_true",
        help="the flooding connector dials and registers again each time it is closed",
    )
    parser.add_argument("--slowloris", type=int, default=300, help="slowloris connections")
    parser.add_argument(
        "--attacks",
        nargs="+",
        default=["ping", "settings", "rst_stream", "window_update", "continuation", "slowloris"],
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "attack")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)

    (HERE / "results").mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="attack-", dir=HERE / "results"))
    processes = Processes(tmp)
    try:
        origin = start_origin(processes, tmp, big_size=1 << 20)
        edge = start_edge(processes, tmp, listeners=2)
        tunnel_a = create_tunnel(edge, tmp, "a", HOST_A)
        tunnel_b = create_tunnel(edge, tmp, "b", HOST_B)
        config = tmp / "config-a.json"
        rules = [
            {"hostname": HOST_A, "service": f"http://127.0.0.1:{origin.port}"},
            {"service": "http_status:404"},
        ]
        config.write_text(json.dumps({"tunnel": tunnel_a.id, "ingress": rules}))
        connector: Service = start_adit(
            processes, tunnel_a, config, workers=1, ha=2, name="connector-a"
        )
        connector.wait_log("Registered tunnel connection", count=2, timeout=30)
        assert edge.service is not None
        results = asyncio.run(run_attacks(edge, edge.service.pid, tunnel_b.credentials, args))
    except BenchError as exc:
        print(f"attack: {exc}", file=sys.stderr)
        return 1
    finally:
        processes.cleanup()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps([asdict(r) for r in results], indent=2) + "\n"
    )
    text = _report(results, args)
    (args.out / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
