"""Live log records of every process of a connector, for ``tail`` (cloudflared's management
logger, ``management/logger.go``, spread over processes).

Each process (the supervisor and every worker) publishes its records on a ZeroMQ XPUB socket,
``ipc://<runtime dir>/logs-<pid>``, through :class:`LogPublisher`, a logging handler. It costs
nothing while nobody listens: XPUB tells the publisher when the first subscriber comes and the
last goes, and only then are records encoded and sent. While someone listens the root logger
is lowered to debug (``tail --level debug`` sees debug lines, as cloudflared's management
writer gets every level), and the console and file handlers keep the configured level.

A worker serving ``/logs`` subscribes to every publisher of the directory with one
:class:`LogHub`, which hands each record to its :class:`LogSession`\\ s. Nothing ever blocks a
process on a slow reader: a publisher drops what its send buffer cannot take (its sequence
numbers show the gap to the hub), and a session holds a bounded queue and counts what did not
fit; the count reaches the client as a log entry of its own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import glob
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import msgspec
import zmq
import zmq.asyncio

from adit.logs.formats import EVENT_ATTR, record_fields
from adit.protocol.management_logs import LogEntry, StreamingFilters

__all__ = [
    "METRICS_ADDRESS_FILE",
    "LogHub",
    "LogPublisher",
    "LogSession",
    "current_hub",
    "install_hub",
]

log = logging.getLogger("adit.logs.live")

_PREFIX: Final = "logs-"
#: The supervisor's metrics address (``host:port``), in the runtime directory, for the
#: management service's ``/metrics``.
METRICS_ADDRESS_FILE: Final = "metrics-address"
#: Records a publisher queues for its subscribers before it drops (per subscriber).
_SEND_HWM: Final = 1000
#: Records a hub takes before the publishers' queues (the rest wait there, then drop).
_RECEIVE_HWM: Final = 10000
#: How often a publisher looks for (un)subscriptions, and a hub for new publishers (a
#: directory listing, only while someone tails). A hub's first look can come before a publisher
#: binds (a prestarted worker serves ``tail`` while the supervisor still starts): the interval
#: is how long that publisher's lines are missed.
_POLL_INTERVAL: Final = 0.25
_RESCAN_INTERVAL: Final = 0.25
#: Entries, and bytes of them, a session holds for its client before it counts drops instead.
SESSION_CAPACITY: Final = 512
SESSION_BYTES: Final = 1024 * 1024

_LEVELS: Final = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "error",
}


class _Wire(msgspec.Struct, array_like=True, frozen=True):
    """One record between processes."""

    time: str
    level: str
    event: str
    message: str
    fields: dict[str, object]
    pid: int
    seq: int


_encode = msgspec.json.Encoder(enc_hook=str).encode
_decode = msgspec.json.Decoder(_Wire).decode


def _exception_text(record: logging.LogRecord) -> str:
    assert record.exc_info is not None
    return logging.Formatter().formatException(record.exc_info)


def _timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))


class LogPublisher(logging.Handler):
    """This process's records, to whoever subscribes (see the module's docstring)."""

    def __init__(self, socket: zmq.Socket[bytes], path: str, context: Mapping[str, object]):
        super().__init__(logging.NOTSET)
        self._socket = socket
        self._path = path
        self._context = dict(context)
        self._pid = os.getpid()
        self._seq = 0
        self.subscribed = False
        #: The configured root level while it is lowered for subscribers.
        self._configured: int | None = None

    @classmethod
    def bind(
        cls,
        context: zmq.Context[zmq.Socket[bytes]],
        runtime_dir: Path,
        fields: Mapping[str, object],
    ) -> LogPublisher:
        """Bind this process's socket and install the handler on the root logger."""
        socket = context.socket(zmq.XPUB)
        socket.setsockopt(zmq.SNDHWM, _SEND_HWM)
        socket.setsockopt(zmq.LINGER, 0)
        path = os.path.join(os.fspath(runtime_dir), f"{_PREFIX}{os.getpid()}")
        socket.bind(f"ipc://{path}")
        publisher = cls(socket, path, fields)
        logging.getLogger().addHandler(publisher)
        return publisher

    def emit(self, record: logging.LogRecord) -> None:
        """Send the record when someone listens (called with the handler's lock held)."""
        if not self.subscribed:
            # A subscription may be waiting on the socket since the last poll: take it now,
            # so that a line logged just after ``tail`` connected is not lost to the poll's
            # interval (that gap grows with the machine's load). Cheap: no record is built,
            # and a connector that nobody tails logs little at its configured level.
            self.poll()
            if not self.subscribed:
                return
        # Our own lines, and what other libraries have to warn about (their debug chatter,
        # hpack's per-frame lines, say, is not the connector's log).
        if record.levelno < logging.WARNING and not record.name.startswith("adit"):
            return
        self._seq += 1
        try:
            fields = {**self._context, **record_fields(record)}
            if record.exc_info:
                fields.setdefault("error", _exception_text(record))
            payload = _encode(
                _Wire(
                    _timestamp(record.created),
                    _LEVELS.get(record.levelno, "info"),
                    str(getattr(record, EVENT_ATTR, "cloudflared")),
                    record.getMessage(),
                    fields,
                    self._pid,
                    self._seq,
                )
            )
            self._socket.send(payload, zmq.NOBLOCK)
        except zmq.Again:
            pass  # the subscriber's queue is full: the gap in ``seq`` tells it
        except Exception:
            # A log line must never take its caller down (logging's own policy).
            self.handleError(record)

    def poll(self) -> None:
        """Take (un)subscriptions, and lower or restore the root level to match."""
        self.acquire()
        try:
            while True:
                try:
                    message = self._socket.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if message[:1] == b"\x01":
                    self.subscribed = True
                elif message[:1] == b"\x00":
                    self.subscribed = False
        except zmq.ZMQError:
            return
        finally:
            self.release()
        self._apply_level()

    def _apply_level(self) -> None:
        root = logging.getLogger()
        if self not in root.handlers:
            root.addHandler(self)  # logging was configured again: stay on
        others = [h for h in root.handlers if h is not self]
        if self.subscribed:
            if root.level != logging.DEBUG:
                # Set at start, or changed by a reload since: what the other handlers keep.
                self._configured = root.level
                for handler in others:
                    handler.setLevel(root.level)
                root.setLevel(logging.DEBUG)
        elif self._configured is not None:
            root.setLevel(self._configured)
            for handler in others:
                handler.setLevel(logging.NOTSET)
            self._configured = None

    async def watch(self) -> None:
        """Poll for subscribers for as long as the process runs."""
        while True:
            self.poll()
            await asyncio.sleep(_POLL_INTERVAL)

    def shutdown(self) -> None:
        """Remove the handler, restore the level, close and unlink the socket."""
        logging.getLogger().removeHandler(self)
        self.subscribed = False
        self._apply_level()
        self.acquire()
        try:
            self._socket.close(0)
        finally:
            self.release()
        with contextlib.suppress(OSError):
            os.unlink(self._path)


