"""The tunnel listener's door: a client address that dials too fast is turned away before TLS.

A TLS handshake costs the edge a few milliseconds of CPU, more than anything else a new
tunnel connection costs before it is registered. A tenant whose connections the edge closes
(for a flood, or a registration it refuses) and that dials again at once would make it pay that
many times a second: ``loadtests/attack.py`` measured ~130 handshakes a second taking half a
core and moving another tenant's p99 from 2 to 10-17 ms. So each client address gets a token
bucket of new connections (the one rate limiter, :class:`~adit.protocol.rate_limit.TokenBucket`);
a connection beyond it is closed as soon as it is accepted, before a byte of TLS is read.

The defaults (128 at once, then 16 a second) leave an honest connector far below them:
cloudflared and adit's connector dial four connections at start, spaced out, and back off (1 s,
doubling) when a dial fails, so thirty connectors behind one NAT address restarting together
fit in the burst, and a hundred are all back within some twenty seconds; an attacker on one
address costs the edge some 6 % of a core in handshakes.

:class:`GatedListener` accepts connections itself (a reader callback on the listening socket)
and hands only an admitted one to ``loop.connect_accepted_socket`` for its handshake. Accepting
in the callback (not in a task awaiting ``loop.sock_accept``) means closing the listener never
drops a connection the kernel already handed over: a hand-over (:mod:`adit.edge.handover`)
closes it while the new process accepts from the same queue. (Upgrading an accepted
plain transport with ``loop.start_tls`` would have been neater, but uvloop's server-side
``start_tls`` never completed a handshake here.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from adit.edge.client_hello import CLASSICAL_GROUPS, HANDSHAKE_FAILURE_ALERT, offered_groups
from adit.protocol.rate_limit import TokenBucket
from adit.tunnelio import release_waiter

__all__ = ["Admission", "DialRates", "GatedListener"]

log = logging.getLogger("adit.edge.tunnel")

#: Connections the kernel queues while the accept loop is busy (a reconnect storm after an
#: edge restart: every connector's connections at once).
BACKLOG = 1024
#: How long the accept loop waits after a failed accept (out of descriptors) before it tries
#: again.
ACCEPT_RETRY = 0.1
#: Connections accepted per wake-up at most (the loop serves the rest meanwhile).
ACCEPT_BATCH = 64


@dataclass(frozen=True, slots=True)
class DialRates:
    """New connections a client address may open: ``burst`` at once, then ``rate`` a second."""

    rate: float = 16.0
    burst: float = 128.0
    #: Addresses remembered at most (the quietest are forgotten first).
    max_addresses: int = 100_000


#: Bytes of a ClientHello peeked at (cloudflared's, post-quantum share included, is ~1.5 KiB).
_PEEK = 4096
#: How long the refused client's last bytes are read before the socket closes.
_ALERT_LINGER = 1.0
#: One warning per address this often (seconds), for this many addresses at most.
_REFUSAL_LOG_EVERY = 60.0
_REFUSALS_REMEMBERED = 10_000


@dataclass(frozen=True, slots=True)
class Admission:
    """Which accepted connections a :class:`GatedListener` lets start a TLS handshake."""

    #: New connections per client address (None: no rate, as on the public listener, where
    #: a carrier NAT's browsers share one address).
    rates: DialRates | None = None
    #: Handshakes in progress at once, and from one client address: a client that connects
    #: and never finishes its handshake holds a socket until the handshake timeout, and these
    #: bound how many it can hold (after the handshake the listener's own caps count it).
    max_pending: int = 10_000
    max_pending_per_ip: int = 256


class _Doors:
    """The token bucket of each client address (bounded: full buckets are forgotten)."""

    def __init__(self, rates: DialRates) -> None:
        self.rates = rates
        self._buckets: dict[str, TokenBucket] = {}

    def admit(self, address: str, now: float) -> bool:
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= self.rates.max_addresses:
                self._forget_full(now)
            bucket = self._buckets[address] = TokenBucket(self.rates.rate, self.rates.burst)
        return bucket.take(now)

    def _forget_full(self, now: float) -> None:
        # A full bucket is what a new one would be: nothing is lost by forgetting it.
        full = [a for a, b in self._buckets.items() if b.tokens(now) >= b.burst]
        for address in full or list(self._buckets)[: len(self._buckets) // 2]:
            del self._buckets[address]


class HelloRouter(Protocol):
    """Another TLS context for some ClientHellos (see ``GatedListener(hello_router=)``)."""

    #: Whether any ClientHello could be routed now (else none is peeked at).
    @property
    def pending(self) -> bool: ...

    def context_for_hello(self, hello: bytes) -> ssl.SSLContext | None:
        """The context for the connection whose first bytes are ``hello`` (None: the
        listener's own)."""


class GatedListener:
    """A TLS listening socket whose accept loop admits a client address before its handshake.

    What it offers the edge is what it needs of an ``asyncio.Server``: :attr:`sockets`,
    :meth:`close` and :meth:`wait_closed`.
    """

    def __init__(
        self,
        sock: socket.socket,
        protocol: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext,
        handshake_timeout: float,
        admission: Admission,
        *,
        check_groups: bool = False,
        hello_router: HelloRouter | None = None,
    ) -> None:
        self.sockets = [sock]
        #: Picks another context from the peeked ClientHello while it has reason to (an ACME
        #: TLS-ALPN-01 validation, which must never be what a visitor gets).
        self._hello_router = hello_router
        #: Peek at each ClientHello and refuse one offering only key exchanges OpenSSL lacks
        #: (the tunnel listener: cloudflared --post-quantum over HTTP/2).
        self._check_groups = check_groups
        self._protocol = protocol
        self._context = context
        self._handshake_timeout = handshake_timeout
        self._admission = admission
        self._doors = _Doors(admission.rates) if admission.rates is not None else None
        self._pending: dict[str, int] = {}
        self._loop = asyncio.get_running_loop()
        self._handshakes: set[asyncio.Task[None]] = set()
        self._refusals_logged: dict[str, float] = {}
        self._closed = False
        self._retry: asyncio.TimerHandle | None = None
        self._loop.add_reader(sock.fileno(), self._accept)

    @classmethod
    def bind(
        cls,
        host: str,
        port: int,
        protocol: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext,
        handshake_timeout: float,
        admission: Admission,
        *,
        check_groups: bool = False,
        hello_router: HelloRouter | None = None,
    ) -> GatedListener:
        """Listen on ``host:port`` (``SO_REUSEADDR``, as ``loop.create_server`` does)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=BACKLOG)
        sock.setblocking(False)
        return cls(
            sock,
            protocol,
            context,
            handshake_timeout,
            admission,
            check_groups=check_groups,
            hello_router=hello_router,
        )

    def close(self) -> None:
        """Stop accepting and close the listening socket (accepted connections live on)."""
        if self._closed:
            return
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        for sock in self.sockets:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(sock.fileno())
            sock.close()

    async def wait_closed(self) -> None:
        """For symmetry with asyncio.Server (nothing is left running once closed)."""

    def _admit(self, address: str) -> str:
        """Why a connection from ``address`` is turned away ("" when it is let in)."""
        admission = self._admission
        if len(self._handshakes) >= admission.max_pending:
            return "too many handshakes in progress"
        if self._pending.get(address, 0) >= admission.max_pending_per_ip:
            return "too many of its handshakes in progress"
        if self._doors is not None and not self._doors.admit(address, self._loop.time()):
            return "it dials too fast"
        return ""

    def _resume(self) -> None:
        self._retry = None
        if not self._closed:
            self._loop.add_reader(self.sockets[0].fileno(), self._accept)

    def _accept(self) -> None:
        sock = self.sockets[0]
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # Out of descriptors, or the like: wait a moment rather than spin.
                log.warning("listener cannot accept: %s", exc)
                self._loop.remove_reader(sock.fileno())
                self._retry = self._loop.call_later(ACCEPT_RETRY, self._resume)
                return
            conn.setblocking(False)
            address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
            refusal = self._admit(address)
            if refusal:
                log.debug("turned away a connection from %s: %s", address, refusal)
                conn.close()
                continue
            self._pending[address] = self._pending.get(address, 0) + 1
            task = self._loop.create_task(self._handshake(conn, address))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _peek_hello(self, conn: socket.socket) -> bytes:
        """The first bytes the client sent (left for OpenSSL); b"" when none came in time."""
        readable: asyncio.Future[None] = self._loop.create_future()
        fd = conn.fileno()
        self._loop.add_reader(fd, release_waiter, readable)
        try:
            async with asyncio.timeout(self._handshake_timeout):
                await readable
        except TimeoutError:
            return b""
        finally:
            self._loop.remove_reader(fd)
        try:
            return conn.recv(_PEEK, socket.MSG_PEEK)
        except OSError:
            return b""

    async def _offers_nothing_we_have(self, conn: socket.socket) -> bool:
        """Whether the client's ClientHello (peeked, left for OpenSSL) offers key exchanges
        only this edge's OpenSSL lacks. Waits for its first bytes (the handshake timeout
        bounds it); False when unsure."""
        readable: asyncio.Future[None] = self._loop.create_future()
        fd = conn.fileno()
        self._loop.add_reader(fd, release_waiter, readable)
        try:
            async with asyncio.timeout(self._handshake_timeout):
                await readable
        except TimeoutError:
            return False
        finally:
            self._loop.remove_reader(fd)
        try:
            head = conn.recv(_PEEK, socket.MSG_PEEK)
        except OSError:
            return False
        groups = offered_groups(head)
        return bool(groups) and groups is not None and not groups & CLASSICAL_GROUPS

    async def _refuse_groups(self, conn: socket.socket, address: str) -> None:
        """Refuse a client that offers no key exchange OpenSSL has, with TLS's own alert and
        a reason in the log (once a minute per address: such a client redials at once)."""
        now = self._loop.time()
        if now - self._refusals_logged.get(address, -_REFUSAL_LOG_EVERY) >= _REFUSAL_LOG_EVERY:
            if len(self._refusals_logged) > _REFUSALS_REMEMBERED:
                self._refusals_logged.clear()
            self._refusals_logged[address] = now
            log.warning(
                "TLS handshake from %s refused: it offers no key exchange this edge's TLS (%s) "
                "supports (a connector with --post-quantum offers only X25519MLKEM768, which "
                "the edge does over QUIC: use --protocol quic)",
                address,
                ssl.OPENSSL_VERSION,
            )
        with contextlib.suppress(OSError, TimeoutError):
            await self._loop.sock_sendall(conn, HANDSHAKE_FAILURE_ALERT)
            conn.shutdown(socket.SHUT_WR)
            # What the client still sends is read, so that the close is no reset that would
            # overtake the alert.
            async with asyncio.timeout(_ALERT_LINGER):
                while await self._loop.sock_recv(conn, 4096):
                    pass

    async def _handshake(self, conn: socket.socket, address: str) -> None:
        try:
            if self._check_groups and await self._offers_nothing_we_have(conn):
                await self._refuse_groups(conn, address)
                conn.close()
                return
            context = self._context
            router = self._hello_router
            if router is not None and router.pending:
                context = router.context_for_hello(await self._peek_hello(conn)) or context
            await self._loop.connect_accepted_socket(
                self._protocol,
                conn,
                ssl=context,
                ssl_handshake_timeout=self._handshake_timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            log.debug("TLS handshake failed: %s", exc or type(exc).__name__)
            conn.close()
        finally:
            left = self._pending.pop(address, 1) - 1
            if left:
                self._pending[address] = left
