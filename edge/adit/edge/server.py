"""The ``adit edge`` process: tunnel listener, public listener, management API.

Signals only enqueue; the main coroutine drains on SIGTERM/SIGINT: systemd hears STOPPING=1,
every listening socket closes (new visitors and connectors are refused), in-flight requests
finish within the grace period (their responses say ``Connection: close``; idle connections
close at once), and only then do the tunnel connections get GOAWAY. A second signal ends the
drain at once. The exit code is 0.

SIGUSR2 hands over to the ``adit`` installed now (:mod:`adit.edge.handover`): a new process
inherits every listening socket and, once it serves, becomes systemd's main process; this one
then drains the same way (without STOPPING=1: the service is not stopping), closing each tunnel
connection once no request is in flight on it, so that its connector redials the new process.
A new process that does not get ready changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno
import gc
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from adit.allocator import HeapTrimmer
from adit.credentials import TunnelCredentials, encode_tunnel_token
from adit.edge.access.client_address import TrustedProxies, parse_trusted_proxies
from adit.edge.access.decisions import DecisionLog
from adit.edge.access.gate import AccessGate
from adit.edge.access.geoip import CountryDb
from adit.edge.access.login_flow import LoginFlow
from adit.edge.access.login_state import LoginState
from adit.edge.access.sweeper import sweep_access
from adit.edge.acme_challenges import Http01Solver, TlsAlpn01Solver
from adit.edge.acme_dns01 import Dns01Solver
from adit.edge.acme_issuer import AcmeSettings, Issuer
from adit.edge.api import EdgeInfo, ManagementApi
from adit.edge.ca import EdgeCA
from adit.edge.certificates import CertificateManager
from adit.edge.config_sync import SYNC_INTERVAL, sync_configs
from adit.edge.handover import (
    MAIN_TIMEOUT,
    HandoverOutcome,
    Inherited,
    Predecessor,
    RelaySender,
    Successor,
    decode_relayed,
    handover_metrics,
    successor_argv,
)
from adit.edge.http1 import BadRequest, Http1Connection, Request, RequestTimeout
from adit.edge.limits import ConnectionTracker, Limits
from adit.edge.management_route import DEFAULT_MANAGEMENT_HOSTNAME, ManagementGate
from adit.edge.management_token import ManagementSigner
from adit.edge.private_flows import FlowLimits, PrivateFlows, flow_path
from adit.edge.public import PublicListener
from adit.edge.public_tls import harden_public_tls
from adit.edge.quic_listener import QuicListener, QuicTunnelSession, edge_quic_configuration
from adit.edge.registry import ConnectionRegistry
from adit.edge.route_dns import PublishedEdge
from adit.edge.store import Store, StoreError
from adit.edge.tls_gate import Admission, DialRates, GatedListener, HelloRouter
from adit.edge.tunnel_hold import TunnelHold
from adit.edge.tunnel_session import EdgeIdentity, TunnelSession
from adit.protocol.hostnames import InvalidHostname, split_address, split_host_port
from adit.protocol.liveness import (
    DEFAULT_ALLOWANCE,
    DEFAULT_INTERVAL,
    DEFAULT_TIMEOUT,
    LivenessSettings,
)
from adit.protocol.quic_engine import TunnelQuicConfiguration, TunnelQuicConnection
from adit.systemd import SystemdNotifier

if TYPE_CHECKING:
    from adit.metrics_listener import MetricsServer

log = logging.getLogger("adit.edge")

#: Tunnel-listener handshakes in progress at once (from every client address together).
TUNNEL_MAX_HANDSHAKES = 4096
#: How often the edge looks at whether freed heap memory should go back to the kernel.
HEAP_CHECK_INTERVAL = 10.0
#: Put on the signal queue when a hand-over attempt has an outcome (not a signal number).
_HANDOVER_ENDED = 0

#: A TLS handshake that does not finish in this time is dropped (half-open guard).
TLS_HANDSHAKE_TIMEOUT = 10.0
#: Tries at a port 0 tunnel listener whose TCP port turns out to be taken for UDP.
PORT_ZERO_TRIES = 20
MAX_API_BODY = 1024 * 1024
#: How often the edge looks for route changes other processes made (one row read a time).
ROUTE_WATCH_INTERVAL = 0.5


@dataclass(frozen=True)
class EdgeSettings:
    """How an edge process listens and what it calls itself."""

    state_dir: Path
    tunnel_listen: tuple[str, ...] = ("0.0.0.0:7844",)
    http_listen: tuple[str, ...] = ("0.0.0.0:8080",)
    #: Public HTTPS listeners (certificates from the edge CA, per routed hostname by SNI).
    https_listen: tuple[str, ...] = ()
    api_listen: tuple[str, ...] = ("127.0.0.1:7843",)
    location: str = "adit"
    #: Addresses connectors are told to dial (default: the tunnel listeners as bound).
    advertise: tuple[str, ...] = ()
    api_names: tuple[str, ...] = ("localhost",)
    ready_file: Path | None = None
    #: Provision a throwaway tunnel routed at ``<random>.localhost`` and write its token here.
    quick_tunnel_file: Path | None = None
    #: Exit when this process is gone (the quick-tunnel CLI that started us).
    exit_with_pid: int | None = None
    #: Delete the state directory on exit (quick tunnels leave nothing behind).
    ephemeral: bool = False
    #: How long an API write waits for the store's write lock (another process may hold it)
    #: before the caller gets a 503.
    store_timeout: float = 2.0
    #: Timeouts and connection caps of the public and API listeners (each its own).
    limits: Limits = field(default_factory=Limits)
    #: How long in-flight requests may take to finish after SIGTERM (cloudflared's flag).
    grace_period: float = 30.0
    #: How long Access decisions are kept (``--access-log-retention``).
    access_log_retention: float = 30 * 24 * 3600.0
    #: ``--geoip-db``: the visitor's country for Access (None: no country is known).
    geoip_db: Path | None = None
    #: ``--trusted-proxies``: networks whose X-Forwarded-For names the visitor.
    trusted_proxies: tuple[str, ...] = ()
    #: Liveness of connector connections (:mod:`adit.protocol.liveness`): a PING after this
    #: much silence...
    tunnel_ping_interval: float = DEFAULT_INTERVAL
    #: ...unanswered this long: no new requests to that connection...
    tunnel_ping_timeout: float = DEFAULT_ALLOWANCE
    #: ...and silent this long: the connection is closed.
    tunnel_idle_timeout: float = DEFAULT_TIMEOUT
    #: New tunnel connections one client address may open (before their TLS handshake).
    tunnel_dial_rates: DialRates = field(default_factory=DialRates)
    #: Caps and idle deadlines of private-network flows (on the API listener).
    private_flows: FlowLimits = field(default_factory=FlowLimits)
    #: The public name ``tail`` dials: relayed to a connector of the tunnel in its token.
    management_hostname: str = DEFAULT_MANAGEMENT_HOSTNAME
    #: Where the HTTPS listener's certificates come from (None: no ACME).
    acme: AcmeSettings | None = None
    #: Bring-your-own certificates (``NAME.crt``/``NAME.key``), watched.
    certificate_dir: Path | None = None
    #: ``--metrics``: where ``/metrics`` (certificate expiry, ACME failures) is served.
    metrics_listen: str | None = None
    #: The edge's public name (routes' CNAME target) and addresses (zone apexes' A/AAAA), for
    #: zones whose DNS server the edge updates.
    published: PublishedEdge = field(default_factory=PublishedEdge)
    #: ``--public-https-port``: the HTTPS port in URLs the edge builds for visitors (None:
    #: the first HTTPS listener's bound port).
    public_https_port: int | None = None
    #: ``--handover-timeout``: how long a new edge started by SIGUSR2 has to say it is ready.
    handover_timeout: float = 60.0
    #: ``--handover-hold``: how long a visitor's request waits, right after a hand-over, for
    #: a connection of a tunnel whose connectors are moving here.
    handover_hold: float = 30.0

    @property
    def tunnel_liveness(self) -> LivenessSettings:
        """The liveness rule for connector connections (ValueError when inconsistent)."""
        return LivenessSettings(
            self.tunnel_ping_interval, self.tunnel_ping_timeout, self.tunnel_idle_timeout
        )


def _listen_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``; empty host = all addresses) → (host, port)."""
    return split_address(address, default_host="0.0.0.0")  # noqa: S104 - public by design


