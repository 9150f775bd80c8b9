"""The edge hands over to a new version of itself (SIGUSR2) without refusing a visitor.

The running edge (the *predecessor*) fork+execs ``adit edge`` again with the same argv and
environment, from the code installed on disk now (a package upgrade replaced it), and passes
its listening sockets by descriptor inheritance: :data:`ENV_FDS` lists them as
``name=fd,...`` (``http:0``, ``https:0``, ``api:0``, ``tunnel:0``, ``quic:0``, ``metrics:0``;
the index is the flag's position, so the same argv finds the same socket). It also passes one
end of a stream socket pair (:data:`ENV_CHANNEL`) on which the two talk in lines:

====================  =============  =====================================================
line                  from           meaning
====================  =============  =====================================================
``version V``         successor      it runs adit V (said first, before the store is read)
``ready PID``         successor      it serves on every inherited TCP listener
``main T1,T2,...``    predecessor    systemd was told ``MAINPID=PID``; these tunnels had
                                     connections (the successor holds their requests until
                                     the connectors have moved); the UDP socket is its now
====================  =============  =====================================================

Until ``ready`` nothing changes for the predecessor: a successor that exits or says nothing
within the hand-over timeout is logged (one error line with its version and why), counted,
and stopped; the predecessor keeps every socket and keeps serving. After ``ready`` both
processes accept from the same kernel queues until the predecessor closes its copies, so no
connection attempt is ever refused.

QUIC: two processes reading one UDP socket would each lose the other's packets. So the
successor reads the inherited UDP socket only after ``main``, when the predecessor has stopped
reading it (it keeps a duplicate to send on). A datagram the successor has no connection for
and that opens none (a short header, or a long one other than an Initial) is relayed to the
predecessor over a datagram socket pair (``quic-relay:N``): its QUIC connections keep both
directions until their requests in flight have finished, and are closed then (the connector
redials: the successor answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass

from adit.version import __version__

__all__ = [
    "ENV_CHANNEL",
    "ENV_FDS",
    "HandoverOutcome",
    "Inherited",
    "Predecessor",
    "RelaySender",
    "Successor",
    "decode_relayed",
    "encode_relayed",
    "handover_metrics",
    "successor_argv",
]

log = logging.getLogger("adit.edge")

#: ``name=fd,...``: the listening sockets a successor inherits.
ENV_FDS = "ADIT_EDGE_LISTEN_FDS"
#: The successor's end of the hand-over channel (a stream socket pair).
ENV_CHANNEL = "ADIT_EDGE_HANDOVER_FD"
#: The longest line either side sends (a ``main`` line lists tunnel ids: 37 bytes each).
MAX_LINE = 4 * 1024 * 1024
#: How long a successor that said ``ready`` waits for ``main`` before it goes on alone (the
#: predecessor died meanwhile: no one else reads the UDP socket).
MAIN_TIMEOUT = 10.0
#: How long the predecessor asks ``adit --version`` of a successor that failed silently.
VERSION_TIMEOUT = 5.0


def successor_argv() -> list[str]:
    """The command line that starts this program again from the code installed now: the
    console script (its shebang names the interpreter the package installed), or the
    interpreter with its original arguments (``python -m adit``)."""
    script = sys.argv[0]
    if os.path.isabs(script) and os.access(script, os.X_OK) and not script.endswith(".py"):
        return [script, *sys.argv[1:]]
    return [sys.executable, *sys.orig_argv[1:]]


# -- the successor's side --------------------------------------------------------------------


class Inherited:
    """The sockets this process inherited from its predecessor, by name (each taken once)."""

    def __init__(self, fds: Mapping[str, int]) -> None:
        self._fds = dict(fds)

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str]) -> Inherited:
        """Read (and remove) :data:`ENV_FDS`; an empty set when this is no successor. A
        malformed value is ignored with a warning: binding afresh says what is wrong."""
        value = environ.pop(ENV_FDS, "")
        fds: dict[str, int] = {}
        for item in filter(None, value.split(",")):
            name, _, fd = item.rpartition("=")
            try:
                fds[name] = int(fd)
            except ValueError:
                log.warning("%s: %r is not name=fd; ignored", ENV_FDS, item)
        return cls(fds)

    def __bool__(self) -> bool:
        return bool(self._fds)

    def take(self, name: str) -> socket.socket | None:
        """The inherited socket called ``name`` (non-blocking, not inherited further)."""
        fd = self._fds.pop(name, None)
        if fd is None:
            return None
        sock = socket.socket(fileno=fd)
        sock.set_inheritable(False)
        sock.setblocking(False)
        return sock

    def close_rest(self) -> None:
        """Close what was passed but not asked for (the flags changed: another listener)."""
        for name, fd in self._fds.items():
            log.info("hand-over: inherited socket %s is not used by this configuration", name)
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()


class Predecessor:
    """The successor's end of the hand-over channel."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str]) -> Predecessor | None:
        """Read (and remove) :data:`ENV_CHANNEL`; None when this process is no successor."""
        value = environ.pop(ENV_CHANNEL, "")
        if not value:
            return None
        try:
            sock = socket.socket(fileno=int(value))
        except (ValueError, OSError) as exc:
            log.warning("%s=%r: %s; starting as a new edge", ENV_CHANNEL, value, exc)
            return None
        sock.set_inheritable(False)
        sock.setblocking(True)
        # Said at once: a successor that fails later is named by its version.
        with contextlib.suppress(OSError):
            sock.sendall(f"version {__version__}\n".encode())
        return cls(sock)

    async def ready(self) -> frozenset[uuid.UUID]:
        """Say ``ready``; wait for ``main`` (bounded). The tunnels the predecessor served."""
        loop = asyncio.get_running_loop()
        sock = self._sock
        sock.setblocking(False)
        tunnels: frozenset[uuid.UUID] = frozenset()
        try:
            await loop.sock_sendall(sock, f"ready {os.getpid()}\n".encode())
            async with asyncio.timeout(MAIN_TIMEOUT):
                line = await _read_line(loop, sock)
            if line.startswith("main"):
                tunnels = frozenset(
                    uuid.UUID(t) for t in line.removeprefix("main").strip().split(",") if t
                )
            else:
                log.warning("hand-over: the previous edge answered %r, not main", line[:80])
        except (OSError, TimeoutError, ValueError) as exc:
            log.warning("hand-over: no word from the previous edge (%s); serving alone", exc)
        finally:
            sock.close()
        return tunnels


