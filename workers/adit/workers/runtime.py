"""A worker's data plane: its edge connections and the streams they carry.

The worker process (``adit.workers.process``) owns ipc and signals; this class owns the
connections. It never touches ZeroMQ: events go out through the ``publish`` callback.

Each assigned connection index runs one loop: dial → TLS → register → serve until the
connection is lost → back off (jittered, never zero) → again. The first index registers
before the others dial, as cloudflared does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import ssl
import sys
import uuid
from collections.abc import Callable

from adit.config.ingress import Ingress
from adit.ipc.messages import (
    ConnectionLost,
    ConnectionRegistered,
    ConnectionUnregistered,
    EdgeTarget,
    Event,
    IngressSnapshot,
    RegistrationRefused,
    StatsSnapshot,
    WorkerSettings,
)
from adit.ipc.snapshot import build_ingress
from adit.protocol.headers import FEATURE_SERIALIZED_REQUEST_HEADERS
from adit.protocol.registration import (
    ClientInfo,
    ConnectionDetails,
    ConnectionOptions,
    RegistrationError,
    TunnelAuth,
)
from adit.workers.backoff import Backoff
from adit.workers.edge_connection import EdgeConnection, Registration
from adit.workers.proxy import OriginProxy

log = logging.getLogger("adit.workers")

#: SNI cloudflared uses for HTTP/2 (PROTOCOL.md §1.4): the edge's certificate must match it.
EDGE_SNI = "h2.cftunnel.com"
#: TCP connect plus TLS handshake, as cloudflared's fixed 15 s.
DIAL_TIMEOUT = 15.0
STATS_INTERVAL = 1.0

#: What adit's connector tells the edge it supports.
FEATURES = ("serialized_headers", FEATURE_SERIALIZED_REQUEST_HEADERS)


def go_arch() -> str:
    """``GOOS_GOARCH`` as cloudflared reports it (e.g. ``linux_amd64``)."""
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
        machine, machine
    )
    return f"{sys.platform}_{arch}"


def edge_tls_context(ca_pem: str) -> ssl.SSLContext:
    """Verify the edge against ``ca_pem`` only (cloudflared's ``--cacert``), else system roots."""
    # With cadata the default context trusts only that CA, not the system store.
    context = ssl.create_default_context(cadata=ca_pem or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class WorkerRuntime:
    """Dials the edge for each assigned connection index, registers, serves streams."""

    def __init__(self, settings: WorkerSettings, publish: Callable[[Event], None]) -> None:
        self.settings = settings
        self.publish = publish
        self.connector_id = uuid.UUID(settings.connector_id)
        self.proxy = OriginProxy(self.connector_id, settings.tags)
        self._ingress: Ingress = build_ingress(settings.ingress)
        self.ingress_version = settings.ingress.version
        self.connections: dict[int, EdgeConnection] = {}
        self._draining = asyncio.Event()
        self._drained = asyncio.Event()
        self._grace = settings.grace_period
        self._first_registered = asyncio.Event()
        self._tls = edge_tls_context(settings.edge_ca_pem)
        self.fatal: str | None = None

    # -- public surface -------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until :meth:`begin_drain` finished draining."""
        indexes = self.settings.conn_indexes
        loops = [
            asyncio.ensure_future(self._maintain(i, first=(n == 0))) for n, i in enumerate(indexes)
        ]
        stats = asyncio.ensure_future(self._report_stats())
        try:
            await self._draining.wait()
            await self._drain()
        finally:
            for task in [*loops, stats]:
                task.cancel()
            for task in [*loops, stats]:
                with contextlib.suppress(BaseException):
                    await task
            self._publish_stats()
            await self.proxy.aclose()

    def begin_drain(self, grace: float) -> None:
        """Unregister all connections, let in-flight streams finish within ``grace`` seconds."""
        self._grace = grace
        self._draining.set()

    def apply_ingress(self, snapshot: IngressSnapshot) -> None:
        """Swap the ingress rules atomically; stale versions are ignored."""
        if snapshot.version <= self.ingress_version:
            return
        self._ingress = build_ingress(snapshot)
        self.ingress_version = snapshot.version

    def ingress(self) -> Ingress:
        """The rules in force (read per request, so a swap applies to the next request)."""
        return self._ingress

    @property
    def active_streams(self) -> int:
        """Streams in flight across all connections."""
        return sum(len(c.tasks) for c in self.connections.values())

    # -- connection loops ---------------------------------------------------------------------

    def _registration(self, conn_index: int, attempts: int) -> Registration:
        s = self.settings
        client = ClientInfo(
            client_id=self.connector_id,
            features=tuple(s.features) or FEATURES,
            version=s.version,
            arch=go_arch(),
        )
        options = ConnectionOptions(client=client, num_previous_attempts=min(attempts, 255))
        push = s.push_local_config and conn_index == 0
        return Registration(
            auth=TunnelAuth(s.account_tag, s.tunnel_secret),
            tunnel_id=uuid.UUID(s.tunnel_id),
            conn_index=conn_index,
            options=options,
            local_config=s.ingress.local_config_json if push else b"",
        )

    def _edge_for(self, conn_index: int, turn: int) -> EdgeTarget:
        edges = self.settings.edges
        return edges[(conn_index + turn) % len(edges)]

    async def _maintain(self, conn_index: int, *, first: bool) -> None:
        if not first:
            await self._first_registered.wait()
        backoff = Backoff(retries=self.settings.retries)
        turn = 0
        while not self._draining.is_set():
            edge = self._edge_for(conn_index, turn)
            error = await self._serve_once(conn_index, edge, backoff)
            if self._draining.is_set():
                return
            if error == "EDUPCONN":
                turn += 1  # another address, at once (cloudflared's rotation)
                delay = 0.1
            else:
                delay = backoff.next_delay()
            self.publish(
                ConnectionLost(self.settings.slot, conn_index, error or "connection closed", delay)
            )
            log.warning(
                "connIndex=%d connection to %s:%d ended: %s; retrying in %.1fs",
                conn_index,
                edge.host,
                edge.port,
                error or "connection closed",
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._draining.wait(), delay)

    async def _serve_once(self, conn_index: int, edge: EdgeTarget, backoff: Backoff) -> str:
        loop = asyncio.get_running_loop()
        registration = self._registration(conn_index, backoff.attempts)
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    lambda: EdgeConnection(registration, self.proxy, self.ingress),
                    edge.host,
                    edge.port,
                    ssl=self._tls,
                    server_hostname=EDGE_SNI,
                    ssl_handshake_timeout=DIAL_TIMEOUT,
                ),
                DIAL_TIMEOUT,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            return (
                f"failed to dial the edge at {edge.host}:{edge.port}: {exc or type(exc).__name__}"
            )
        try:
            result = await asyncio.wait_for(asyncio.shield(connection.registered), DIAL_TIMEOUT)
        except (ConnectionError, TimeoutError) as exc:
            connection.close("registration failed")
            return f"registration did not complete: {exc or 'timeout'}"
        if isinstance(result, RegistrationError):
            self.publish(
                RegistrationRefused(
                    self.settings.slot, conn_index, result.cause, result.should_retry
                )
            )
            log.error(
                "connIndex=%d the edge refused the registration: %s", conn_index, result.cause
            )
            connection.close("registration refused")
            return "EDUPCONN" if result.cause == "EDUPCONN" else result.cause
        assert isinstance(result, ConnectionDetails)
        self.connections[conn_index] = connection
        backoff.reset()
        self.publish(
            ConnectionRegistered(
                self.settings.slot,
                conn_index,
                str(result.uuid),
                result.location_name,
                f"{edge.host}:{edge.port}",
            )
        )
        log.info(
            "Registered tunnel connection connIndex=%d connection=%s location=%s protocol=http2",
            conn_index,
            result.uuid,
            result.location_name,
        )
        self._first_registered.set()
        if registration.local_config:
            connection.spawn(connection.push_local_config_quietly())
        reason = await connection.lost
        self.connections.pop(conn_index, None)
        return connection.failure or f"lost connection with the edge: {reason}"

    # -- drain -----------------------------------------------------------------------------

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._grace
        connections = list(self.connections.items())
        await asyncio.gather(*(c.unregister() for _, c in connections), return_exceptions=True)
        for conn_index, _ in connections:
            self.publish(ConnectionUnregistered(self.settings.slot, conn_index))
            log.info("Unregistered tunnel connection connIndex=%d", conn_index)
        await asyncio.gather(*(c.drain(deadline) for _, c in connections), return_exceptions=True)

    async def _report_stats(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            self._publish_stats()

    def _publish_stats(self) -> None:
        stats = self.proxy.stats
        self.publish(
            StatsSnapshot(
                slot=self.settings.slot,
                total_requests=stats.total_requests,
                request_errors=stats.request_errors,
                concurrent_requests=stats.concurrent_requests,
                responses_by_code={str(k): v for k, v in stats.responses_by_code.items()},
            )
        )