def _admission(limits: Limits) -> Admission:
    """A public or API listener's caps, applied to connections still in their handshake."""
    return Admission(
        max_pending=limits.max_connections, max_pending_per_ip=limits.max_connections_per_ip
    )


def _address_in_use(exc: OSError) -> bool:
    """Whether a bind failed on a port in use (uvloop wraps the system's error in one
    without an errno: its cause has it)."""
    cause = exc.__cause__
    return exc.errno == errno.EADDRINUSE or (
        isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE
    )


def _bound_socket(sock: socket.socket) -> list[str]:
    host, port = sock.getsockname()[:2]
    return [f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"]


def _public_https_port(flag: int | None, bound: list[str]) -> int | None:
    """The HTTPS port to write into visitors' URLs: ``--public-https-port``, else the first
    HTTPS listener's (as bound: a port 0 is known only then); None for 443, the default
    port a URL leaves out."""
    port = flag
    if port is None:
        port = int(bound[0].rsplit(":", 1)[1]) if bound else 443
    return None if port == 443 else port


def _http_name(index: int, n: int) -> str:
    """The hand-over name of the ``n``-th socket of the ``index``-th ``--http-listen``."""
    return f"http:{index}.{n}" if n else f"http:{index}"


def _bound(server: asyncio.Server | GatedListener) -> list[str]:
    out = []
    for sock in server.sockets:
        host, port = sock.getsockname()[:2]
        out.append(f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}")
    return out


class EdgeServer:
    """Owns the store, the CA, the registry and the listeners of one edge process."""

    def __init__(self, settings: EdgeSettings, inherited: Inherited | None = None) -> None:
        self.settings = settings
        #: The listening sockets a predecessor handed over (:mod:`adit.edge.handover`).
        self.inherited = inherited if inherited is not None else Inherited({})
        #: Every listening socket's descriptor by its hand-over name (``http:0``, ...).
        self.listening: dict[str, int] = {}
        #: Inherited UDP sockets read only once the predecessor stopped reading them, and
        #: the relays for its QUIC connections' datagrams (:meth:`start_inherited_quic`).
        self._quic_inherited: list[tuple[int, socket.socket, socket.socket | None]] = []
        self._quic_config: TunnelQuicConfiguration | None = None
        self._quic_by_index: dict[int, QuicListener] = {}
        #: After a hand-over: the relays that bring this process's QUIC connections their
        #: datagrams from the successor.
        self._relays: list[tuple[QuicListener, socket.socket]] = []
        #: Failed hand-overs (SIGUSR2) since start.
        self.handover_failures = 0
        settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.ca = EdgeCA.load_or_create(settings.state_dir)
        self.management_signer = ManagementSigner.load_or_create(settings.state_dir)
        self.store = Store.open_in(settings.state_dir, write_timeout=settings.store_timeout)
        self.registry = ConnectionRegistry()
        #: Cloudflare Access at the public listeners (:mod:`adit.edge.access`).
        country_of = CountryDb(settings.geoip_db) if settings.geoip_db is not None else None
        self.access = AccessGate(
            self.store.access,
            DecisionLog(
                self.store.access.db,
                retention=datetime.timedelta(seconds=settings.access_log_retention),
            ),
            country_of=country_of,
            client_address=TrustedProxies(parse_trusted_proxies(settings.trusted_proxies))
            if settings.trusted_proxies
            else None,
        )
        self.access.login_flow = LoginFlow(self.access, self.store.access, country_of=country_of)
        self.identity = EdgeIdentity(location=settings.location)
        self.liveness = settings.tunnel_liveness
        self.sessions: set[TunnelSession] = set()
        self.servers: list[asyncio.Server | GatedListener] = []
        self.quic_listeners: list[QuicListener] = []
        self.addresses: dict[str, list[str]] = {}
        self.api: ManagementApi | None = None
        self.flows: PrivateFlows | None = None
        #: The eyeball-facing listeners' connections: public HTTP, public HTTPS, API.
        self.trackers = [ConnectionTracker(settings.limits) for _ in range(3)]
        self._api_tracker = self.trackers[2]
        #: Pushes the configurations other edge processes stored (:mod:`adit.edge.config_sync`).
        self._config_sync: asyncio.Task[None] | None = None
        #: The access log's retention and expired logins (:mod:`adit.edge.access.sweeper`).
        self._access_sweep: asyncio.Task[None] | None = None
        self._metrics_server: MetricsServer | None = None
        acme = settings.acme if settings.https_listen else None
        #: HTTP-01 answers (None: ACME is off, the path is routed like any other). With ACME
        #: on the path is the edge's even when HTTP-01 is not used: never a tunnel's.
        self.http01 = (
            Http01Solver(settings.state_dir / "acme" / "http-01") if acme is not None else None
        )
        self.tls_alpn01 = (
            TlsAlpn01Solver(settings.state_dir / "acme" / "tls-alpn-01")
            if acme is not None and "tls-alpn-01" in acme.challenges and settings.https_listen
            else None
        )
        solvers = [s for s in (self.tls_alpn01, self.http01) if s is not None]
        if acme is not None and ("http-01" not in acme.challenges or not settings.http_listen):
            solvers = [s for s in solvers if s.kind != "http-01"]
        self.certificates = (
            CertificateManager(
                settings.state_dir,
                self.store.routed_hostnames,
                issuer=Issuer(acme, settings.state_dir / "acme") if acme is not None else None,
                solvers=solvers,
                dns01=Dns01Solver(self.store) if acme is not None else None,
                certificate_dir=settings.certificate_dir,
            )
            if settings.https_listen and (acme is not None or settings.certificate_dir)
            else None
        )

    async def start(self) -> None:
        """Load the routes, bind every listener; then write the ready file."""
        loop = asyncio.get_running_loop()
        self.store.load_routes()
        self.store.load_private_routes()
        self.store.watch_routes(ROUTE_WATCH_INTERVAL)
        self._config_sync = loop.create_task(sync_configs(self.store, self.registry, SYNC_INTERVAL))
        self._access_sweep = loop.create_task(
            sweep_access(self.access.decisions, LoginState(self.store.access.db))
        )
        tunnel_tls = self.ca.tunnel_server_context()
        # QUIC on the same addresses and ports, UDP (cloudflared dials both at one address).
        leaf = self.ca.tunnel_leaf()
        self._quic_config = edge_quic_configuration(leaf.cert_chain_pem, leaf.key_pem)
        tunnel_bound: list[str] = []
        for index, address in enumerate(self.settings.tunnel_listen):
            tunnel_bound += await self._bind_tunnel(index, address, tunnel_tls)
        self.addresses["tunnel"] = tunnel_bound
        advertise = self.settings.advertise or tuple(
            a.replace("0.0.0.0", "127.0.0.1")  # noqa: S104 - rewriting, not binding
            for a in tunnel_bound
        )
        self.api = ManagementApi(
            self.store,
            self.registry,
            EdgeInfo(tunnel_addresses=advertise, ca_pem=self.ca.cert_pem),
            management_signer=self.management_signer,
            certificate_status=(
                self.certificates.status if self.certificates is not None else None
            ),
            published=self.settings.published,
        )
        management = ManagementGate(
            self.settings.management_hostname, self.management_signer, self.registry
        )
        self.flows = PrivateFlows(
            self.store,
            self.registry,
            self.api.authenticate,
            self.settings.private_flows,
            location=self.settings.location,
        )
        public = PublicListener(
            self.store,
            self.registry,
            location=self.settings.location,
            scheme="http",
            tracker=self.trackers[0],
            management=management,
            challenges=self.http01.response if self.http01 is not None else None,
            access=self.access,
        )
        self.addresses["http"] = []
        for index, address in enumerate(self.settings.http_listen):
            # A name may resolve to several addresses: one socket each (``http:0``, ``http:0.1``).
            handed: list[socket.socket] = []
            while taken := self.inherited.take(_http_name(index, len(handed))):
                handed.append(taken)
            if handed:
                servers = [await loop.create_server(public.protocol, sock=s) for s in handed]
            else:
                host, port = _listen_address(address)
                servers = [
                    await loop.create_server(public.protocol, host, port, reuse_address=True)
                ]
            sockets = [sock for server in servers for sock in server.sockets]
            for n, listening in enumerate(sockets):
                self.listening[_http_name(index, n)] = listening.fileno()
            self.servers += servers
            for server in servers:
                self.addresses["http"] += _bound(server)
        self.addresses["https"] = []
        if self.settings.https_listen:
            secure = PublicListener(
                self.store,
                self.registry,
                location=self.settings.location,
                scheme="https",
                tracker=self.trackers[1],
                management=management,
                access=self.access,
            )
            public_tls = self._public_tls_context()
            for index, address in enumerate(self.settings.https_listen):
                # The listener's caps apply from the first byte, not only once TLS is up.
                gated = self._gated(
                    f"https:{index}",
                    address,
                    secure.protocol,
                    public_tls,
                    TLS_HANDSHAKE_TIMEOUT,
                    _admission(self.settings.limits),
                    hello_router=self.tls_alpn01,
                )
                self.addresses["https"] += _bound(gated)
            public.https_port = _public_https_port(
                self.settings.public_https_port, self.addresses["https"]
            )
        api_tls = self.ca.api_server_context(self.settings.api_names)
        self.addresses["api"] = []
        for index, address in enumerate(self.settings.api_listen):
            gated = self._gated(
                f"api:{index}",
                address,
                self._api_protocol,
                api_tls,
                TLS_HANDSHAKE_TIMEOUT,
                _admission(self.settings.limits),
            )
            self.addresses["api"] += [f"https://{a}" for a in _bound(gated)]
        if self.certificates is not None:
            self.certificates.start()
        if self.settings.metrics_listen is not None:
            await self._serve_metrics(self.settings.metrics_listen)
        self.inherited.close_rest()
        for kind, bound in self.addresses.items():
            for address in bound:
                log.info("listening: %s %s", kind, address)
        log.info("edge location %s ready; CA at %s", self.settings.location, self.ca_path)
        if self.settings.quick_tunnel_file is not None:
            self._provision_quick_tunnel(self.settings.quick_tunnel_file, advertise)
        if self.settings.ready_file is not None:
            self._write_ready_file(self.settings.ready_file, advertise)

    def _gated(
        self,
        name: str,
        address: str,
        protocol: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext,
        handshake_timeout: float,
        admission: Admission,
        *,
        check_groups: bool = False,
        hello_router: HelloRouter | None = None,
    ) -> GatedListener:
        """A TLS listener on the socket a predecessor handed over as ``name``, or on a new
        one bound to ``address``."""
        sock = self.inherited.take(name)
        if sock is not None:
            gated = GatedListener(
                sock,
                protocol,
                context,
                handshake_timeout,
                admission,
                check_groups=check_groups,
                hello_router=hello_router,
            )
        else:
            host, port = _listen_address(address)
            gated = GatedListener.bind(
                host,
                port,
                protocol,
                context,
                handshake_timeout,
                admission,
                check_groups=check_groups,
                hello_router=hello_router,
            )
        self.servers.append(gated)
        self.listening[name] = gated.sockets[0].fileno()
        return gated

    async def _bind_tunnel(self, index: int, address: str, context: ssl.SSLContext) -> list[str]:
        """The ``index``-th tunnel listener: TLS over TCP and QUIC over UDP on one port; its
        bound addresses.

        Port 0 picks a TCP port the kernel knows nothing of for UDP, where something else may
        hold it: then both are bound again on another port (bounded tries), the refused TCP
        listeners held open meanwhile so the kernel does not hand out the same port again. A
        port given by number that is taken for UDP is an error like any other.
        """
        refused: list[GatedListener] = []
        try:
            for _ in range(PORT_ZERO_TRIES):
                gated, paired = await self._bind_tunnel_once(index, address, context)
                if paired:
                    return _bound(gated)
                refused.append(gated)
            raise OSError(
                errno.EADDRINUSE,
                f"no port free for both TCP and UDP at {address} in {PORT_ZERO_TRIES} tries",
            )
        finally:
            for gated in refused:
                gated.close()
                self.servers.remove(gated)

    async def _bind_tunnel_once(
        self, index: int, address: str, context: ssl.SSLContext
    ) -> tuple[GatedListener, bool]:
        """Bind the TCP listener, then UDP on its port: (listener, True), or (listener,
        False) when a port 0 landed on a UDP port something else holds. An inherited UDP
        socket is read once the predecessor no longer does (two readers lose each other's
        packets): :meth:`start_inherited_quic`."""
        loop = asyncio.get_running_loop()
        # A client address is admitted (its dial rate) before any TLS work is done.
        gated = self._gated(
            f"tunnel:{index}",
            address,
            self._new_session,
            context,
            TLS_HANDSHAKE_TIMEOUT,
            Admission(
                self.settings.tunnel_dial_rates,
                max_pending=TUNNEL_MAX_HANDSHAKES,
                max_pending_per_ip=int(self.settings.tunnel_dial_rates.burst),
            ),
            check_groups=True,
        )
        inherited = self.inherited.take(f"quic:{index}")
        if inherited is not None:
            relay = self.inherited.take(f"quic-relay:{index}")
            self._quic_inherited.append((index, inherited, relay))
            return gated, True
        host, port = _listen_address(_bound(gated)[0])
        try:
            _, listener = await loop.create_datagram_endpoint(
                self._quic_listener, local_addr=(host, port), reuse_port=False
            )
        except OSError as exc:
            if not _address_in_use(exc) or _listen_address(address)[1] != 0:
                raise
            return gated, False
        self._listed_quic(index, listener)
        return gated, True

    def _quic_listener(self) -> QuicListener:
        """A tunnel listener's QUIC protocol (on a new or an inherited UDP socket)."""
        config = self._quic_config
        assert config is not None
        return QuicListener(
            config,
            self._new_quic_session,
            max_connections=TUNNEL_MAX_HANDSHAKES,
            max_connections_per_ip=int(self.settings.tunnel_dial_rates.burst),
        )

    def _listed_quic(self, index: int, listener: QuicListener) -> None:
        self.quic_listeners.append(listener)
        self._quic_by_index[index] = listener
        assert listener.transport is not None
        self.listening[f"quic:{index}"] = listener.transport.get_extra_info("socket").fileno()

    async def start_inherited_quic(self) -> None:
        """Read the UDP sockets a predecessor handed over (it reads them no more); what
        belongs to its QUIC connections is relayed to it."""
        loop = asyncio.get_running_loop()
        for index, sock, relay in self._quic_inherited:
            _, listener = await loop.create_datagram_endpoint(self._quic_listener, sock=sock)
            if relay is not None:
                listener.stray = RelaySender(relay)
            self._listed_quic(index, listener)
        self._quic_inherited.clear()

    def _provision_quick_tunnel(self, path: Path, advertise: tuple[str, ...]) -> None:
        label = secrets.token_hex(6)
        account = self.store.create_account("quick")
        tunnel = self.store.create_tunnel(account.tag, f"quick-{label}")
        # The edge's own route, outside any zone: the one narrow exception to zones.
        hostname = self.store.route_quick_tunnel(account.tag, tunnel.id, label)
        http_port = split_host_port(self.addresses["http"][0])[1]
        token = encode_tunnel_token(
            TunnelCredentials(
                account_tag=account.tag,
                tunnel_secret=tunnel.secret,
                tunnel_id=tunnel.id,
                edge=advertise,
                edge_ca_pem=self.ca.cert_pem,
            )
        )
        # An API token of the quick account too: the CLI that started this edge prints the URL
        # once the tunnel has a connection, which it learns from the API (`connections`).
        api_token = self.store.create_api_token(account.tag, "quick").token
        data = {
            "hostname": hostname,
            "url": f"http://{hostname}:{http_port}",
            "token": token,
            "tunnel_id": str(tunnel.id),
            "account_tag": account.tag,
            "api_url": self.addresses["api"][0],
            "api_token": api_token,
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out)

    def _public_tls_context(self) -> ssl.SSLContext:
        """The HTTPS listener's context: a leaf per routed hostname, chosen by SNI.

        Leaves are issued by the edge CA on first use and kept for the process's life;
        names that are not routed (or no SNI) get the API names' certificate.
        """
        default = self.ca.api_server_context(self.settings.api_names)
        harden_public_tls(default)
        by_name: dict[str, ssl.SSLContext] = {}

        certificates = self.certificates

        def choose(connection: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            if not name:
                return
            name = name.lower()
            if certificates is not None and (chosen := certificates.context_for(name)):
                connection.context = chosen
                return
            context = by_name.get(name)
            if context is None:
                try:
                    if (
                        name != self.settings.management_hostname
                        and self.store.tunnel_for_hostname(name) is None
                        and not self.access.guards(name)  # an Access team domain
                    ):
                        return
                except InvalidHostname:
                    return
                context = self.ca.issue_leaf([name]).server_context()
                harden_public_tls(context)
                by_name[name] = context
            connection.context = context

        default.sni_callback = choose
        return default

    async def _serve_metrics(self, address: str) -> None:
        from adit.edge.cert_metrics import render_metrics
        from adit.metrics_listener import MetricsListenerError, MetricsServer, bind_metrics_socket

        sock = self.inherited.take("metrics:0")
        try:
            if sock is None:
                sock = bind_metrics_socket(address)
        except MetricsListenerError as exc:
            raise OSError(f"--metrics {address}: {exc}") from None
        server = MetricsServer(
            lambda: (200, {"status": 200}),
            lambda: render_metrics(self.certificates) + handover_metrics(self.handover_failures),
        )
        await server.start(sock)
        self.listening["metrics:0"] = sock.fileno()
        self._metrics_server = server
        self.addresses["metrics"] = _bound_socket(sock)

    @property
    def ca_path(self) -> Path:
        """The CA certificate connectors use as ``--cacert``."""
        return self.settings.state_dir / "ca.pem"

    def _write_ready_file(self, path: Path, advertise: tuple[str, ...]) -> None:
        data = {
            "tunnel": self.addresses["tunnel"],
            "advertise": list(advertise),
            "http": self.addresses["http"],
            "https": self.addresses["https"],
            "api": self.addresses["api"],
            "metrics": self.addresses.get("metrics", []),
            "ca": str(self.ca_path),
            "pid": os.getpid(),
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)

    def _new_session(self) -> TunnelSession:
        session = TunnelSession(
            self.store,
            self.registry,
            self.identity,
            on_closed=self.sessions.discard,
            liveness=self.liveness,
        )
        self.sessions.add(session)
        return session

    def _new_quic_session(
        self, quic: TunnelQuicConnection, listener: QuicListener
    ) -> QuicTunnelSession:
        def closed(session: TunnelSession) -> None:
            self.sessions.discard(session)
            listener.forget(session)

        session = QuicTunnelSession(
            quic,
            self.store,
            self.registry,
            self.identity,
            listener=listener,
            on_closed=closed,
            liveness=self.liveness,
        )
        self.sessions.add(session)
        return session

    def _api_protocol(self) -> Http1Connection:
        return Http1Connection(self._api_request, self._api_bad_request, tracker=self._api_tracker)

    async def _api_bad_request(self, conn: Http1Connection, exc: BadRequest) -> None:
        status = 408 if isinstance(exc, RequestTimeout) else 400
        with contextlib.suppress(Exception):
            await conn.respond_simple(
                status,
                b'{"success":false}',
                content_type="application/json",
                extra=(("Connection", "close"),),
            )

    async def _api_request(self, conn: Http1Connection, request: Request) -> bool:
        assert self.api is not None
        flow = flow_path(request.target)
        if flow is not None:
            # A private-network flow: a WebSocket, not a request and a response.
            assert self.flows is not None
            return await self.flows.serve(conn, request, *flow)
        body = bytearray()
        await conn.send_continue()
        while chunk := await conn.read_body():
            body += chunk
            if len(body) > MAX_API_BODY:
                await conn.respond_simple(
                    413,
                    b'{"success":false}',
                    content_type="application/json",
                    extra=(("Connection", "close"),),
                )
                return False
        status, headers, payload = await self.api.handle(
            request.method.decode("ascii"),
            request.target.decode("latin-1"),
            request.headers,
            bytes(body),
        )
        response_headers = [
            (n.decode("latin-1"), v.decode("latin-1"))
            for n, v in headers
            if n.lower() != b"content-length"
        ]
        response_headers.append(("Content-Length", str(len(payload))))
        await conn.start_response(status, response_headers, flush=False)
        await conn.send_body(payload, flush=False)
        await conn.end_response()
        return True

    # -- the hand-over (SIGUSR2: adit.edge.handover) ------------------------------------------

    def spawn_successor(self) -> Successor:
        """Start the installed ``adit edge`` with this process's listening sockets (and a
        relay for each UDP socket's datagrams of this process's QUIC connections)."""
        fds = dict(self.listening)
        theirs: list[socket.socket] = []
        try:
            for index, listener in self._quic_by_index.items():
                ours, their = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
                ours.setblocking(False)
                their.setblocking(False)
                self._relays.append((listener, ours))
                theirs.append(their)
                fds[f"quic-relay:{index}"] = their.fileno()
            return Successor(successor_argv(), os.environ, fds)
        except BaseException:
            self.close_relays()
            raise
        finally:
            for sock in theirs:
                sock.close()

    def hand_over(self) -> list[uuid.UUID]:
        """The successor is ready: stop reading the UDP sockets (their datagrams come
        relayed now), close every listening socket, let eyeball connections end after their
        response in progress, and route no new request to a tunnel connection. Returns the
        tunnels that have connections here (the successor holds their requests while their
        connectors move)."""
        loop = asyncio.get_running_loop()
        for listener in self.quic_listeners:
            listener.stop_reading()
        for listener, relay in self._relays:
            loop.add_reader(relay.fileno(), self._relayed, listener, relay)
        self.stop_listening()
        return sorted({conn.tunnel_id for conn in self.registry.all_connections()})

    def _relayed(self, listener: QuicListener, relay: socket.socket) -> None:
        for _ in range(64):  # bounded per wake-up: the loop serves the rest meanwhile
            try:
                message = relay.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                asyncio.get_running_loop().remove_reader(relay.fileno())
                return
            decoded = decode_relayed(message)
            if decoded is not None:
                listener.datagram_received(*decoded)

    def close_relays(self) -> None:
        """The successor relays nothing more (it failed, or this process is done)."""
        loop = asyncio.get_running_loop()
        for _, relay in self._relays:
            with contextlib.suppress(Exception):
                loop.remove_reader(relay.fileno())
            relay.close()
        self._relays.clear()

    async def move_tunnels(self, grace: float) -> None:
        """Close each tunnel connection (GOAWAY, or QUIC's close) once no request is in
        flight on it, within ``grace``; its connector redials the successor.

        Not before the requests still due here have come: those of visitor connections
        accepted before the listeners closed (bounded by the head timeout). Each one's
        response is its connection's last, so after them no request comes here at all.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.sessions and loop.time() < deadline:
            if not any(tracker.awaiting() for tracker in self.trackers):
                for session in list(self.sessions):
                    if not session.in_flight and not session.closed:
                        session.close("edge handed over to a new process")
            if self.sessions:
                await asyncio.sleep(0.05)

    def stop_listening(self) -> None:
        """Close every listening socket (new connections are refused from now on) and let
        each eyeball connection end after its response in progress (idle ones close now)."""
        for server in self.servers:
            server.close()
        for listener in self.quic_listeners:
            listener.stop_accepting()
        if self.flows is not None:
            # Private flows last for hours: they end now (their clients told why), not after
            # the grace period meant for requests in flight.
            self.flows.drain()
        for tracker in self.trackers:
            tracker.drain()

    async def drained(self) -> None:
        """Until every eyeball connection has ended (their requests finished)."""
        for tracker in self.trackers:
            await tracker.wait_empty()

    async def stop(self) -> None:
        """Close what is left: eyeball connections at once, then every tunnel connection."""
        if self._config_sync is not None:
            self._config_sync.cancel()
        if self._access_sweep is not None:
            self._access_sweep.cancel()
        if self.certificates is not None:
            await self.certificates.stop()
        if self._metrics_server is not None:
            await self._metrics_server.close()
        for tracker in self.trackers:
            tracker.abort_all()
            tracker.close()
        for session in list(self.sessions):
            session.close("edge shutting down")
        for listener in self.quic_listeners:
            # After the sessions: their CONNECTION_CLOSE goes out on the listener's socket.
            listener.close()
        self.close_relays()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        with contextlib.suppress(Exception):
            self.access.decisions.write_now()  # the last moment's decisions are kept too
        self.store.close()


async def run_edge(settings: EdgeSettings) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code.

    systemd sees READY=1 once every listener is bound, RELOADING=1/READY=1 around SIGHUP and
    STOPPING=1 when shutdown begins; after a hand-over (SIGUSR2) ``MAINPID=`` of the new
    process, which sends READY=1 once it is main. The edge's state lives in its store; routes
    are kept in memory and followed by a watcher thread, and a reload re-reads them at once.
    """
    loop = asyncio.get_running_loop()
    notifier = SystemdNotifier()
    notify = notifier.notify
    signals: asyncio.Queue[int] = asyncio.Queue()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2):
        loop.add_signal_handler(signum, signals.put_nowait, signum)
    # A predecessor that handed over (adit.edge.handover) left its sockets and a channel.
    predecessor = Predecessor.from_environ(os.environ)
    inherited = Inherited.from_environ(os.environ)
    edge = EdgeServer(settings, inherited)
    if predecessor is not None:
        # Visitors reach this process from now on; the connectors are still at the old one.
        edge.registry.hold = TunnelHold(
            until=loop.time() + MAIN_TIMEOUT + settings.grace_period + settings.handover_hold,
            longest=settings.handover_hold,
        )
    try:
        await edge.start()
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        return 1
    # What start-up made (modules, schemas, TLS contexts) lives as long as the process: out of
    # the collector's way, so its full collections under load walk only what requests made.
    gc.freeze()
    if predecessor is not None:
        moving = await predecessor.ready()
        if edge.registry.hold is not None:
            edge.registry.hold.narrow(
                moving, loop.time() + settings.grace_period + settings.handover_hold
            )
        await edge.start_inherited_quic()
        log.info(
            "took over from the previous edge: %d tunnels' connectors are moving here",
            len(moving),
        )
    notify("READY=1")
    watcher = (
        loop.create_task(_watch_parent(settings.exit_with_pid, signals))
        if settings.exit_with_pid is not None
        else None
    )
    trimming = loop.create_task(_trim_heap(HeapTrimmer()))
    successor: Successor | None = None
    waiting: asyncio.Task[HandoverOutcome] | None = None
    while True:
        received = await signals.get()
        if received == signal.SIGHUP:
            usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")
            try:
                table = await loop.run_in_executor(None, edge.store.load_routes)
                private = await loop.run_in_executor(None, edge.store.load_private_routes)
                log.info("reloaded: %d routes, %d private routes", len(table), len(private))
            except (sqlite3.Error, StoreError) as exc:
                log.warning("reload: cannot read routes from the store: %s", exc)
            notify("READY=1")
        elif received == signal.SIGUSR2:
            if waiting is not None:
                log.warning("SIGUSR2: a hand-over is already in progress")
            elif settings.ephemeral or settings.quick_tunnel_file is not None:
                log.warning("SIGUSR2: a quick tunnel's edge does not hand over")
            else:
                try:
                    successor = edge.spawn_successor()
                except OSError as exc:
                    edge.handover_failures += 1
                    log.error("hand-over failed: cannot start the new edge: %s", exc)
                    continue
                log.info(
                    "SIGUSR2: started the new edge (pid %d) with this one's sockets", successor.pid
                )
                waiting = loop.create_task(successor.wait_ready(settings.handover_timeout))
                waiting.add_done_callback(lambda _: signals.put_nowait(_HANDOVER_ENDED))
        elif received == _HANDOVER_ENDED and waiting is not None and successor is not None:
            outcome = waiting.result()
            waiting = None
            if not outcome.error:
                return await _handed_over(
                    edge, successor, outcome, notifier, signals, trimming, watcher
                )
            edge.handover_failures += 1
            edge.close_relays()
            log.error(
                "hand-over to %s (pid %d) failed: %s; this edge keeps serving",
                outcome.version,
                outcome.pid,
                outcome.error,
            )
            successor = None
        elif received in (signal.SIGTERM, signal.SIGINT):
            break
    if waiting is not None and successor is not None:
        waiting.cancel()
        successor.stop()
        edge.close_relays()
    notify("STOPPING=1")
    log.info(
        "shutting down on %s: in-flight requests have %gs to finish",
        signal.Signals(received).name,
        settings.grace_period,
    )
    if watcher is not None:
        watcher.cancel()
    trimming.cancel()
    edge.stop_listening()
    await _drain(edge, signals, settings.grace_period)
    await edge.stop()
    notifier.close()
    if settings.ephemeral:
        shutil.rmtree(settings.state_dir, ignore_errors=True)
    return 0


async def _handed_over(
    edge: EdgeServer,
    successor: Successor,
    outcome: HandoverOutcome,
    notifier: SystemdNotifier,
    signals: asyncio.Queue[int],
    trimming: asyncio.Task[None],
    watcher: asyncio.Task[None] | None,
) -> int:
    """The successor is ready: systemd follows it (``MAINPID=``, sent while this is still
    the main process), it gets the sockets to itself, and this process drains and exits 0.
    No STOPPING=1: the service is not stopping, and no state directory is removed."""
    notifier.notify(f"MAINPID={outcome.pid}")
    notifier.close()
    grace = edge.settings.grace_period
    log.info(
        "handing over to %s (pid %d): no longer accepting; in-flight requests have %gs to "
        "finish, tunnel connections close as they become idle",
        outcome.version,
        outcome.pid,
        grace,
    )
    if watcher is not None:
        watcher.cancel()
    trimming.cancel()
    moving = edge.hand_over()
    successor.tell_main(moving)
    tunnels = asyncio.ensure_future(edge.move_tunnels(grace))
    await _drain(edge, signals, grace)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(grace):
            await tunnels
    await edge.stop()
    log.info("handed over to pid %d; exiting", outcome.pid)
    return 0


async def _drain(edge: EdgeServer, signals: asyncio.Queue[int], grace: float) -> None:
    """Wait for in-flight requests: until none is left, the grace period is over, or a second
    SIGTERM/SIGINT says to stop now (a SIGHUP or SIGUSR2 meanwhile changes nothing)."""
    drained = asyncio.ensure_future(edge.drained())
    try:
        async with asyncio.timeout(grace):
            while not drained.done():
                second = asyncio.ensure_future(signals.get())
                await asyncio.wait({drained, second}, return_when=asyncio.FIRST_COMPLETED)
                if not second.done():
                    second.cancel()
                elif second.result() in (signal.SIGTERM, signal.SIGINT):
                    log.info("second signal: not waiting for in-flight requests")
                    return
                elif second.result() == signal.SIGUSR2:
                    # An upgrade that still saw this process as the main one: the new edge
                    # (if any) is systemd's now; this one only finishes what it has.
                    log.warning("SIGUSR2 while draining: ignored (this edge is shutting down)")
        log.info("in-flight requests finished")
    except TimeoutError:
        log.warning("grace period over: closing the connections still in flight")
    finally:
        drained.cancel()


async def _trim_heap(trimmer: HeapTrimmer) -> None:
    """Give freed heap memory back now and then (see :class:`~adit.allocator.HeapTrimmer`)."""
    while True:
        await asyncio.sleep(HEAP_CHECK_INTERVAL)
        if trimmer.check():
            log.debug("gave freed heap memory back: %d MiB resident", trimmer.resident() >> 20)


async def _watch_parent(pid: int, signals: asyncio.Queue[int]) -> None:
    """Enqueue SIGTERM once ``pid`` no longer exists."""
    while True:
        await asyncio.sleep(0.5)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            signals.put_nowait(signal.SIGTERM)
            return
        except PermissionError:
            continue