# -- the predecessor's side ------------------------------------------------------------------


@dataclass(frozen=True)
class HandoverOutcome:
    """How a hand-over attempt ended: a successor that is ready, or why there is none."""

    version: str
    pid: int
    error: str = ""


class Successor:
    """A new edge process started with this one's sockets, until it says ``ready``."""

    def __init__(
        self,
        argv: list[str],
        environ: Mapping[str, str],
        fds: Mapping[str, int],
    ) -> None:
        self.argv = argv
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(environ)
        env[ENV_FDS] = ",".join(f"{name}={fd}" for name, fd in fds.items())
        env[ENV_CHANNEL] = str(theirs.fileno())
        try:
            # fork+exec in one step (no Python runs in the child before exec); the child
            # stays in this process group and shares its stdout/stderr (the journal).
            self.process = subprocess.Popen(
                argv,
                env=env,
                pass_fds=(*fds.values(), theirs.fileno()),
                stdin=subprocess.DEVNULL,
                close_fds=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._channel = ours
        self.version = "(version unknown)"

    @property
    def pid(self) -> int:
        return self.process.pid

    async def wait_ready(self, timeout: float) -> HandoverOutcome:  # noqa: ASYNC109
        """Until the successor says ``ready``, exits, or ``timeout`` passes (then it is
        stopped). Never raises. (``timeout`` is a parameter, not the caller's own
        ``asyncio.timeout``: its expiry is an outcome with a message, not an exception.)"""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await _read_line(loop, self._channel)
                    if line.startswith("version "):
                        self.version = "adit " + line.removeprefix("version ").strip()
                    elif line.startswith("ready"):
                        return HandoverOutcome(self.version, self.pid)
        except TimeoutError:
            error = f"it was not ready within {timeout:g}s"
        except (OSError, EOFError, ValueError) as exc:
            error = await self._exit_reason(loop, exc)
        self.stop()
        if self.version == "(version unknown)":
            self.version = await loop.run_in_executor(None, self._installed_version)
        return HandoverOutcome(self.version, self.pid, error)

    async def _exit_reason(self, loop: asyncio.AbstractEventLoop, exc: BaseException) -> str:
        # The channel closed: the process is exiting (give it a moment to be reaped).
        for _ in range(20):
            code = self.process.poll()
            if code is not None:
                return _exit_status(code)
            await asyncio.sleep(0.1)
        return f"its hand-over channel failed ({exc or type(exc).__name__})"

    def _installed_version(self) -> str:
        """``adit --version`` of the installed code (the successor never said its own)."""
        try:
            out = subprocess.run(
                [self.argv[0], "--version"] if len(self.argv) > 0 else [],
                capture_output=True,
                text=True,
                timeout=VERSION_TIMEOUT,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError, ValueError):
            return "(version unknown)"
        words = out.stdout.split()
        if out.returncode == 0 and len(words) >= 3 and words[:2] == ["adit", "version"]:
            return f"adit {words[2]}"
        return "(version unknown)"

    def tell_main(self, tunnels: list[uuid.UUID]) -> None:
        """Say ``main`` (after systemd was told the new main pid) and close the channel."""
        line = f"main {','.join(str(t) for t in tunnels)}\n".encode()
        try:
            self._channel.setblocking(True)
            self._channel.settimeout(MAIN_TIMEOUT)
            self._channel.sendall(line)
        except OSError as exc:
            log.warning("hand-over: could not tell the new edge it is main: %s", exc)
        finally:
            self._channel.close()

    def stop(self) -> None:
        """Stop a successor that will not take over (it owns nothing yet)."""
        self._channel.close()
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


def _exit_status(code: int) -> str:
    if code < 0:
        return f"it was killed by signal {code * -1}"
    return f"it exited with status {code} before it was ready (its log says why)"


async def _read_line(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> str:
    """One line from a non-blocking stream socket, read a byte at a time up to a newline
    (the lines are few and short: no buffer to keep between calls). EOFError at the end."""
    line = bytearray()
    while True:
        chunk = await loop.sock_recv(sock, 1)
        if not chunk:
            raise EOFError("the other side closed the hand-over channel")
        if chunk == b"\n":
            return line.decode("utf-8", "replace")
        line += chunk
        if len(line) > MAX_LINE:
            raise ValueError("hand-over line too long")


# -- QUIC datagrams the successor relays to its predecessor ----------------------------------


def encode_relayed(data: bytes, addr: tuple[str, int]) -> bytes:
    """One relayed datagram: ``host port\\n`` then the packet."""
    return f"{addr[0]} {addr[1]}\n".encode() + data


def decode_relayed(message: bytes) -> tuple[bytes, tuple[str, int]] | None:
    """The packet and its sender of a relayed datagram (None: malformed)."""
    head, sep, data = message.partition(b"\n")
    host, _, port = head.decode("ascii", "replace").rpartition(" ")
    if not sep or not host or not port.isdigit():
        return None
    return data, (host, int(port))


class RelaySender:
    """The successor's side: datagrams of the predecessor's QUIC connections go to it."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock: socket.socket | None = sock

    def __call__(self, data: bytes, addr: tuple[str, int]) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sock.send(encode_relayed(data, addr))
        except BlockingIOError:
            pass  # the predecessor is behind: this datagram is lost, as UDP may lose it
        except OSError:
            # The predecessor is gone (its connections with it): nothing more to relay.
            sock.close()
            self._sock = None


RelayTarget = Callable[[bytes, tuple[str, int]], None]


def handover_metrics(failures: int) -> bytes:
    """``adit_edge_handover_failures_total`` in Prometheus's text format (appended to the
    edge's ``/metrics``): alert when it grows, an upgrade did not take."""
    return (
        "# HELP adit_edge_handover_failures_total Hand-overs to a new edge process (SIGUSR2) "
        "that failed (this process kept serving)\n"
        "# TYPE adit_edge_handover_failures_total counter\n"
        f"adit_edge_handover_failures_total {failures}\n"
    ).encode()
