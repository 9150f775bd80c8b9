"""Child processes of a benchmark run: started with a log file, always killed at the end."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


class BenchError(Exception):
    """A benchmark step could not be carried out (a service did not start, say)."""


#: Ports handed out by :func:`free_port` in this run: never twice.
_given: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as file:
            low, high = (int(part) for part in file.read().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def free_port() -> int:
    """A port on 127.0.0.1, free for TCP and UDP now, that no other call of this run returns
    (the edge's tunnel listeners take both: HTTP/2 over TCP and QUIC over UDP).

    Chosen below the kernel's ephemeral range: a port from ``bind(0)`` is free only at that
    moment, and a client connection made before the service binds it (a readiness probe, say)
    may take it as its own source port ("address already in use" at the service's start).
    """
    low, high = _ephemeral_range()
    first, last = (10000, low - 1) if low > 11000 else (high + 1, 65535)
    for _ in range(200):
        port = random.randint(first, last)  # noqa: S311 - a port number, not a secret
        if port in _given:
            continue
        if not all(_bindable(kind, port) for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM)):
            continue
        _given.add(port)
        return port
    raise BenchError(f"no free port in {first}-{last} after 200 tries")


def _bindable(kind: socket.SocketKind, port: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise BenchError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@dataclass
class Service:
    """One child process with its output in ``log``."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    started: float

    @property
    def pid(self) -> int:
        return self.popen.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, pattern: str, timeout: float = 20.0, count: int = 1) -> float:
        """Wait for ``pattern`` (regex) ``count`` times; returns when it was seen (monotonic)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(regex.findall(self.text())) >= count:
                return time.monotonic()
            if self.popen.poll() is not None:
                break
            time.sleep(0.01)
        tail = "\n".join(self.text().splitlines()[-30:])
        raise BenchError(f"{self.name}: {pattern!r} not seen (exit={self.popen.poll()}):\n{tail}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL for the whole process group."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


@dataclass
class Processes:
    """Starts services in their own process groups and kills every one at cleanup."""

    tmp: Path
    services: list[Service] = field(default_factory=list)

    def start(self, name: str, argv: list[str], *, env: dict[str, str] | None = None) -> Service:
        log = self.tmp / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=self.tmp,
                start_new_session=True,
            )
        service = Service(name, popen, log, time.monotonic())
        self.services.append(service)
        return service

    def cleanup(self) -> None:
        for service in reversed(self.services):
            service.stop(timeout=5)
        self.services.clear()
