"""A worker's data plane: its edge connections and the streams they carry.

The worker process (``adit.workers.process``) owns ipc and signals; this class owns the
connections. It never touches ZeroMQ: events go out through the ``publish`` callback.

Each assigned connection index is a :class:`ConnectionSlot` run by one loop: dial → TLS →
register → serve until the connection is lost → back off (jittered, never zero) → again.
Addresses are spread over edge locations (``adit.workers.locations``); a dial error moves the
connection to a free address. Connection 0 registers before the others dial, as cloudflared
does; the others follow a short stagger apart.

Which transport a slot dials (QUIC or HTTP/2) is ``adit.workers.protocol_choice``'s: the
connect loop asks the slot's :class:`~adit.workers.protocol_choice.ConnectionProtocol` before
each dial (:meth:`WorkerRuntime._choose_protocol`) and reports every outcome to it (the
``record`` calls in :meth:`WorkerRuntime._connect`, :meth:`WorkerRuntime._install` and
:meth:`WorkerRuntime._serve`). Replacement dials (rolls, going home) reuse the protocol of
the connection they replace and report only a registration.

The origin side (:class:`~adit.workers.proxy.OriginProxy`: the config modules, httptools,
h2 and cryptography when used) is not needed to register: it is imported in a thread once
connection 0's first dial is done (during the dial the thread would take the GIL from the TLS
handshake and the registration), and a request that arrives before it is ready waits for it.

:meth:`WorkerRuntime.reconfigure` rolls the connections one at a time: a replacement is
dialled and registered (``replace_existing``, same index and connector id) while the old
connection still serves, then the old one is unregistered and drained, so no request fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import logging
import platform
import random
import ssl
import sys
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from adit.ipc.messages import (
    ConnectionLost,
    ConnectionRegistered,
    ConnectionUnregistered,
    ConnectorCounters,
    EdgeTarget,
    Event,
    IngressSnapshot,
    RegistrationRefused,
    RemoteConfigReceived,
    StatsSnapshot,
    UdpStats,
    WorkerSettings,
)
from adit.ipc.telemetry import RpcCallCounters
from adit.logs import fields
from adit.protocol.headers import FEATURE_SERIALIZED_REQUEST_HEADERS
from adit.protocol.registration import (
    ClientInfo,
    ConnectionDetails,
    ConnectionOptions,
    DuplicateConnection,
    RegistrationError,
    RegistrationRefusal,
    TunnelAuth,
)
from adit.workers.backoff import Backoff
from adit.workers.edge_connection import EdgeConnection, Registration
from adit.workers.flow_limit import FlowLimiter
from adit.workers.locations import fallback, home_address
from adit.workers.protocol_choice import (
    QUIC_HANDSHAKE_TIMEOUT,
    ConnectionProtocol,
    Outcome,
    Protocol,
    ProtocolSelector,
)
from adit.workers.remote_config import RemoteConfigs
from adit.workers.stream import TunnelStream

if TYPE_CHECKING:
    from adit.config.ingress import Ingress
    from adit.config.origin import OriginOptions, Rule
    from adit.protocol.quic_engine import TunnelQuicConfiguration, TunnelQuicConnection
    from adit.workers.management import ManagementService
    from adit.workers.proxy import OriginProxy
    from adit.workers.quic_telemetry import QuicTelemetry
    from adit.workers.quick_get import QuickOwner, QuickStream
    from adit.workers.udp_sessions import UdpCounters

log = logging.getLogger("adit.workers")

EdgeConnectionT = TypeVar("EdgeConnectionT", bound=EdgeConnection)

#: SNI cloudflared uses for HTTP/2 (PROTOCOL.md §1.4): the edge's certificate must match it.
EDGE_SNI = Protocol.HTTP2.server_name
#: TCP connect plus TLS handshake, as cloudflared's fixed 15 s.
DIAL_TIMEOUT = 15.0
#: cloudflared's ``handler`` label of the registration RPCs (tunnelrpc/metrics).
_REGISTRATION = "registration"
STATS_INTERVAL = 1.0
#: Spacing of the first dials of connections other than 0 (cloudflared: 1 s).
REGISTRATION_STAGGER = 0.5
#: How long a roll waits for one connection's replacement before moving on to the next.
ROLL_TIMEOUT = 2 * DIAL_TIMEOUT
#: The longest ``retry_after`` of a refusal that is honoured as given (a longer one is cut).
MAX_RETRY_AFTER = 600.0
#: How long a connection that moved off its home address waits before trying it again
#: (jittered), and the longest it waits when home answers but will not take it.
HOMECOMING_DELAY = 5.0
HOMECOMING_MAX_DELAY = 60.0

#: What adit's connector tells the edge it supports whatever ``--features`` says: cloudflared's
#: defaults (features/features.go ``defaultFeatures``) less what adit does not do (remote
#: configuration, management logs, ``support_quic_eof``), plus its own request headers.
FEATURES = ("serialized_headers", FEATURE_SERIALIZED_REQUEST_HEADERS, "support_datagram_v2")
#: Dropped from ``--features`` as cloudflared drops them (features/features.go).
DEPRECATED_FEATURES = frozenset({"support_datagram_v3", "support_datagram_v3_1"})


def announced_features(cli: Sequence[str], *, post_quantum: bool) -> tuple[str, ...]:
    """The features a connection announces, as cloudflared builds them (features/selector.go
    ``clientFeatures``): the defaults, ``--features`` (deprecated names removed),
    ``postquantum`` with ``--post-quantum``, and the datagram version: v3
    (``support_datagram_v3_2``, beside the default v2) when ``--features`` names it. Each
    once, in that order (cloudflared's order is a Go map's)."""
    extra = [*cli, *(["postquantum"] if post_quantum else [])]
    version = "support_datagram_v3_2" if "support_datagram_v3_2" in extra else "support_datagram_v2"
    announced: dict[str, None] = {}
    for feature in (*FEATURES, *extra, version):
        if feature not in DEPRECATED_FEATURES:
            announced[feature] = None
    return tuple(announced)


def go_arch() -> str:
    """``GOOS_GOARCH`` as cloudflared reports it (e.g. ``linux_amd64``)."""
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
        machine, machine
    )
    return f"{sys.platform}_{arch}"


def warm_up() -> None:
    """Do now, while the settings are still on their way, what the first dial does once.

    OpenSSL initialises itself at the first context (~2 ms) and ``ssl`` encodes the SNI with
    the ``idna`` codec, whose module and tables are imported at first use (~2 ms).
    """
    ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    EDGE_SNI.encode("idna")


def edge_tls_context(ca_pem: str) -> ssl.SSLContext:
    """Verify the edge against ``ca_pem`` only (cloudflared's ``--cacert``), else system roots."""
    # With cadata the default context trusts only that CA, not the system store.
    context = ssl.create_default_context(cadata=ca_pem or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class LazyProxy:
    """The worker's :class:`~adit.workers.proxy.OriginProxy`, built on first use.

    :meth:`preload` imports its module in a thread so that the first dial does not wait for
    it; a stream that arrives before that import finished awaits it (this loop never blocks on
    the import lock the thread holds).
    """

    MODULE = "adit.workers.proxy"
    #: Imported by :meth:`preload` too: what the first request needs besides the proxy (the
    #: ingress rules are rebuilt with these).
    ALSO = ("adit.ipc.snapshot",)

    def __init__(
        self,
        connector_id: uuid.UUID,
        tags: dict[str, str],
        tunnel_id: Callable[[], uuid.UUID | None] = lambda: None,
        label: Callable[[], str] = lambda: "",
        management: Callable[[], tuple[str, bool]] = lambda: ("management.argotunnel.com", True),
        flow_limiter: FlowLimiter | None = None,
    ) -> None:
        self._connector_id = connector_id
        self._tags = tags
        self._tunnel_id = tunnel_id
        self._label = label
        #: ``--management-hostname`` and ``--management-diagnostics`` as they are now.
        self._management_settings = management
        #: ``--max-active-flows``, shared with the worker's UDP sessions.
        self._flow_limiter = flow_limiter or FlowLimiter()
        self._proxy: OriginProxy | None = None
        self._loading: asyncio.Future[None] | None = None
        self._management: ManagementService | None = None

    @property
    def loaded(self) -> OriginProxy | None:
        """The proxy if it was built."""
        return self._proxy

    def get(self) -> OriginProxy:
        """The proxy, importing and building it now if needed."""
        if self._proxy is None:
            module = importlib.import_module(self.MODULE)
            self._proxy = module.OriginProxy(self._connector_id, self._tags)
        return self._proxy

    def preload(self) -> asyncio.Future[None]:
        """Start importing the proxy's module in a thread; the future ends when it did.

        Import errors are not raised here: :meth:`get` raises them where they matter.
        """
        if self._loading is None:
            self._loading = asyncio.ensure_future(self._import())
        return self._loading

    async def _import(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(_import_all, (*self.ALSO, self.MODULE))

    def serve(self, stream: TunnelStream, rule: Rule) -> Coroutine[Any, Any, None]:
        """Serve ``stream`` (see ``OriginProxy.serve``), starting the import if not yet begun."""
        if self._proxy is not None:
            return self._proxy.serve(stream, rule)
        loading = self.preload()
        if loading.done():
            return self.get().serve(stream, rule)
        return self._serve_when_loaded(loading, stream, rule)

    def serve_quick(self, stream: QuickStream, rule: Rule, owner: QuickOwner) -> bool:
        """Start ``stream`` on the callback path if it is the simple case (see
        ``OriginProxy.serve_quick``); False before the proxy is loaded."""
        proxy = self._proxy
        return proxy is not None and proxy.serve_quick(stream, rule, owner)

    async def _serve_when_loaded(
        self, loading: asyncio.Future[None], stream: TunnelStream, rule: Rule
    ) -> None:
        await asyncio.shield(loading)
        await self.get().serve(stream, rule)

    def close_management_streams(self) -> None:
        """The worker drains: ``tail`` streams end rather than hold it for its grace."""
        if self._management is not None:
            self._management.close_streams()

    def is_management_host(self, host: str) -> bool:
        """``host`` is ``--management-hostname`` (cloudflared's internal rule)."""
        return host.lower() == self._management_settings()[0]

    async def serve_management(self, stream: TunnelStream) -> None:
        """A request to the management hostname (``tail``; see
        :mod:`adit.workers.management`), imported on the first one."""
        if self._management is None:
            from adit.workers.management import ManagementService

            self._management = ManagementService(
                self._connector_id,
                self._tunnel_id,
                self._label,
                diagnostics=lambda: self._management_settings()[1],
            )
        await self._management.serve(stream)

    async def serve_private(self, stream: TunnelStream, options: OriginOptions) -> None:
        """Serve a private-network flow (see ``OriginProxy.serve_private``)."""
        await asyncio.shield(self.preload())
        await self.get().serve_private(stream, options, self._flow_limiter)

    @property
    def tcp_rate_limited(self) -> int:
        """Private TCP flows refused by ``--max-active-flows`` (0 before the proxy exists)."""
        return self._proxy.stats.tcp_rate_limited if self._proxy is not None else 0


def _import_all(names: tuple[str, ...]) -> None:
    for name in names:
        importlib.import_module(name)


def _build_ingress(snapshot: IngressSnapshot) -> Ingress:
    from adit.ipc.snapshot import build_ingress

    return build_ingress(snapshot)


def _needs_new_connections(old: WorkerSettings, new: WorkerSettings) -> bool:
    """Whether registered connections no longer match ``new`` (credentials, edge, CA)."""
    return (
        old.account_tag != new.account_tag
        or old.tunnel_secret != new.tunnel_secret
        or old.tunnel_id != new.tunnel_id
        or old.edges != new.edges
        or old.edge_ca_pem != new.edge_ca_pem
    )


class DialFailure(NamedTuple):
    """Why a dial and registration did not give a connection."""

    error: str
    #: The dial itself failed (TCP or TLS), not the registration.
    dial: bool
    #: The address answered with a reset at once: nothing listens there (yet).
    refused: bool = False
    #: The edge answered the registration with a refusal (its class carries the policy).
    refusal: RegistrationRefusal | None = None
    #: What the failure counts as for the protocol choice.
    outcome: Outcome = Outcome.FAILED


class ConnectionSlot:
    """One HA connection index of this worker: its address, backoff, protocol and live
    connection."""

    def __init__(
        self, conn_index: int, address: int, retries: int, transport: ConnectionProtocol
    ) -> None:
        self.conn_index = conn_index
        #: Index into ``WorkerSettings.edges`` this slot dials.
        self.address = address
        self.backoff = Backoff(retries=retries)
        #: Which protocol this index dials, and cloudflared's memory of its fallback.
        self.transport = transport
        self.connection: EdgeConnection | None = None
        #: The settings generation the live connection registered with.
        self.generation = 0
        #: Set when the slot should replace its connection (new settings); cleared by the slot.
        self.roll_wanted = asyncio.Event()
        self.rolls: list[asyncio.Future[bool]] = []
        self.removed = False
        self.task: asyncio.Task[None] | None = None
        #: Away from its home address: when (loop time) to try going back; None when home.
        self.home_at: float | None = None
        #: Tries to go home that reached it and failed (they space the next tries out).
        self.home_failures = 0

    def finish_rolls(self, ok: bool) -> None:
        """Tell whoever waits for this slot's roll how it went."""
        for future in self.rolls:
            if not future.done():
                future.set_result(ok)
        self.rolls.clear()


class WorkerRuntime:
    """Dials the edge for each assigned connection index, registers, serves streams."""

    def __init__(self, settings: WorkerSettings, publish: Callable[[Event], None]) -> None:
        self.settings = settings
        self.publish = publish
        self.connector_id = uuid.UUID(settings.connector_id)
        # The flow limit (--max-active-flows) of private TCP flows and UDP sessions together,
        # as cloudflared's; the UDP counters are built at the first QUIC dial, as their module.
        self._flow_limiter = FlowLimiter(settings.max_active_flows)
        self.proxy = LazyProxy(
            self.connector_id,
            settings.tags,
            self._tunnel_id,
            lambda: self.settings.label,
            lambda: (self.settings.management_hostname, self.settings.management_diagnostics),
            self._flow_limiter,
        )
        # Built once the config modules are imported (off the first dial's path, see run()).
        self._ingress: Ingress | None = None
        self._initial_ingress = settings.ingress
        self.ingress_version = settings.ingress.version
        #: The edge's configuration pushes, handed to the supervisor for every worker.
        self.remote = RemoteConfigs(
            settings.ingress,
            lambda version, config: self.publish(
                RemoteConfigReceived(self.settings.slot, version, config)
            ),
        )
        self.slots: dict[int, ConnectionSlot] = {}
        self._draining = asyncio.Event()
        self._grace = settings.grace_period
        self._first_attempted = asyncio.Event()
        self._tls = edge_tls_context(settings.edge_ca_pem)
        # Built at the first QUIC dial (aioquic is imported then, not at start).
        self._quic_config: TunnelQuicConfiguration | None = None
        #: The quic_client_* counts, from the first QUIC dial on (cloudflared registers them
        #: then).
        self.quic_telemetry: QuicTelemetry | None = None
        self._udp_counters: UdpCounters | None = None
        #: ``--protocol`` and which protocol each connection index last registered with.
        #: Fixed for the worker's life: the supervisor keeps the setting across reloads.
        self.protocols = ProtocolSelector(
            settings.protocol,
            retries=settings.retries,
            max_edge_addr_retries=settings.max_edge_addr_retries,
        )
        #: Old connections unregistered by a roll, finishing their streams.
        self._retiring: set[asyncio.Task[None]] = set()
        self._reconfiguring = asyncio.Lock()
        #: Clear while a reconfiguration hands out roll turns.
        self._rolls_idle = asyncio.Event()
        self._rolls_idle.set()
        #: Every connection whose socket is open (registered, retiring or refused).
        self._open: set[EdgeConnection] = set()
        #: Location names edges reported, by address index (reset when the addresses change).
        self._learned: dict[int, str] = {}
        #: Bumped by every reconfiguration that needs new connections.
        self._generation = 0
        #: Set (and replaced) at each bump: what a permanently refused slot waits for.
        self._new_generation = asyncio.Event()
        self._leader = settings.conn_indexes[0] if settings.conn_indexes else 0
        self._running = False
        self.fatal: str | None = None
        #: cloudflared_rpc_client_* and cloudflared_config_local_config_pushes* counts.
        self.rpc_client = RpcCallCounters()
        self.local_config_pushes = 0
        self.local_config_push_errors = 0

    # -- public surface -------------------------------------------------------------------------

    @property
    def connections(self) -> dict[int, EdgeConnection]:
        """Registered connections by connection index."""
        return {i: s.connection for i, s in self.slots.items() if s.connection is not None}

    async def run(self) -> None:
        """Serve until :meth:`begin_drain` finished draining."""
        self._running = True
        for position, index in enumerate(self.settings.conn_indexes):
            self._add_slot(index, position)
        preload = asyncio.ensure_future(self._load_serving())
        stats = asyncio.ensure_future(self._report_stats())
        try:
            await self._draining.wait()
            await self._drain()
        finally:
            tasks = [s.task for s in self.slots.values() if s.task is not None]
            for task in [*tasks, *self._retiring, stats]:
                task.cancel()
            for task in [*tasks, *self._retiring, stats]:
                with contextlib.suppress(BaseException):
                    await task
            # A thread cannot be cancelled: let an import in progress end before we do.
            with contextlib.suppress(BaseException):
                await preload
            await self._close_leftovers()
            self._publish_stats()
            if self.proxy.loaded is not None:
                await self.proxy.loaded.aclose()

    async def _load_serving(self) -> None:
        """Import the origin side in a thread once the first dial is done, then build the rules."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_attempted.wait(), DIAL_TIMEOUT)
        await self.proxy.preload()
        try:
            self.ingress()
        except Exception as exc:
            # The supervisor validated this very snapshot with the same code: only a version
            # skew between the two gets here. The worker cannot serve: it ends as a boot error.
            log.exception("Cannot build the ingress rules")
            self.fatal = f"cannot build the ingress rules: {exc}"
            self.begin_drain(0.0)

    def begin_drain(self, grace: float) -> None:
        """Unregister all connections, let in-flight streams finish within ``grace`` seconds."""
        self._grace = grace
        self._draining.set()
        self.proxy.close_management_streams()

    def apply_ingress(self, snapshot: IngressSnapshot) -> None:
        """Swap the ingress rules atomically; stale versions are ignored."""
        if snapshot.version <= self.ingress_version:
            return
        self._ingress = _build_ingress(snapshot)
        self.ingress_version = snapshot.version
        self.remote.applied(snapshot)

    def ingress(self) -> Ingress:
        """The rules in force (read per request, so a swap applies to the next request)."""
        if self._ingress is None:
            self._ingress = _build_ingress(self._initial_ingress)
        return self._ingress

    def _tunnel_id(self) -> uuid.UUID | None:
        """The tunnel this worker serves now (management tokens must name it)."""
        try:
            return uuid.UUID(self.settings.tunnel_id)
        except ValueError:
            return None

    def reconfigure(self, settings: WorkerSettings) -> asyncio.Task[None]:
        """Apply new settings; connections that need new credentials or addresses are rolled.

        Returns the task doing the roll (awaiting it is optional): one connection at a time,
        each replacement registered before its predecessor is unregistered and drained.
        Ingress and grace period apply at once; added connection indexes start, removed ones
        are unregistered and drained.
        """
        return asyncio.ensure_future(self._reconfigure(settings))

    def record_registration(self, conn_index: int, protocol: str) -> None:
        """Another worker's connection ``conn_index`` registered over ``protocol`` (relayed by
        the supervisor): the protocol choice takes it into account as cloudflared's tracker
        would."""
        try:
            known = Protocol(protocol)
        except ValueError:
            log.warning("Ignored a registration over an unknown protocol %r", protocol)
            return
        self.protocols.registered(conn_index, known)

    @property
    def active_streams(self) -> int:
        """Streams in flight across all connections (retiring ones included)."""
        live = sum(c.in_flight for c in self.connections.values())
        return live + sum(1 for t in self._retiring if not t.done())

    # -- reconfiguration ----------------------------------------------------------------------

    async def _reconfigure(self, settings: WorkerSettings) -> None:
        async with self._reconfiguring:
            old = self.settings
            if settings.connector_id != old.connector_id:
                log.warning("Ignored a new connector id: it is fixed for the life of a worker")
                settings = _with_connector_id(settings, old.connector_id)
            roll = _needs_new_connections(old, settings)
            self.settings = settings
            if roll:
                self._generation += 1
                self._new_generation.set()
                self._new_generation = asyncio.Event()
            self._grace = settings.grace_period
            self.apply_ingress(settings.ingress)
            if settings.edge_ca_pem != old.edge_ca_pem:
                self._tls = edge_tls_context(settings.edge_ca_pem)
                self._quic_config = None
            if settings.edges != old.edges:
                self._learned.clear()
            self._flow_limiter.limit = settings.max_active_flows
            if self._draining.is_set() or not self._running:
                return
            wanted = list(settings.conn_indexes)
            for index in [i for i in self.slots if i not in wanted]:
                self._remove_slot(index)
            for position, index in enumerate(wanted):
                if index not in self.slots:
                    self._add_slot(index, position, staggered=False)
            if not roll:
                return
            self._rolls_idle.clear()
            try:
                await self._roll_all(settings)
            finally:
                self._rolls_idle.set()

    async def _roll_all(self, settings: WorkerSettings) -> None:
        """Roll every slot in index order, each replacement registered before the next starts."""
        log.info("Re-registering connections connIndexes=%s", sorted(self.slots))
        for index, each in self.slots.items():
            each.address = home_address(settings.edges, index)
        for index in sorted(self.slots):
            slot = self.slots.get(index)
            if slot is None or slot.removed or slot.connection is None:
                continue  # a slot without a connection dials with the new settings anyway
            done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            slot.rolls.append(done)
            slot.roll_wanted.set()
            try:
                ok = await asyncio.wait_for(asyncio.shield(done), ROLL_TIMEOUT)
            except TimeoutError:
                ok = False
            if not ok:
                log.warning(
                    "Not re-registered yet; it keeps trying in the background",
                    extra=fields(connIndex=index),
                )

    def _add_slot(self, index: int, position: int, *, staggered: bool = True) -> None:
        slot = ConnectionSlot(
            index,
            home_address(self.settings.edges, index),
            self.settings.retries,
            self.protocols.connection(index),
        )
        self.slots[index] = slot
        slot.task = asyncio.ensure_future(self._maintain(slot, position if staggered else -1))

    def _remove_slot(self, index: int) -> None:
        slot = self.slots.pop(index)
        slot.removed = True
        slot.finish_rolls(False)
        if slot.task is not None:
            slot.task.cancel()
        if slot.connection is not None:
            self._retire(slot.conn_index, slot.connection, announce=True)
            slot.connection = None

    # -- connection loops ---------------------------------------------------------------------

    def _registration(self, conn_index: int, attempts: int, *, replace: bool) -> Registration:
        s = self.settings
        client = ClientInfo(
            client_id=self.connector_id,
            features=announced_features(s.features, post_quantum=s.post_quantum),
            version=s.version,
            arch=go_arch(),
        )
        options = ConnectionOptions(
            client=client, replace_existing=replace, num_previous_attempts=min(attempts, 255)
        )
        push = s.push_local_config and conn_index == 0
        return Registration(
            auth=TunnelAuth(s.account_tag, s.tunnel_secret),
            tunnel_id=uuid.UUID(s.tunnel_id),
            conn_index=conn_index,
            options=options,
            local_config=s.ingress.local_config_json if push else b"",
        )

    async def _wait_turn(self, slot: ConnectionSlot, position: int) -> None:
        """Connection 0 first; the others once this worker's first dial is done, staggered.

        A worker without connection 0 gives it a head start of one stagger before its own
        first connection dials.
        """
        if position < 0 or slot.conn_index == 0:
            return
        if slot.conn_index == self._leader:
            delay = REGISTRATION_STAGGER
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._first_attempted.wait(), DIAL_TIMEOUT)
            delay = REGISTRATION_STAGGER * position
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._draining.wait(), delay)

    async def _maintain(self, slot: ConnectionSlot, position: int) -> None:
        await self._wait_turn(slot, position)
        while not self._draining.is_set() and not slot.removed:
            if slot.connection is None:
                await self._connect(slot)
            else:
                await self._serve(slot)

    async def _connect(self, slot: ConnectionSlot) -> None:
        """One dial + registration; on failure, back off (never zero) and maybe move."""
        edges = self.settings.edges
        edge = edges[slot.address % len(edges)]
        generation = self._generation
        self._choose_protocol(slot, edge)
        # Same connector id and index can only be this connector (a restarted worker, or a
        # connection the edge has not yet seen die): let the edge retire that one.
        outcome = await self._dial(slot, edge, replace=True)
        if slot.conn_index == self._leader:
            self._first_attempted.set()
        if isinstance(outcome, EdgeConnection):
            self._install(slot, outcome, edge, generation)
            return
        if self._draining.is_set() or slot.removed:
            return
        slot.transport.record(outcome.outcome)
        # Rolls waiting on this slot are served by whatever connects next with new settings.
        slot.finish_rolls(False)
        delay = self._next_attempt(slot, outcome)
        if delay is None:
            log.error(
                "Not retrying: the edge refused this connection for good; it dials again once "
                "the credentials or the edge addresses change",
                extra=fields(connIndex=slot.conn_index),
            )
            await self._hold_refused(generation)
            return
        # The quick redials while an edge restarts would be a warning every 0.1 s.
        level = logging.DEBUG if slot.backoff.quick else logging.WARNING
        await self._retry_after(slot, delay, outcome.error, level, ip=f"{edge.host}:{edge.port}")

    def _choose_protocol(self, slot: ConnectionSlot, edge: EdgeTarget) -> None:
        """Settle ``slot.transport.protocol`` for the next dial (cloudflared decides after its
        backoff, which is now), with cloudflared's lines when it changed or QUIC looked
        blocked."""
        choice = slot.transport.choose(asyncio.get_running_loop().time())
        where = fields(connIndex=slot.conn_index, ip=edge.host)
        if choice.warning is not None:
            log.warning(choice.warning, extra=where)
        if choice.reason is not None:
            log.info(choice.reason, extra=where)

    def _next_attempt(self, slot: ConnectionSlot, outcome: DialFailure) -> float | None:
        """Seconds until ``slot`` dials again after ``outcome``; ``None``: not with these
        settings. The one place a refusal's policy (its class) is acted on."""
        refusal = outcome.refusal
        delay: float | None = None
        if refusal is None or refusal.retryable:
            if outcome.dial or (refusal is not None and refusal.try_another_address):
                self._move(slot)
            delay = slot.backoff.next_delay(refused=outcome.refused)
            if refusal is not None:
                # The edge's own wait, when it gave one, is a floor for ours.
                delay = max(delay, min(refusal.retry_after, MAX_RETRY_AFTER))
        if refusal is not None:
            self.publish(
                RegistrationRefused(
                    self.settings.slot,
                    slot.conn_index,
                    refusal.cause,
                    should_retry=delay is not None,
                    retry_in=delay or 0.0,
                    metric_label=refusal.metric_label,
                )
            )
        return delay

    async def _hold_refused(self, generation: int) -> None:
        """Wait, after a permanent refusal, for settings that may be accepted (or a drain)."""
        if generation != self._generation:
            return  # new settings arrived while the refused registration was in flight
        waiters = {
            asyncio.ensure_future(self._new_generation.wait()),
            asyncio.ensure_future(self._draining.wait()),
        }
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _retry_after(
        self, slot: ConnectionSlot, delay: float, error: str, level: int, **where: str
    ) -> None:
        """Report that ``slot`` has no connection, then wait ``delay`` or until a drain."""
        self.publish(ConnectionLost(self.settings.slot, slot.conn_index, error, delay))
        log.log(
            level,
            "Connection to the edge ended; retrying in %.1fs",
            delay,
            extra=fields(connIndex=slot.conn_index, **where, error=error),
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._draining.wait(), delay)

    def _move(self, slot: ConnectionSlot) -> None:
        edges = self.settings.edges
        in_use = {i: s.address for i, s in self.slots.items() if s.connection is not None}
        # Unknown total: assume every address is some connection's home (the CLI's default
        # caps connections at the address count), so a failing connection never doubles up.
        total = self.settings.ha_connections or len(edges)
        target = fallback(edges, slot.conn_index, slot.address, total, in_use, self._learned)
        if target != slot.address:
            log.info(
                "Moving the connection from %s:%d to %s:%d",
                edges[slot.address].host,
                edges[slot.address].port,
                edges[target].host,
                edges[target].port,
                extra=fields(connIndex=slot.conn_index),
            )
            slot.address = target

    async def _serve(self, slot: ConnectionSlot) -> None:
        """Wait for the connection to end, or replace it when a roll is wanted."""
        connection = slot.connection
        assert connection is not None
        stale = slot.generation < self._generation and not connection.lost.done()
        # While a reconfiguration runs it hands out the turns, one connection at a time; a
        # slot whose replacement failed retries on its own once none runs.
        if slot.roll_wanted.is_set() or (stale and self._rolls_idle.is_set()):
            await self._roll(slot, connection)
            return
        waiters = [slot.roll_wanted.wait(), self._draining.wait()]
        if stale:
            waiters.append(self._rolls_idle.wait())
        futures = {asyncio.ensure_future(w) for w in waiters}
        loop = asyncio.get_running_loop()
        # Away from home, and no reconfiguration busy rolling: go back when it is time.
        away = slot.home_at is not None and not stale and self._rolls_idle.is_set()
        timeout = max(0.0, slot.home_at - loop.time()) if slot.home_at is not None else None
        try:
            await asyncio.wait(
                {connection.lost, *futures},
                timeout=timeout if away else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for future in futures:
                future.cancel()
        if self._draining.is_set():
            # Keep serving; _drain() unregisters this connection.
            await asyncio.Future()
        if connection.lost.done():
            slot.connection = None
            slot.transport.record(self._loss_outcome(connection))
            reason = connection.lost.result()
            error = connection.failure or f"lost connection with the edge: {reason}"
            delay = slot.backoff.lost(asyncio.get_running_loop().time())
            await self._retry_after(slot, delay, error, logging.WARNING)
            return
        if away and slot.home_at is not None and loop.time() >= slot.home_at:
            await self._go_home(slot, connection)
        # A turn to roll, or rolls became idle: the next _serve() decides.

    async def _go_home(self, slot: ConnectionSlot, old: EdgeConnection) -> None:
        """Move a connection that failed over back to its home address, rolling: the new
        connection registers there before the old one is unregistered and drained, so a
        location that returns gets its share of the connections back."""
        edges = self.settings.edges
        home = home_address(edges, slot.conn_index)
        edge = edges[home]
        generation = self._generation
        outcome = await self._dial(slot, edge, replace=True)
        if isinstance(outcome, EdgeConnection):
            log.info(
                "Moved the connection back to its home address %s:%d",
                edge.host,
                edge.port,
                extra=fields(connIndex=slot.conn_index),
            )
            slot.address = home
            slot.connection = None
            self._install(slot, outcome, edge, generation)
            self._retire(slot.conn_index, old, announce=False)
            return
        if not outcome.refused:
            slot.home_failures += 1  # home answers but does not take us: ask less often
        delay = min(HOMECOMING_MAX_DELAY, HOMECOMING_DELAY * 2**slot.home_failures)
        slot.home_at = asyncio.get_running_loop().time() + _jittered(delay)
        log.debug(
            "The home address still does not take the connection; next try in %.1fs",
            delay,
            extra=fields(connIndex=slot.conn_index, ip=f"{edge.host}:{edge.port}"),
        )

    async def _roll(self, slot: ConnectionSlot, old: EdgeConnection) -> None:
        slot.roll_wanted.clear()
        if slot.generation >= self._generation:
            slot.finish_rolls(True)
            return
        edges = self.settings.edges
        edge = edges[slot.address % len(edges)]
        generation = self._generation
        outcome = await self._dial(slot, edge, replace=True)
        if isinstance(outcome, EdgeConnection):
            slot.connection = None
            self._install(slot, outcome, edge, generation)
            self._retire(slot.conn_index, old, announce=False)
            return
        slot.finish_rolls(False)
        delay = self._next_attempt(slot, outcome)
        error = outcome.error
        where = fields(connIndex=slot.conn_index, ip=f"{edge.host}:{edge.port}", error=error)
        if delay is None:
            log.error(
                "The edge refused the new settings for good; the current connection keeps "
                "serving until it ends",
                extra=where,
            )
        else:
            log.warning(
                "Replacement connection failed; the current one keeps serving, next try in %.1fs",
                delay,
                extra=where,
            )
        # Try again after the backoff (after a permanent refusal: once newer settings come)
        # unless the old connection dies first (then the normal loop reconnects with the new
        # settings).
        lost = asyncio.ensure_future(asyncio.shield(old.lost))
        waiters = {lost}
        if delay is None:
            waiters.add(asyncio.ensure_future(self._new_generation.wait()))
        try:
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        # Back in _serve(), the old generation makes the slot try again (or wait for its turn
        # when another reconfiguration is rolling).

    async def _dial(
        self, slot: ConnectionSlot, edge: EdgeTarget, *, replace: bool
    ) -> EdgeConnection | DialFailure:
        """A registered connection over the slot's protocol, or why not."""
        registration = self._registration(slot.conn_index, slot.backoff.attempts, replace=replace)
        if slot.transport.protocol is Protocol.QUIC:
            opened = await self._dial_quic(slot, edge, registration)
        else:
            opened = await self._dial_http2(edge, registration)
        if isinstance(opened, DialFailure):
            return opened
        return await self._register(slot, opened)

    async def _dial_http2(
        self, edge: EdgeTarget, registration: Registration
    ) -> EdgeConnection | DialFailure:
        """TCP and TLS to ``edge``; the connection then registers by itself."""
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    lambda: self._answering(EdgeConnection(registration, self.proxy, self.ingress)),
                    edge.host,
                    edge.port,
                    ssl=self._tls,
                    server_hostname=EDGE_SNI,
                    ssl_handshake_timeout=DIAL_TIMEOUT,
                ),
                DIAL_TIMEOUT,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            detail = f"{exc or type(exc).__name__}"
            return DialFailure(
                f"failed to dial the edge at {edge.host}:{edge.port}: {detail}",
                dial=True,
                refused=isinstance(exc, ConnectionRefusedError),
                outcome=Outcome.DIAL_FAILED,
            )
        return connection

    async def _dial_quic(
        self, slot: ConnectionSlot, edge: EdgeTarget, registration: Registration
    ) -> EdgeConnection | DialFailure:
        """UDP and the QUIC handshake to ``edge`` (SNI ``quic.cftunnel.com``, ALPN
        ``argotunnel``); the connection then registers by itself on its stream 0.

        A handshake that heard nothing for 5 s (UDP dropped on the way, or an ICMP
        unreachable: cloudflared never learns of one and ends the same way) is
        :attr:`Outcome.QUIC_HANDSHAKE_IDLE`, what makes ``auto`` fall back to HTTP/2."""
        # Imported at the first QUIC dial: aioquic costs memory and start-up time an HTTP/2
        # connector does not need.
        from adit.workers.quic_dial import (
            QuicDialError,
            QuicEdgeConnection,
            connector_quic_configuration,
            dial_quic,
        )
        from adit.workers.quic_telemetry import QuicTelemetry
        from adit.workers.udp_sessions import UdpCounters

        telemetry = self.quic_telemetry
        if telemetry is None:
            telemetry = self.quic_telemetry = QuicTelemetry()

        config = self._quic_config
        if config is None:
            config = self._quic_config = connector_quic_configuration(
                self.settings.edge_ca_pem, post_quantum=self.settings.post_quantum
            )
        if self._udp_counters is None:
            self._udp_counters = UdpCounters()
        limiter, counters = self._flow_limiter, self._udp_counters

        def make(quic: TunnelQuicConnection) -> QuicEdgeConnection:
            connection = QuicEdgeConnection(
                quic,
                registration,
                self.proxy,
                self.ingress,
                flow_limiter=limiter,
                udp_counters=counters,
            )
            self._answering(connection)
            telemetry.opened(slot.conn_index, quic)
            connection.lost.add_done_callback(lambda _: telemetry.closed(quic))
            return connection

        where = f"{edge.host}:{edge.port}"
        try:
            return await dial_quic(
                edge.host,
                edge.port,
                config,
                make,
                handshake_timeout=QUIC_HANDSHAKE_TIMEOUT,
            )
        except QuicDialError as exc:
            return DialFailure(
                f"failed to dial to edge with quic at {where}: {exc}",
                dial=True,
                outcome=Outcome.QUIC_HANDSHAKE_IDLE if exc.timed_out else Outcome.DIAL_FAILED,
            )
        except OSError as exc:
            not_permitted = exc.errno == errno.EPERM
            return DialFailure(
                f"failed to dial to edge with quic at {where}: {exc}",
                dial=True,
                outcome=Outcome.QUIC_DIAL_NOT_PERMITTED if not_permitted else Outcome.FAILED,
            )

    def _loss_outcome(self, connection: EdgeConnection) -> Outcome:
        """What the end of a registered connection counts as for the protocol choice.

        HTTP/2: a failure cloudflared retries. The QUIC transport adds its own: an idle
        timeout (:attr:`Outcome.QUIC_IDLE_TIMEOUT`) and "operation not permitted"
        (:attr:`Outcome.QUIC_NOT_PERMITTED`).
        """
        if connection.protocol_name == "quic" and connection.lost.done():
            reason = str(connection.lost.result())
            if "Idle timeout" in reason or "no answer from the peer" in reason:
                return Outcome.QUIC_IDLE_TIMEOUT
            if "not permitted" in reason:
                return Outcome.QUIC_NOT_PERMITTED
        return Outcome.FAILED

    async def _register(
        self, slot: ConnectionSlot, connection: EdgeConnection
    ) -> EdgeConnection | DialFailure:
        """Wait for ``connection``'s registration: the connection, or why not."""
        self._open.add(connection)
        connection.lost.add_done_callback(lambda _: self._open.discard(connection))
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            result = await asyncio.wait_for(asyncio.shield(connection.registered), DIAL_TIMEOUT)
        except (ConnectionError, TimeoutError) as exc:
            self.rpc_client.record(
                _REGISTRATION, "register_connection", loop.time() - start, failed=True
            )
            connection.close("registration failed")
            return DialFailure(f"registration did not complete: {exc or 'timeout'}", dial=False)
        failed = not isinstance(result, ConnectionDetails)
        self.rpc_client.record(
            _REGISTRATION, "register_connection", loop.time() - start, failed=failed
        )
        if isinstance(result, RegistrationError):
            refusal = result.refusal()
            # The supervisor logs the refusal (cloudflared's "Register tunnel error from
            # server side"): one line per refusal at the default level.
            log.debug(
                "The edge refused the registration",
                extra=fields(
                    connIndex=slot.conn_index, error=refusal.cause, retry=refusal.retryable
                ),
            )
            connection.close("registration refused")
            return DialFailure(
                refusal.cause, dial=False, refusal=refusal, outcome=_refusal_outcome(refusal)
            )
        assert isinstance(result, ConnectionDetails)
        if self._draining.is_set() or slot.removed:
            # Registered while the worker began draining: it would never be unregistered.
            await self._unregister(connection)
            connection.close("connector shutting down")
            return DialFailure("the connector is shutting down", dial=False)
        return connection

    def _answering(self, connection: EdgeConnectionT) -> EdgeConnectionT:
        """``connection`` with the edge's configuration pushes answered by :attr:`remote`
        (from its first byte on: the edge pushes right after the registration)."""
        connection.on_remote_config = self.remote.update
        return connection

    def _install(
        self, slot: ConnectionSlot, connection: EdgeConnection, edge: EdgeTarget, generation: int
    ) -> None:
        details = connection.details
        assert details is not None
        slot.connection = connection
        slot.generation = generation
        slot.transport.record(Outcome.REGISTERED)
        protocol = slot.transport.protocol.value
        now = asyncio.get_running_loop().time()
        slot.backoff.connected(now)
        if slot.address % len(self.settings.edges) == home_address(
            self.settings.edges, slot.conn_index
        ):
            slot.home_at = None
            slot.home_failures = 0
        elif slot.home_at is None:
            slot.home_at = now + _jittered(HOMECOMING_DELAY)
        if generation >= self._generation:
            slot.finish_rolls(True)
        if details.location_name:
            self._learned[slot.address % len(self.settings.edges)] = details.location_name
        # Logged before the supervisor hears of it: its READY=1 follows this line.
        log.info(
            "Registered tunnel connection",
            extra=fields(
                connIndex=slot.conn_index,
                connection=str(details.uuid),
                event=0,  # cloudflared's field: management log event type 0, "cloudflared"
                location=details.location_name,
                ip=edge.host,
                protocol=protocol,
            ),
        )
        self.publish(
            ConnectionRegistered(
                self.settings.slot,
                slot.conn_index,
                str(details.uuid),
                details.location_name,
                f"{edge.host}:{edge.port}",
                protocol,
            )
        )
        if connection.registration.local_config:
            connection.spawn(self._push_local_config(connection))

    async def _push_local_config(self, connection: EdgeConnection) -> None:
        """``updateLocalConfiguration``, counted as cloudflared counts it (connection/control.go:
        a push, and an error when the edge did not take it); a failure is only logged."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        taken = await connection.push_local_config()
        elapsed = loop.time() - start
        self.rpc_client.record(
            _REGISTRATION, "update_local_configuration", elapsed, failed=not taken
        )
        self.local_config_pushes += 1
        if not taken:
            self.local_config_push_errors += 1
            log.warning(
                "The edge did not take the local configuration",
                extra=fields(connIndex=connection.conn_index),
            )

    async def _unregister(self, connection: EdgeConnection) -> None:
        """``unregisterConnection``, counted in ``cloudflared_rpc_client_*`` when it was sent."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        answered = await connection.unregister()
        if answered is not None:
            elapsed = loop.time() - start
            self.rpc_client.record(
                _REGISTRATION, "unregister_connection", elapsed, failed=not answered
            )

    def _retire(self, conn_index: int, connection: EdgeConnection, *, announce: bool) -> None:
        """Unregister ``connection`` and let its streams finish within the grace period."""

        async def retire() -> None:
            deadline = asyncio.get_running_loop().time() + self._grace
            await self._unregister(connection)
            if announce:
                self.publish(ConnectionUnregistered(self.settings.slot, conn_index))
            log.info(
                "Unregistered the replaced tunnel connection",
                extra=fields(
                    connIndex=conn_index,
                    connection=str(connection.details.uuid) if connection.details else "?",
                ),
            )
            await connection.drain(deadline)

        task = asyncio.ensure_future(retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    # -- drain -----------------------------------------------------------------------------

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._grace
        connections = list(self.connections.items())
        await asyncio.gather(*(self._unregister(c) for _, c in connections), return_exceptions=True)
        for conn_index, _ in connections:
            self.publish(ConnectionUnregistered(self.settings.slot, conn_index))
            log.info("Unregistered tunnel connection", extra=fields(connIndex=conn_index))
        retiring = list(self._retiring)
        await asyncio.gather(
            *(c.drain(deadline) for _, c in connections), *retiring, return_exceptions=True
        )

    async def _close_leftovers(self) -> None:
        """Abort whatever connection is still open (its drain ended), so no socket outlives
        the runtime."""
        leftovers = [c for c in self._open if not c.lost.done()]
        for connection in leftovers:
            if connection.transport is not None:
                connection.transport.abort()
        if leftovers:
            await asyncio.wait([c.lost for c in leftovers], timeout=2.0)

    async def _report_stats(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            self._publish_stats()

    def _publish_stats(self) -> None:
        proxy = self.proxy.loaded
        quic = self.quic_telemetry.snapshot() if self.quic_telemetry is not None else None
        udp = _udp_stats(self._udp_counters)
        counters = self._connector_counters()
        if proxy is None:
            # Nothing served yet.
            self.publish(
                StatsSnapshot(self.settings.slot, 0, 0, 0, {}, udp, quic=quic, connector=counters)
            )
            return
        stats = proxy.stats
        self.publish(
            StatsSnapshot(
                slot=self.settings.slot,
                total_requests=stats.total_requests,
                request_errors=stats.request_errors,
                concurrent_requests=stats.concurrent_requests,
                responses_by_code={str(k): v for k, v in stats.responses_by_code.items()},
                udp=udp,
                quic=quic,
                connector=ConnectorCounters(
                    tcp_active_sessions=stats.tcp_active_sessions,
                    tcp_total_sessions=stats.tcp_total_sessions,
                    connect_latency=stats.connect_latency.snapshot(),
                    connect_stream_errors=stats.connect_stream_errors,
                    local_config_pushes=counters.local_config_pushes,
                    local_config_push_errors=counters.local_config_push_errors,
                    rpc_client=counters.rpc_client,
                    rpc_server=counters.rpc_server,
                    flows_rate_limited=counters.flows_rate_limited,
                ),
            )
        )

    def _connector_counters(self) -> ConnectorCounters:
        """The worker's RPC and config-push counts (the proxy's are added by the caller)."""
        udp = self._udp_counters
        return ConnectorCounters(
            local_config_pushes=self.local_config_pushes,
            local_config_push_errors=self.local_config_push_errors,
            rpc_client=self.rpc_client.snapshot() + (udp.rpc_client.snapshot() if udp else []),
            rpc_server=udp.rpc_server.snapshot() if udp else [],
            flows_rate_limited={
                kind: count
                for kind, count in (
                    ("udp", udp.rate_limited if udp else 0),
                    ("tcp", self.proxy.tcp_rate_limited),
                )
                if count
            },
        )


def _udp_stats(counters: UdpCounters | None) -> UdpStats | None:
    """The worker's UDP counters as the supervisor gets them (None before any QUIC dial)."""
    if counters is None:
        return None
    dropped: dict[int, dict[str, int]] = {}
    for (conn_index, reason), count in counters.dropped.items():
        dropped.setdefault(conn_index, {})[reason] = count
    unsupported: dict[int, dict[str, int]] = {}
    for (conn_index, command), count in counters.unsupported.items():
        unsupported.setdefault(conn_index, {})[command] = count
    return UdpStats(
        active_sessions=counters.active_sessions,
        total_sessions=counters.total_sessions,
        active_flows=dict(counters.active_flows),
        total_flows=dict(counters.total_flows),
        failed_flows=dict(counters.failed_flows),
        dropped_datagrams=dropped,
        retry_flow_responses=dict(counters.retried),
        unsupported_remote_commands=unsupported,
    )


def _refusal_outcome(refusal: RegistrationRefusal) -> Outcome:
    """A refusal as the protocol choice counts it (cloudflared: supervisor/tunnel.go:406-415)."""
    if isinstance(refusal, DuplicateConnection):
        return Outcome.DUPLICATE
    return Outcome.FAILED if refusal.retryable else Outcome.REFUSED_FOR_GOOD


def _jittered(delay: float) -> float:
    """``delay`` give or take a quarter: the workers' connections do not all move at once."""
    return delay * (0.75 + random.random() / 2)  # noqa: S311 - spacing, not secrecy


def _with_connector_id(settings: WorkerSettings, connector_id: str) -> WorkerSettings:
    import msgspec

    return msgspec.structs.replace(settings, connector_id=connector_id)
