"""``./run bench``: adit next to the direct path and its peers, same machine, same run.

Starts nginx (+ upload sink, WebSocket echo), ``adit edge``, then for each path a connector
(or none, or ``ssh -R``, or cloudflared) and drives the scenarios through it. Results go to
``loadtests/results/<stamp>/`` (``results.json``, ``results.md``, ``latency.png``). See
loadtests/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import access_setup
import calibration
import drivers
import footprint
import psutil
import report
from drivers import Figures, Target
from processes import BenchError, Processes, Service
from services import (
    ACCESS_HOSTNAME,
    HOSTNAME,
    Edge,
    Origin,
    Tunnel,
    create_tunnel,
    start_adit,
    start_cloudflared,
    start_edge,
    start_origin,
    start_ssh,
    write_ingress,
)

HERE = Path(__file__).resolve().parent
HA_CONNECTIONS = 4
#: adit-1w (HTTP/2) to a hostname behind an Access application, each request with a valid
#: CF_Authorization cookie: the policy check's cost next to adit-1w (access_setup.py).
ACCESS_PATH = "adit-1w-access"
ACCESS_SCENARIOS = ("small_gets", "latency", "access_pairs")
#: ``access_pairs``: rounds of small-GET runs (plain, cookie, Access) on one connector.
ACCESS_ROUNDS = 5
#: adit's source roots (an editable install runs from them).
SOURCE_ROOTS = ("protocol", "runtime", "edge", "workers", "supervisor")


def compile_bytecode() -> None:
    """Byte-compile adit's sources, as an installed adit is (deb postinst, rpm, pip).

    Without it, an editable install run with ``PYTHONDONTWRITEBYTECODE`` (as in CI and these
    sandboxes) compiles every module from source at every start of every process, which the
    start-up scenario would count against adit and no installed adit does.
    """
    roots = [str(HERE.parent / root / "adit") for root in SOURCE_ROOTS]
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", *roots], check=True, stdin=subprocess.DEVNULL
    )


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _rss_mb(process: psutil.Process) -> float | None:
    try:
        return round(process.memory_info().rss / 2**20, 1)
    except psutil.NoSuchProcess:
        return None


#: Roles whose work happens in child processes (nginx workers, sshd's per-connection child).
_FORKING = frozenset({"nginx", "sshd"})


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for role, pid in pids.items():
        total = 0.0
        for proc in _tree(pid) if role in _FORKING else _tree(pid)[:1]:
            total += _on_cpu_seconds(proc.pid)
        out[role] = total
    return out


def _io_calls(pid: int) -> int:
    """Read and write system calls made by ``pid`` so far (/proc/PID/io), 0 if unknown."""
    try:
        with open(f"/proc/{pid}/io") as file:
            fields = dict(line.split(": ") for line in file.read().splitlines())
    except OSError:
        return 0
    return int(fields.get("syscr", 0)) + int(fields.get("syscw", 0))


def _on_cpu_seconds(pid: int) -> float:
    """Time on CPU of every thread of ``pid``, in ns from the scheduler.

    /proc/PID/stat's utime and stime are sampled at the tick: a process that runs in short
    bursts woken by the same timer as the tick (a fixed-rate load) is charged whole ticks.
    schedstat's first field is the scheduler's exact run time.
    """
    total = 0
    try:
        for task in os.scandir(f"/proc/{pid}/task"):
            with open(f"{task.path}/schedstat", "rb") as file:
                total += int(file.read().split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total / 1e9


def cpu_figures(
    before: dict[str, float], after: dict[str, float], wall: float, requests: object
) -> Figures:
    """Cores busy per process over ``wall`` seconds, and CPU µs per request when counted."""
    figures: Figures = {}
    for role, start in before.items():
        used = after[role] - start
        figures[f"cpu_{role}"] = round(used / wall, 2)
        if isinstance(requests, int) and requests:
            figures[f"cpu_us_per_req_{role}"] = round(1e6 * used / requests, 1)
    return figures


class Bench:
    """One benchmark run: the services, the paths, the figures."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.processes = Processes(tmp)
        self.results: dict[str, dict[str, Figures]] = {}
        self.curves: dict[str, list[float]] = {}
        self.origin: Origin | None = None
        self.edge: Edge | None = None
        self.tunnel: Tunnel | None = None
        self.config: Path | None = None
        self.profiles: list[str] = []
        self.access_cookie: str | None = None

    # -- set-up ---------------------------------------------------------------------------

    def setup(self) -> None:
        self.origin = start_origin(self.processes, self.tmp, self.args.size_mib * 2**20)
        self.edge = start_edge(self.processes, self.tmp, HA_CONNECTIONS)
        self.tunnel = create_tunnel(self.edge, self.tmp)
        self.config = write_ingress(self.tmp / "config.yml", self.tunnel, self.origin)

    def _edge_target(self, name: str) -> Target:
        assert self.edge is not None
        base = f"127.0.0.1:{self.edge.http_port}"
        if name == ACCESS_PATH:
            # The same origin through the Access application, each request with the cookie.
            cookie = (f"Cookie: CF_Authorization={self._access_cookie()}",)
            return Target(name, base, base, base, ACCESS_HOSTNAME, cookie)
        return Target(name, base, base, base, HOSTNAME)

    def _access_cookie(self) -> str:
        if self.access_cookie is None:
            assert self.edge is not None and self.tunnel is not None
            self.access_cookie = access_setup.protect(self.edge, self.tunnel)
        return self.access_cookie

    # -- paths ----------------------------------------------------------------------------

    def run_direct(self) -> None:
        assert self.origin is not None
        o = self.origin
        target = Target(
            "direct", f"127.0.0.1:{o.port}", f"127.0.0.1:{o.sink_port}", f"127.0.0.1:{o.ws_port}"
        )
        nginx = next(s for s in self.processes.services if s.name == "nginx")
        self.scenarios(target, {"nginx": nginx.pid}, connector=None)

    def run_ssh(self) -> None:
        assert self.origin is not None
        started = time.monotonic()
        ssh = start_ssh(self.processes, self.tmp, self.origin)
        target = Target(
            "ssh",
            f"127.0.0.1:{ssh.static_port}",
            f"127.0.0.1:{ssh.sink_port}",
            f"127.0.0.1:{ssh.ws_port}",
        )
        figures: Figures = {"first_ok_s": drivers.first_ok(target, since=started, timeout=30)}
        self.results.setdefault("ssh", {})["startup"] = figures
        try:
            self.scenarios(target, {"ssh": ssh.client.pid, "sshd": ssh.sshd.pid}, connector=None)
        finally:
            ssh.client.stop()
            ssh.sshd.stop()

    def run_adit(self, workers: int, protocol: str, name: str | None = None) -> None:
        assert self.tunnel is not None and self.config is not None
        name = name or path_name(f"adit-{workers}w", protocol)
        if name == ACCESS_PATH:
            self._access_cookie()  # the application exists before the connector starts
        started = time.monotonic()
        connector = start_adit(
            self.processes,
            self.tunnel,
            self.config,
            workers=workers,
            ha=HA_CONNECTIONS,
            name=name,
            protocol=protocol,
        )
        self._connector_path(name, protocol, connector, started, lambda: self._adit_pids(connector))

    def run_cloudflared(self, binary: Path, protocol: str) -> None:
        assert self.tunnel is not None and self.config is not None and self.edge is not None
        name = path_name("cloudflared", protocol)
        started = time.monotonic()
        connector = start_cloudflared(
            self.processes,
            binary,
            self.edge,
            self.tunnel,
            self.config,
            ha=HA_CONNECTIONS,
            name=name,
            protocol=protocol,
        )
        self._connector_path(
            name, protocol, connector, started, lambda: {"cloudflared": connector.pid}
        )

    def _adit_pids(self, supervisor: Service) -> dict[str, int]:
        pids = {"supervisor": supervisor.pid}
        try:
            children = psutil.Process(supervisor.pid).children()
        except psutil.NoSuchProcess:
            children = []
        for index, child in enumerate(sorted(children, key=lambda p: p.pid)):
            pids[f"worker{index}"] = child.pid
        return pids

    def _connector_path(
        self,
        name: str,
        protocol: str,
        connector: Service,
        started: float,
        pids: Callable[[], dict[str, int]],
    ) -> None:
        target = self._edge_target(name)
        startup: Figures = {}
        self.results.setdefault(name, {})["startup"] = startup
        try:
            registered = connector.wait_log(r"Registered tunnel connection", timeout=30)
            startup["first_registered_s"] = round(registered - started, 3)
            startup["first_ok_s"] = drivers.first_ok(target, since=started, timeout=30)
            connector.wait_log(r"Registered tunnel connection", timeout=30, count=HA_CONNECTIONS)
            startup["all_registered_s"] = round(time.monotonic() - started, 3)
            _check_protocol(connector, protocol)
            self.scenarios(target, pids(), connector=connector)
            if "recovery" in self.args.scenarios and name != ACCESS_PATH:
                self.results[name]["recovery"] = self.recovery(target)
        except BenchError as exc:
            self.results[name]["error"] = {"error": str(exc)[:2000]}
            print(f"  {name}: {exc}", file=sys.stderr)
        finally:
            connector.stop()

    # -- scenarios --------------------------------------------------------------------------

    def scenarios(self, target: Target, roles: dict[str, int], connector: Service | None) -> None:
        args = self.args
        assert self.origin is not None
        big_file = self.origin.big_file
        if self.edge is not None and connector is not None and self.edge.service is not None:
            roles = {"edge": self.edge.service.pid, **roles}
        out = self.results.setdefault(target.name, {})
        out["idle_rss_mb"] = {role: _rss_mb(psutil.Process(pid)) for role, pid in roles.items()}
        steps: list[tuple[str, Callable[[], Figures]]] = [
            # First: "idle" means before any other scenario touched the processes.
            ("footprint", lambda: self._footprint(target, roles)),
            ("small_gets", lambda: self._small_gets(target, roles)),
            ("latency", lambda: self._latency(target, roles)),
            ("access_pairs", lambda: self._access_pairs(target, roles)),
            (
                "download",
                lambda: self._transfer(
                    target,
                    roles,
                    "download",
                    lambda: drivers.download(
                        target, expected=args.size_mib * 2**20, max_seconds=args.max_transfer
                    ),
                ),
            ),
            (
                "upload",
                lambda: self._transfer(
                    target,
                    roles,
                    "upload",
                    lambda: drivers.upload(target, big_file, max_seconds=args.max_transfer),
                ),
            ),
            ("websockets", lambda: self._websockets(target, roles)),
        ]
        for scenario, step in steps:
            if scenario not in args.scenarios:
                continue
            if target.name == ACCESS_PATH and scenario not in ACCESS_SCENARIOS:
                continue  # its goal is per request; its hostname has no upload sink or echo
            if scenario == "access_pairs" and target.name != ACCESS_PATH:
                continue
            before = _loadavg()
            udp_before = udp_counters()
            print(f"  {target.name}: {scenario}", file=sys.stderr, flush=True)
            try:
                figures = step()
            except Exception as exc:
                figures = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
            figures["loadavg_before"] = " ".join(map(str, before))
            udp_after = udp_counters()
            for counter in ("InDatagrams", "RcvbufErrors", "SndbufErrors"):
                if counter in udp_before and counter in udp_after:
                    moved = udp_after[counter] - udp_before[counter]
                    if moved:
                        figures[f"udp_{counter}"] = moved
            datagrams, moved_bytes = figures.get("udp_InDatagrams"), figures.get("bytes")
            if isinstance(datagrams, int) and isinstance(moved_bytes, int) and moved_bytes:
                # Both ways (data and ACKs), per MiB of body: QUIC's work goes by the packet.
                figures["udp_datagrams_per_mib"] = round(datagrams / (moved_bytes / 2**20), 1)
            out[scenario] = figures
            print(f"    {_brief(figures)}", file=sys.stderr, flush=True)

    def _small_gets(self, target: Target, roles: dict[str, int]) -> Figures:
        before = cpu_seconds(roles)
        wall = time.monotonic()
        profilers = self._start_profilers(target.name, "small_gets", roles)
        figures = drivers.small_gets(target, seconds=self.args.seconds)
        self._stop_profilers(profilers)
        wall = time.monotonic() - wall
        # CPU per request is steadier than requests/s on a machine shared with others.
        figures.update(cpu_figures(before, cpu_seconds(roles), wall, figures.get("requests")))
        return figures

    def _access_pairs(self, target: Target, roles: dict[str, int]) -> Figures:
        """Access's cost with everything else held still: one edge and one connector, and
        small GETs in turn to the plain hostname without a cookie (``plain``), to it with the
        Access path's cookie (``cookie``: the same request bytes, no Access) and to the Access
        hostname (``access``), the order rotated each round so a drift of the machine weighs
        on all alike. Two paths each with their own connector, run one after the other, differ
        by more than Access costs on a shared machine (four such runs here gave the edge
        110–121 µs a request on the plain path and 121–169 µs on the Access path).

        The ratio of each round: ``access`` ÷ ``cookie`` (what deciding and asserting costs,
        the goal's figure) and ``access`` ÷ ``plain`` (that and carrying the visitor's cookie).
        """
        variants = {
            "plain": Target(target.name, target.static, target.sink, target.ws, HOSTNAME),
            "cookie": Target(
                target.name, target.static, target.sink, target.ws, HOSTNAME, target.headers
            ),
            "access": target,
        }
        seconds = max(3, self.args.seconds // 2)
        watched = [role for role in ("edge", "worker0") if role in roles]
        spent: dict[str, list[float]] = {f"{r}_{k}": [] for r in watched for k in variants}
        # Read and write calls per request: how well each process batches under this load.
        calls: dict[str, list[float]] = {key: [] for key in spent}
        kinds = list(variants)
        rounds = self.args.access_rounds
        for round_ in range(rounds):
            for kind in kinds[round_ % 3 :] + kinds[: round_ % 3]:
                before = cpu_seconds(roles)
                io_before = {role: _io_calls(roles[role]) for role in watched}
                figures = drivers.small_gets(variants[kind], seconds=seconds)
                after = cpu_seconds(roles)
                requests = figures.get("requests")
                if not isinstance(requests, int) or not requests or figures.get("non_2xx"):
                    raise BenchError(f"access_pairs: the {kind} run failed: {figures}")
                for role in watched:
                    used = after[role] - before[role]
                    spent[f"{role}_{kind}"].append(1e6 * used / requests)
                    made = _io_calls(roles[role]) - io_before[role]
                    calls[f"{role}_{kind}"].append(made / requests)
        edge = {kind: spent[f"edge_{kind}"] for kind in variants}
        deciding = [a / c for c, a in zip(edge["cookie"], edge["access"], strict=True)]
        whole = [a / p for p, a in zip(edge["plain"], edge["access"], strict=True)]
        return {
            "rounds": rounds,
            "seconds_each": seconds,
            **{f"cpu_us_per_req_{k}": round(statistics.median(v), 1) for k, v in spent.items()},
            "ratio_median": round(statistics.median(deciding), 3),
            "ratios": [round(r, 3) for r in deciding],
            "ratio_with_cookie_median": round(statistics.median(whole), 3),
            "ratios_with_cookie": [round(r, 3) for r in whole],
            **{f"io_calls_per_req_{k}": round(statistics.median(v), 2) for k, v in calls.items()},
        }

    def _transfer(
        self,
        target: Target,
        roles: dict[str, int],
        scenario: str,
        run: Callable[[], Figures],
    ) -> Figures:
        """A download or upload, with each process's CPU (cores busy, CPU s per GiB)."""
        before = cpu_seconds(roles)
        wall = time.monotonic()
        profilers = self._start_profilers(target.name, scenario, roles)
        figures = run()
        wall = time.monotonic() - wall
        after = cpu_seconds(roles)
        self._stop_profilers(profilers)
        moved = figures.get("bytes")
        for role in roles:
            used = after[role] - before[role]
            figures[f"cpu_{role}"] = round(used / wall, 2)
            if isinstance(moved, int) and moved:
                figures[f"cpu_s_per_gib_{role}"] = round(used / (moved / 2**30), 2)
        return figures

    def _latency(self, target: Target, roles: dict[str, int]) -> Figures:
        before = cpu_seconds(roles)
        wall = time.monotonic()
        figures, ordered = drivers.latency(
            target,
            rate=self.args.rate,
            clients=self.args.rate_clients,
            seconds=self.args.seconds,
            log_file=self.tmp / f"h2load-{target.name}.log",
        )
        # What an isolated request costs each process (no batching; caches cold between them).
        wall = time.monotonic() - wall
        cpu = cpu_figures(before, cpu_seconds(roles), wall, figures.get("count"))
        figures.update({k: v for k, v in cpu.items() if k.startswith("cpu_us_per_req_")})
        if ordered:
            self.curves[target.name] = [
                round(ordered[min(len(ordered) - 1, int(p / 1000 * len(ordered)))], 3)
                for p in range(1000)
            ]
        return figures

    def _websockets(self, target: Target, roles: dict[str, int]) -> Figures:
        def measure() -> Figures:
            figures: Figures = {}
            for role, pid in roles.items():
                figures[f"rss_{role}_mb"] = _rss_mb(psutil.Process(pid))
            return figures

        return drivers.idle_websockets(target, self.args.websockets, measure)

    def _footprint(self, target: Target, roles: dict[str, int]) -> Figures:
        """RSS and PSS of each process idle, then with the idle WebSockets open."""

        def open_websockets(measure: Callable[[], Figures]) -> Figures:
            return drivers.idle_websockets(target, self.args.websockets, measure)

        return footprint.footprint(roles, open_websockets)

    def recovery(self, target: Target) -> Figures:
        """Restart the edge on the same addresses; time until a request succeeds again."""
        assert self.edge is not None
        stopped = time.monotonic()
        self.edge.stop()
        down = time.monotonic()
        ready = self.edge.start()
        ok = drivers.first_ok(target, since=ready, timeout=60)
        return {
            "edge_stop_s": round(down - stopped, 3),
            "edge_start_s": round(ready - down, 3),
            "ok_after_edge_ready_s": ok,
            "ok_after_edge_down_s": round(ok + ready - down, 3) if ok is not None else None,
        }

    # -- profiling ----------------------------------------------------------------------------

    def _start_profilers(
        self, path: str, scenario: str, roles: dict[str, int]
    ) -> list[subprocess.Popen[bytes]]:
        if not self.args.py_spy:
            return []
        running = []
        for role, pid in roles.items():
            # adit's busy processes: the edge (cloudflared's paths have it too) and workers.
            if role != "edge" and not role.startswith("worker"):
                continue
            out = self.args.profile_dir / f"{path}-{scenario}-{role}.txt"
            running.append(
                subprocess.Popen(
                    [
                        self.args.py_spy,
                        "record",
                        "--pid",
                        str(pid),
                        "--format",
                        "raw",
                        "--rate",
                        "200",
                        "--duration",
                        str(self.args.seconds),
                        "--output",
                        str(out),
                        "--nonblocking",
                        *(["--native"] if self.args.py_spy_native else []),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            self.profiles.append(str(out))
        return running

    def _stop_profilers(self, running: list[subprocess.Popen[bytes]]) -> None:
        for popen in running:
            try:
                popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()


def path_name(connector: str, protocol: str) -> str:
    """A connector path's name: HTTP/2 paths keep the names of the runs before QUIC."""
    return f"{connector}-quic" if protocol == "quic" else connector


def _check_protocol(connector: Service, protocol: str) -> None:
    """Every registration so far used ``protocol`` (a path measures what it is named after)."""
    lines = [x for x in connector.text().splitlines() if "Registered tunnel connection" in x]
    other = [x for x in lines if not re.search(rf"protocol[=:\"' ]+{protocol}\b", x)]
    if not lines or other:
        raise BenchError(f"{connector.name}: registered over another protocol: {other[:2]}")


def udp_counters() -> dict[str, int]:
    """The network namespace's UDP counters (/proc/net/snmp): datagrams delivered, and those
    dropped because a socket's receive or send buffer was full (QUIC losing packets on the
    machine itself)."""
    try:
        rows = [x.split() for x in Path("/proc/net/snmp").read_text().splitlines()]
    except OSError:
        return {}
    udp = [row[1:] for row in rows if row and row[0] == "Udp:"]
    if len(udp) < 2:
        return {}
    return {k: int(v) for k, v in zip(udp[0], udp[1], strict=False) if v.lstrip("-").isdigit()}


def _brief(figures: Figures) -> str:
    keys = ("rps", "p50_ms", "p99_ms", "mbps", "opened", "error")
    return " ".join(f"{k}={figures[k]}" for k in keys if k in figures) or "done"


def _versions(cloudflared: Path | None) -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except OSError as exc:
            return f"unavailable: {exc}"
        text = (result.stdout or result.stderr).strip().splitlines()
        return text[0] if text else ""

    import h2
    import uvloop

    git = subprocess.run(
        ["git", "-C", str(HERE), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    versions = {
        "adit": git,
        "python": platform.python_version(),
        "uvloop": str(getattr(uvloop, "__version__", "?")),
        "h2": h2.__version__,
        "kernel": platform.release(),
        "nginx": first_line(["nginx", "-v"]),
        "wrk": first_line(["wrk", "-v"]),
        "h2load": first_line(["h2load", "--version"]),
        "curl": first_line(["curl", "--version"]),
        "openssh": first_line(["ssh", "-V"]),
    }
    if cloudflared is not None:
        versions["cloudflared"] = first_line([str(cloudflared), "--version"])
    return versions


def _cpu_model() -> str:
    with Path("/proc/cpuinfo").open() as info:
        for line in info:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


#: Every path, in the order they run. A connector path without ``-quic`` runs HTTP/2.
PATHS = (
    "direct",
    "ssh",
    "adit-1w",
    "adit-1w-access",
    "adit-1w-quic",
    "adit-nw",
    "adit-nw-quic",
    "cloudflared",
    "cloudflared-quic",
)
SCENARIOS = (
    "footprint",
    "small_gets",
    "latency",
    "access_pairs",
    "download",
    "upload",
    "websockets",
    "recovery",
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options (all have defaults that make the documented run)."""
    parser = argparse.ArgumentParser(prog="./run bench", description=__doc__)
    parser.add_argument(
        "--cloudflared", type=Path, default=os.environ.get("ADIT_BENCH_CLOUDFLARED")
    )
    parser.add_argument(
        "--paths",
        default=",".join(PATHS),
        help=f"comma-separated subset of {','.join(PATHS)} (-quic: --protocol quic; the "
        "others: --protocol http2)",
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--seconds", type=int, default=10, help="wrk and h2load duration")
    parser.add_argument("--rate", type=int, default=200, help="latency scenario: requests/s")
    parser.add_argument(
        "--access-rounds",
        type=int,
        default=ACCESS_ROUNDS,
        help="access_pairs: rounds of three small-GET runs of --seconds/2 each",
    )
    parser.add_argument("--rate-clients", type=int, default=10)
    parser.add_argument("--size-mib", type=int, default=1024, help="download/upload size")
    parser.add_argument("--max-transfer", type=int, default=60, help="seconds per transfer")
    parser.add_argument("--websockets", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "latest")
    parser.add_argument("--plot-python", default=None, help="python with matplotlib")
    parser.add_argument("--py-spy", default=None, help="profile adit's processes with py-spy")
    parser.add_argument(
        "--py-spy-native",
        action="store_true",
        help="with --py-spy: native frames too (C extensions: aioquic's buffer and crypto)",
    )
    parser.add_argument("--note", default="", help="free text stored with the results")
    args = parser.parse_args(argv)
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [p for p in args.paths if p not in PATHS]
    if unknown:
        parser.error(f"unknown paths: {', '.join(unknown)}")
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    return args


def main(argv: list[str]) -> int:
    """Run the benchmark; returns the exit code."""
    args = parse_args(argv)
    if args.cloudflared is not None and not args.cloudflared.exists():
        print(f"no cloudflared at {args.cloudflared}", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    args.out.mkdir(parents=True, exist_ok=True)
    args.profile_dir = args.out / "profiles"
    if args.py_spy:
        args.profile_dir.mkdir(exist_ok=True)
    scratch = HERE / "results" / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-", dir=scratch))
    cpus = os.cpu_count() or 1
    meta: dict[str, object] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpus": cpus,
        "cpu_model": _cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "loadavg_start": _loadavg(),
        "versions": _versions(args.cloudflared),
        "parameters": {
            "seconds": args.seconds,
            "connections": 64,
            "wrk_threads": 2,
            "rate": args.rate,
            "rate_clients": args.rate_clients,
            "access_rounds": args.access_rounds,
            "size_mib": args.size_mib,
            "websockets": args.websockets,
            "ha_connections": HA_CONNECTIONS,
        },
        "note": args.note,
    }
    compile_bytecode()
    meta["bytecode"] = "compiled before the run (as installed)"
    meta["calibration_start"] = calibration.cold_factor()
    bench = Bench(args, tmp)
    started = time.monotonic()
    try:
        bench.setup()
        for path in args.paths:
            print(f"path {path}", file=sys.stderr, flush=True)
            protocol = "quic" if path.endswith("-quic") else "http2"
            base = path.removesuffix("-quic")
            if path == "direct":
                bench.run_direct()
            elif path == "ssh":
                bench.run_ssh()
            elif base == "adit-1w":
                bench.run_adit(1, protocol)
            elif path == ACCESS_PATH:
                bench.run_adit(1, "http2", name=ACCESS_PATH)
            elif base == "adit-nw":
                bench.run_adit(cpus, protocol)
            elif base == "cloudflared" and args.cloudflared is not None:
                bench.run_cloudflared(args.cloudflared, protocol)
    finally:
        bench.processes.cleanup()
        meta["loadavg_end"] = _loadavg()
        meta["calibration_end"] = calibration.cold_factor()
        meta["duration_s"] = round(time.monotonic() - started, 1)
        data = {"meta": meta, "paths": bench.results, "latency_curves_ms": bench.curves}
        data["ratios"] = report.ratios(bench.results)
        data["goals"] = report.goals(bench.results)
        (args.out / "results.json").write_text(json.dumps(data, indent=1) + "\n")
        (args.out / "results.md").write_text(report.markdown(data))
        if args.plot_python:
            subprocess.run(
                [args.plot_python, str(HERE / "plot.py"), str(args.out / "results.json")],
                check=False,
            )
        if args.py_spy and bench.profiles:
            report.summarise_profiles(bench.profiles, args.profile_dir / "summary.txt")
        if not os.environ.get("ADIT_BENCH_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"results in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
