"""The ``adit edge`` process: tunnel listener, public listener, management API.

Signals only enqueue; the main coroutine stops the listeners, says GOAWAY to every connector
and exits 0 on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from adit.credentials import TunnelCredentials, encode_tunnel_token
from adit.edge.api import EdgeInfo, ManagementApi
from adit.edge.ca import EdgeCA
from adit.edge.http1 import BadRequest, Http1Connection, Request
from adit.edge.public import PublicListener
from adit.edge.registry import ConnectionRegistry
from adit.edge.store import Store
from adit.edge.tunnel_session import EdgeIdentity, TunnelSession
from adit.protocol.liveness import (
    DEFAULT_ALLOWANCE,
    DEFAULT_INTERVAL,
    DEFAULT_TIMEOUT,
    LivenessSettings,
)
from adit.systemd import SystemdNotifier

log = logging.getLogger("adit.edge")

#: A TLS handshake that does not finish in this time is dropped (half-open guard).
TLS_HANDSHAKE_TIMEOUT = 10.0
MAX_API_BODY = 1024 * 1024


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
    #: Liveness of connector connections (:mod:`adit.protocol.liveness`): a PING after this
    #: much silence...
    tunnel_ping_interval: float = DEFAULT_INTERVAL
    #: ...unanswered this long: no new requests to that connection...
    tunnel_ping_timeout: float = DEFAULT_ALLOWANCE
    #: ...and silent this long: the connection is closed.
    tunnel_idle_timeout: float = DEFAULT_TIMEOUT

    @property
    def tunnel_liveness(self) -> LivenessSettings:
        """The liveness rule for connector connections (ValueError when inconsistent)."""
        return LivenessSettings(
            self.tunnel_ping_interval, self.tunnel_ping_timeout, self.tunnel_idle_timeout
        )


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``; empty host = all addresses) → (host, port)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    return host or "0.0.0.0", int(port)  # noqa: S104 - an edge listens publicly by design


def _bound(server: asyncio.Server) -> list[str]:
    out = []
    for sock in server.sockets:
        host, port = sock.getsockname()[:2]
        out.append(f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}")
    return out


class EdgeServer:
    """Owns the store, the CA, the registry and the listeners of one edge process."""

    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings
        settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.ca = EdgeCA.load_or_create(settings.state_dir)
        self.store = Store.open_in(settings.state_dir)
        self.registry = ConnectionRegistry()
        self.identity = EdgeIdentity(location=settings.location)
        self.liveness = settings.tunnel_liveness
        self.sessions: set[TunnelSession] = set()
        self.servers: list[asyncio.Server] = []
        self.addresses: dict[str, list[str]] = {}
        self.api: ManagementApi | None = None

    async def start(self) -> None:
        """Bind every listener; then write the ready file."""
        loop = asyncio.get_running_loop()
        tunnel_tls = self.ca.tunnel_server_context()
        tunnel_bound: list[str] = []
        for address in self.settings.tunnel_listen:
            host, port = split_address(address)
            server = await loop.create_server(
                self._new_session,
                host,
                port,
                ssl=tunnel_tls,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
                reuse_address=True,
            )
            self.servers.append(server)
            tunnel_bound += _bound(server)
        self.addresses["tunnel"] = tunnel_bound
        advertise = self.settings.advertise or tuple(
            a.replace("0.0.0.0", "127.0.0.1")  # noqa: S104 - rewriting, not binding
            for a in tunnel_bound
        )
        self.api = ManagementApi(
            self.store, self.registry, EdgeInfo(tunnel_addresses=advertise, ca_pem=self.ca.cert_pem)
        )
        public = PublicListener(
            self.store, self.registry, location=self.settings.location, scheme="http"
        )
        self.addresses["http"] = []
        for address in self.settings.http_listen:
            host, port = split_address(address)
            server = await loop.create_server(public.protocol, host, port, reuse_address=True)
            self.servers.append(server)
            self.addresses["http"] += _bound(server)
        self.addresses["https"] = []
        if self.settings.https_listen:
            secure = PublicListener(
                self.store, self.registry, location=self.settings.location, scheme="https"
            )
            public_tls = self._public_tls_context()
            for address in self.settings.https_listen:
                host, port = split_address(address)
                server = await loop.create_server(
                    secure.protocol,
                    host,
                    port,
                    reuse_address=True,
                    ssl=public_tls,
                    ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
                )
                self.servers.append(server)
                self.addresses["https"] += _bound(server)
        api_tls = self.ca.api_server_context(self.settings.api_names)
        self.addresses["api"] = []
        for address in self.settings.api_listen:
            host, port = split_address(address)
            server = await loop.create_server(
                self._api_protocol,
                host,
                port,
                ssl=api_tls,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
                reuse_address=True,
            )
            self.servers.append(server)
            self.addresses["api"] += [f"https://{a}" for a in _bound(server)]
        for kind, bound in self.addresses.items():
            for address in bound:
                log.info("listening: %s %s", kind, address)
        log.info("edge location %s ready; CA at %s", self.settings.location, self.ca_path)
        if self.settings.quick_tunnel_file is not None:
            self._provision_quick_tunnel(self.settings.quick_tunnel_file, advertise)
        if self.settings.ready_file is not None:
            self._write_ready_file(self.settings.ready_file, advertise)

    def _provision_quick_tunnel(self, path: Path, advertise: tuple[str, ...]) -> None:
        label = secrets.token_hex(6)
        account = self.store.create_account("quick")
        tunnel = self.store.create_tunnel(account.tag, f"quick-{label}")
        hostname = f"{label}.localhost"
        self.store.route_hostname(account.tag, tunnel.id, hostname)
        http_port = self.addresses["http"][0].rsplit(":", 1)[1]
        token = encode_tunnel_token(
            TunnelCredentials(
                account_tag=account.tag,
                tunnel_secret=tunnel.secret,
                tunnel_id=tunnel.id,
                edge=advertise,
                edge_ca_pem=self.ca.cert_pem,
            )
        )
        data = {"hostname": hostname, "url": f"http://{hostname}:{http_port}", "token": token}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out)

    def _public_tls_context(self) -> ssl.SSLContext:
        """The HTTPS listener's context: a leaf per routed hostname, chosen by SNI.

        Leaves are issued by the edge CA on first use and kept for the process's life;
        names that are not routed (or no SNI) get the API names' certificate.
        """
        default = self.ca.api_server_context(self.settings.api_names)
        default.set_alpn_protocols(["http/1.1"])
        by_name: dict[str, ssl.SSLContext] = {}

        def choose(connection: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            if not name:
                return
            name = name.lower()
            context = by_name.get(name)
            if context is None:
                if self.store.tunnel_for_hostname(name) is None:
                    return
                context = self.ca.issue_leaf([name]).server_context()
                context.set_alpn_protocols(["http/1.1"])
                by_name[name] = context
            connection.context = context

        default.sni_callback = choose
        return default

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

    def _api_protocol(self) -> Http1Connection:
        return Http1Connection(self._api_request, self._api_bad_request)

    async def _api_bad_request(self, conn: Http1Connection, exc: BadRequest) -> None:
        with contextlib.suppress(Exception):
            await conn.respond_simple(400, b'{"success":false}', content_type="application/json")

    async def _api_request(self, conn: Http1Connection, request: Request) -> bool:
        assert self.api is not None
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

    async def stop(self) -> None:
        """Stop listening and close every tunnel connection."""
        for server in self.servers:
            server.close()
        for session in list(self.sessions):
            session.close("edge shutting down")
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        self.store.close()


async def run_edge(settings: EdgeSettings) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code.

    systemd sees READY=1 once every listener is bound, RELOADING=1/READY=1 around SIGHUP and
    STOPPING=1 when shutdown begins. The edge's state lives in its store, read per request,
    so a reload has nothing to re-read yet: it only tells systemd it is done.
    """
    loop = asyncio.get_running_loop()
    notifier = SystemdNotifier()
    notify = notifier.notify
    signals: asyncio.Queue[int] = asyncio.Queue()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, signals.put_nowait, signum)
    edge = EdgeServer(settings)
    try:
        await edge.start()
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        return 1
    # What start-up made (modules, schemas, TLS contexts) lives as long as the process: out of
    # the collector's way, so its full collections under load walk only what requests made.
    gc.freeze()
    notify("READY=1")
    watcher = (
        loop.create_task(_watch_parent(settings.exit_with_pid, signals))
        if settings.exit_with_pid is not None
        else None
    )
    while (received := await signals.get()) == signal.SIGHUP:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")
        log.info("reload requested: routes and tunnels are read from the store per request")
        notify("READY=1")
    notify("STOPPING=1")
    log.info("shutting down on %s", signal.Signals(received).name)
    if watcher is not None:
        watcher.cancel()
    await edge.stop()
    notifier.close()
    if settings.ephemeral:
        shutil.rmtree(settings.state_dir, ignore_errors=True)
    return 0


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