class LogSession:
    """One ``tail`` client's view: its filters, a bounded queue, and what it missed."""

    def __init__(
        self,
        filters: StreamingFilters,
        capacity: int = SESSION_CAPACITY,
        max_bytes: int = SESSION_BYTES,
    ) -> None:
        self.filters = filters
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._queue: collections.deque[tuple[LogEntry, int]] = collections.deque()
        self._bytes = 0
        self._ready = asyncio.Event()
        #: Entries that passed the filters but found the queue full (or were lost upstream).
        self.dropped = 0

    def offer(self, entry: LogEntry, size: int = 0) -> None:
        """Queue ``entry`` (about ``size`` bytes) if it passes the filters; never waits."""
        if not self.filters.accepts(entry.level, entry.event):
            return
        if len(self._queue) >= self._capacity or (
            self._queue and self._bytes + size > self._max_bytes
        ):
            self.dropped += 1
        else:
            self._queue.append((entry, size))
            self._bytes += size
        self._ready.set()

    def lost(self, count: int) -> None:
        """Records a publisher could not send (its queue for us was full)."""
        self.dropped += count
        self._ready.set()

    async def next_batch(self, limit: int = 100) -> tuple[list[LogEntry], int]:
        """The entries queued (at most ``limit``) and the drops counted since last asked,
        once there is either."""
        while not self._queue and not self.dropped:
            self._ready.clear()
            await self._ready.wait()
        batch = []
        for _ in range(min(limit, len(self._queue))):
            entry, size = self._queue.popleft()
            self._bytes -= size
            batch.append(entry)
        dropped, self.dropped = self.dropped, 0
        return batch, dropped


class LogHub:
    """A worker's subscription to every publisher, while it has sessions."""

    def __init__(self, context: zmq.asyncio.Context, runtime_dir: Path) -> None:
        self._context = context
        #: The connector's private runtime directory (ipc sockets, the metrics address).
        self.runtime_dir = runtime_dir
        self.sessions: set[LogSession] = set()
        self._task: asyncio.Task[None] | None = None
        self._socket: zmq.asyncio.Socket | None = None
        self._last_seq: dict[int, int] = {}

    def add(self, session: LogSession) -> None:
        """Start giving ``session`` records (subscribing if it is the first)."""
        self.sessions.add(session)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    def remove(self, session: LogSession) -> None:
        """Stop; the last session gone closes the subscription (publishers go quiet)."""
        self.sessions.discard(session)
        if not self.sessions and self._task is not None:
            self._task.cancel()
            self._task = None

    def close(self) -> None:
        """Stop at once (the process is ending: its ZeroMQ context is about to go)."""
        self.sessions.clear()
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None

    async def _run(self) -> None:
        socket = self._socket = self._context.socket(zmq.SUB)
        socket.setsockopt(zmq.RCVHWM, _RECEIVE_HWM)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SUBSCRIBE, b"")
        connected: set[str] = set()
        self._last_seq.clear()
        loop = asyncio.get_running_loop()
        rescan = 0.0
        try:
            while True:
                if loop.time() >= rescan:
                    # Workers respawn with new pids: their publishers are found here.
                    pattern = os.path.join(os.fspath(self.runtime_dir), f"{_PREFIX}*")
                    for path in glob.glob(pattern):
                        if path not in connected:
                            connected.add(path)
                            try:
                                socket.connect(f"ipc://{path}")
                            except zmq.ZMQError as exc:
                                log.debug("cannot subscribe to %s: %s", path, exc)
                    rescan = loop.time() + _RESCAN_INTERVAL
                if not await socket.poll(int(_RESCAN_INTERVAL * 1000)):
                    continue
                for _ in range(1000):  # bounded: other tasks get the loop between batches
                    try:
                        # zmq.asyncio answers a non-blocking recv with a future already done.
                        payload = await socket.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._dispatch(payload)
        finally:
            socket.close(0)
            if self._socket is socket:
                self._socket = None

    def _dispatch(self, payload: bytes) -> None:
        try:
            wire = _decode(payload)
        except msgspec.DecodeError:
            return
        last = self._last_seq.get(wire.pid)
        self._last_seq[wire.pid] = wire.seq
        if last is not None and wire.seq > last + 1:
            for session in self.sessions:
                session.lost(wire.seq - last - 1)
        entry = LogEntry(wire.time, wire.level, wire.message, wire.event, wire.fields or None)
        for session in self.sessions:
            session.offer(entry, len(payload))


_hub: LogHub | None = None


def install_hub(context: zmq.asyncio.Context, runtime_dir: Path) -> LogHub:
    """Make this process's hub available (a worker, once its ipc context exists)."""
    global _hub  # noqa: PLW0603 - one per process, as logging itself is
    _hub = LogHub(context, runtime_dir)
    return _hub


def current_hub() -> LogHub | None:
    """This process's hub, or None before :func:`install_hub`."""
    return _hub
