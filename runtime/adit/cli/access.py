"""``adit access`` (alias ``forward``): the client side of TCP over WebSocket.

``tcp``/``ssh``/``rdp``/``smb`` are one command, as in cloudflared (CLOUDFLARED_FEATURES.md
§1.15, §7.1): with ``--url`` it listens and gives each accepted connection its own WebSocket
to ``wss://HOSTNAME/``; without it, stdin/stdout carry one connection (ssh's ProxyCommand).
Without ``--hostname``, ``--destination IP:PORT`` reaches a private address behind a tunnel
through the edge's API (adit's stand-in for the WARP client), as does ``udp`` for UDP: see
:mod:`adit.cli.access_private`.

Dialling: the hostname is reached over TLS at ``HOSTNAME:443``, as cloudflared does, trusting
the system's CAs. A self-hosted edge whose name is not in DNS, or whose certificate its own CA
signed, is reached with two adit options: ``--edge HOST[:PORT]`` (or ``https://HOST:PORT``;
``http://HOST:PORT`` for a plain-HTTP listener) dials there instead, still sending SNI and
``Host`` for the hostname, and ``--cacert CA.pem`` trusts that CA instead of the system's.
cloudflared's hidden ``--connect-to`` (``host``, ``host:port`` or ``sni:port:host``, the last
one without certificate verification) is kept, and ``--edge-url`` is a hidden alias of
``--edge``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import click
import idna

from adit.cli.access_errors import dial_error, refusal_error
from adit.cli.access_frames import FrameSender
from adit.protocol.hostnames import AddressError, host_of_authority, split_address
from adit.protocol.websocket import (
    CloseCode,
    Opcode,
    Role,
    WebSocketConnection,
    WebSocketError,
    accept_key,
    client_key,
)
from adit.version import __version__

__all__ = ["EdgeTarget", "access", "handshake_request", "resolve_target"]

log = logging.getLogger("adit.access")

_READ = 64 * 1024
_MAX_HEAD = 64 * 1024
_HANDSHAKE_TIMEOUT = 30.0


class AccessError(click.ClickException):
    """The WebSocket to the edge could not be opened."""


class HandshakeRefused(AccessError):
    """The edge answered the upgrade with another status; ``body`` is what it said."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f'failed to connect to origin error="websocket: bad handshake" ({status})')
        self.status = status
        self.body = body


@dataclass(frozen=True, slots=True)
class EdgeTarget:
    """Where to dial and what to send: ``Host`` and path, TCP address, TLS settings."""

    host_header: str
    path: str
    address: str
    port: int
    tls: bool
    server_name: str
    verify: bool = True
    #: PEM of the only CA to trust (--cacert, or the edge CA pinned in cert.pem); empty: the
    #: system's.
    ca_pem: str = ""
    #: Where ``ca_pem`` came from, for errors ("" with the system's CAs).
    ca_source: str = ""


def _split_host(netloc: str, default_port: int) -> tuple[str, int]:
    try:
        return split_address(netloc)
    except AddressError:
        return host_of_authority(netloc), default_port


def _punycode(host: str) -> str:
    try:
        return idna.encode(host, uts46=True).decode("ascii") if not host.isascii() else host
    except idna.IDNAError as exc:
        raise click.BadParameter(f"invalid hostname {host!r}: {exc}") from exc


def resolve_target(
    hostname: str, connect_to: str = "", edge: str = "", cacert: str = ""
) -> EdgeTarget:
    """cloudflared's ``parseURL`` + ``--connect-to`` handling, plus ``--edge`` and
    ``--cacert``."""
    raw = hostname if hostname.startswith(("https://", "http://")) else f"https://{hostname}"
    parts = urlsplit(raw)
    if not parts.hostname:
        raise click.BadParameter("failed to parse Host", param_hint="--hostname")
    netloc = parts.netloc.rpartition("@")[2]
    host, port = _split_host(netloc, 443)
    host = _punycode(host)
    bracketed = f"[{host}]" if ":" in host else host
    host_header = bracketed if port == 443 else f"{bracketed}:{port}"
    path = parts.path or "/"
    ca_pem = read_cacert(cacert) if cacert else ""
    ca_source = f"--cacert {cacert}" if cacert else ""
    if edge and connect_to:
        raise click.UsageError("give --edge or --connect-to, not both")
    if edge:
        address, edge_port, tls = parse_edge(edge)
        return EdgeTarget(
            host_header, path, address, edge_port, tls, host, ca_pem=ca_pem, ca_source=ca_source
        )
    if connect_to:
        pieces = connect_to.split(":")
        if len(pieces) == 1:
            return EdgeTarget(
                host_header, path, pieces[0], 443, True, host, True, ca_pem, ca_source
            )
        if len(pieces) == 2:
            return EdgeTarget(
                host_header, path, pieces[0], int(pieces[1]), True, host, True, ca_pem, ca_source
            )
        if len(pieces) == 3:
            log.warning("Using insecure SSL connection because SNI overridden to %s", pieces[0])
            return EdgeTarget(
                host_header, path, pieces[2], int(pieces[1]), True, pieces[0], verify=False
            )
        raise click.ClickException(f"invalid connection override: {connect_to}")
    return EdgeTarget(host_header, path, host, port, True, host, ca_pem=ca_pem, ca_source=ca_source)


def parse_edge(value: str) -> tuple[str, int, bool]:
    """``--edge``: ``HOST[:PORT]`` or ``https://HOST[:PORT]`` (TLS, port 443 by default), or
    ``http://HOST[:PORT]`` (plain, port 80); ``wss``/``ws`` as ``https``/``http``."""
    scheme, sep, rest = value.partition("://")
    if not sep:
        scheme, rest = "https", value
    scheme = scheme.lower()
    if scheme not in ("https", "wss", "http", "ws"):
        raise click.BadParameter(
            f"{value!r}: the scheme must be https or http", param_hint="--edge"
        )
    tls = scheme in ("https", "wss")
    netloc, _, path = rest.partition("/")
    if path or not netloc or "@" in netloc:
        raise click.BadParameter(
            f"{value!r}: give HOST:PORT or https://HOST:PORT (no path)", param_hint="--edge"
        )
    try:
        address, port = _split_host(netloc, 443 if tls else 80)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: {exc}", param_hint="--edge") from exc
    if not address or not 0 < port < 65536:
        raise click.BadParameter(f"{value!r}: not a HOST:PORT", param_hint="--edge")
    return address, port, tls


def read_cacert(path: str) -> str:
    """``--cacert``: the PEM file's text, checked to hold a certificate OpenSSL loads."""
    try:
        with open(os.path.expanduser(path), encoding="ascii", errors="replace") as handle:
            pem = handle.read(1024 * 1024)
    except OSError as exc:
        raise click.BadParameter(
            f"cannot read {path}: {exc.strerror or exc}", param_hint="--cacert"
        ) from exc
    try:
        if "-----BEGIN CERTIFICATE-----" not in pem:
            raise ssl.SSLError("no BEGIN CERTIFICATE line")
        ssl.create_default_context(cadata=pem)
    except ssl.SSLError as exc:
        raise click.BadParameter(
            f"{path} holds no PEM CA certificate ({exc}): give the edge's ca.pem",
            param_hint="--cacert",
        ) from exc
    return pem


def handshake_request(target: EdgeTarget, key: str, headers: Sequence[tuple[str, str]]) -> bytes:
    """The HTTP/1.1 upgrade request, in the header order cloudflared's dialer sends."""
    lines = [f"GET {target.path} HTTP/1.1", f"Host: {target.host_header}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines += [
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        "Upgrade: websocket",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _client_context(target: EdgeTarget) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=target.ca_pem or None)
    context.set_alpn_protocols(["http/1.1"])
    if not target.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def open_websocket(
    target: EdgeTarget, headers: Sequence[tuple[str, str]]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """Dial, upgrade, check ``Sec-WebSocket-Accept``; returns the bytes read past the head."""
    key = client_key(os.urandom(16))
    try:
        async with asyncio.timeout(_HANDSHAKE_TIMEOUT):
            reader, writer = await asyncio.open_connection(
                target.address,
                target.port,
                ssl=_client_context(target) if target.tls else None,
                server_hostname=target.server_name if target.tls else None,
                limit=_MAX_HEAD,
            )
            writer.write(handshake_request(target, key, headers))
            await writer.drain()
            buffer = b""
            while b"\r\n\r\n" not in buffer:
                chunk = await reader.read(_READ)
                if not chunk or len(buffer) > _MAX_HEAD:
                    raise AccessError("websocket: bad handshake (connection closed)")
                buffer += chunk
    except (OSError, TimeoutError) as exc:
        raise AccessError(
            dial_error(
                exc,
                address=target.address,
                port=target.port,
                server_name=target.server_name,
                ca_source=target.ca_source,
            )
        ) from exc
    head, _, rest = buffer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    fields = status_line.split(" ", 2)
    status = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
    received = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        received[name.strip().lower()] = value.strip()
    if status != 101:
        body = await _refusal_body(reader, rest, received.get("content-length", ""))
        writer.close()
        raise HandshakeRefused(status, body)
    if received.get("sec-websocket-accept") != accept_key(key):
        writer.close()
        raise AccessError("websocket: bad handshake (Sec-WebSocket-Accept mismatch)")
    return reader, writer, rest


async def _refusal_body(reader: asyncio.StreamReader, rest: bytes, length: str) -> bytes:
    """The body of a refused upgrade (the edge's JSON error), as much as comes in time."""
    want = int(length) if length.isdigit() else _MAX_HEAD
    body = rest
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(_HANDSHAKE_TIMEOUT):
            while len(body) < min(want, _MAX_HEAD):
                chunk = await reader.read(_READ)
                if not chunk:
                    break
                body += chunk
    return body[:want]


async def carry(
    local_reader: asyncio.StreamReader,
    local_write: _LocalWriter,
    target: EdgeTarget,
    headers: Sequence[tuple[str, str]],
) -> None:
    """One local connection ↔ one WebSocket, until either side ends."""
    try:
        reader, writer, rest = await open_websocket(target, headers)
    except HandshakeRefused as exc:
        raise AccessError(refusal_error(exc.status, exc.body, target.server_name)) from None
    ws = WebSocketConnection(Role.CLIENT)
    sender = FrameSender(writer, ws)

    async def up() -> None:
        while data := await local_reader.read(_READ):
            await sender.send_stream(data)
        await sender.send_close(CloseCode.NORMAL)
        # Keep reading the edge until it answers our close (or goes away).
        await down_done.wait()

    down_done = asyncio.Event()

    async def down() -> None:
        data = rest
        try:
            while True:
                if data:
                    try:
                        frames = ws.receive(data)
                    finally:
                        await sender.flush()
                    for frame in frames:
                        if frame.opcode in (Opcode.BINARY, Opcode.TEXT, Opcode.CONTINUATION):
                            await local_write(frame.payload)
                        elif frame.opcode == Opcode.CLOSE:
                            return
                data = await reader.read(_READ)
                if not data:
                    return
        finally:
            down_done.set()

    tasks = {asyncio.create_task(up()), asyncio.create_task(down())}
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            with contextlib.suppress(asyncio.CancelledError, WebSocketError, OSError):
                task.result()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        writer.close()


class _LocalWriter:
    """Writes to the local side: a socket writer or stdout."""

    def __init__(self, writer: asyncio.StreamWriter | None) -> None:
        self._writer = writer

    async def __call__(self, data: bytes) -> None:
        if self._writer is None:
            await asyncio.to_thread(_write_stdout, data)
            return
        self._writer.write(data)
        await self._writer.drain()


def _write_stdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


async def _stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_READ)
    protocol = asyncio.StreamReaderProtocol(reader)
    await loop.connect_read_pipe(lambda: protocol, os.fdopen(sys.stdin.fileno(), "rb", 0))
    return reader


async def _serve_stdio(target: EdgeTarget, headers: Sequence[tuple[str, str]]) -> None:
    await carry(await _stdin_reader(), _LocalWriter(None), target, headers)


async def _serve_listener(
    listen: str, target: EdgeTarget, headers: Sequence[tuple[str, str]]
) -> None:
    raw = listen if "://" in listen else f"tcp://{listen}"
    host, port = _split_host(urlsplit(raw).netloc, 0)
    if not port:
        raise click.BadParameter(f"{listen}: a port is required", param_hint="--url")

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await carry(reader, _LocalWriter(writer), target, headers)
        except AccessError as exc:
            log.error("%s", exc.message)
        finally:
            writer.close()

    server = await asyncio.start_server(accepted, host or "localhost", port)
    log.info("Start Websocket listener host=%s", f"{host}:{port}")
    async with server:
        await server.serve_forever()


def _headers(
    raw: Sequence[str], token_id: str | None, token_secret: str | None, destination: str | None
) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for item in raw:
        name, sep, value = item.partition(":")
        if sep and name.strip():
            out.append((name.strip(), value.strip()))
    if token_id:
        out.append(("Cf-Access-Client-Id", token_id))
    if token_secret:
        out.append(("Cf-Access-Client-Secret", token_secret))
    out.append(("User-Agent", f"adit/{__version__}"))
    if destination:
        out.append(("Cf-Access-Jump-Destination", destination))
    return out


@click.group("access")
def access() -> None:
    """Access applications: carry TCP (ssh, rdp, smb, any) over WebSocket through the edge."""


def _private_options(func: Callable[..., None]) -> Callable[..., None]:
    """The options of a private-network flow: where the account's login is, which virtual
    network, and (hidden) another API URL than cert.pem's."""
    func = click.option(
        "--api-url", envvar="TUNNEL_API_URL", default=None, hidden=True, help="Management API."
    )(func)
    func = click.option(
        "--vnet",
        "--vn",
        "vnet",
        default=None,
        help="For a private address: the virtual network (name or ID) whose route to use "
        "(default: the account's default one).",
    )(func)
    return click.option(
        "--origincert",
        envvar="TUNNEL_ORIGIN_CERT",
        default=None,
        help="For a private address: the cert.pem adit tunnel login wrote (default: "
        "searched as adit tunnel does).",
    )(func)


@click.command("tcp", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--hostname",
    "--tunnel-host",
    "-T",
    envvar="TUNNEL_SERVICE_HOSTNAME",
    default=None,
    help="The public hostname.",
)
@click.option(
    "--url",
    "--listener",
    "-L",
    "listen",
    envvar="TUNNEL_SERVICE_URL",
    default=None,
    help="Listen on host:port (else stdio).",
)
@click.option(
    "--edge",
    envvar="TUNNEL_SERVICE_EDGE",
    default="",
    metavar="HOST[:PORT]",
    help="A self-hosted edge's public listener to dial instead of HOSTNAME:443 (SNI and Host "
    "stay the hostname); https://HOST:PORT likewise, http://HOST:PORT for a plain-HTTP "
    "listener.",
)
@click.option(
    "--cacert",
    envvar="TUNNEL_SERVICE_CACERT",
    default="",
    metavar="CA.pem",
    help="Trust this CA (PEM) for the edge's certificate instead of the system's: a "
    "self-hosted edge's ca.pem. Not needed once the edge has a publicly trusted certificate.",
)
@click.option(
    "--destination",
    envvar="TUNNEL_SERVICE_DESTINATION",
    default=None,
    help="With --hostname: bastion mode's final host:port. Without: a private IP:PORT "
    "behind a tunnel (adit tunnel route ip), reached through the edge.",
)
@click.option("--header", "-H", "header", multiple=True, help="Header NAME: VALUE (repeat).")
@click.option(
    "--service-token-id",
    "--id",
    "token_id",
    envvar="TUNNEL_SERVICE_TOKEN_ID",
    default=None,
    help="Access service token id (CF-Access-Client-Id).",
)
@click.option(
    "--service-token-secret",
    "--secret",
    "token_secret",
    envvar="TUNNEL_SERVICE_TOKEN_SECRET",
    default=None,
    help="Access service token secret (CF-Access-Client-Secret).",
)
@click.option("--logfile", default=None, help="Also write the log to this file.")
@click.option("--log-directory", default=None, hidden=True)
@click.option(
    "--log-level",
    "--loglevel",
    "log_level",
    default="info",
    help="debug, info, warn, error or fatal.",
)
@click.option("--connect-to", default="", hidden=True, help="host, host:port or sni:port:host.")
@click.option("--edge-url", default="", hidden=True, help="The same as --edge.")
@click.option("--debug-stream", default=None, hidden=True, type=int)
@_private_options
@click.pass_context
def tcp(
    ctx: click.Context,
    hostname: str | None,
    listen: str | None,
    edge: str,
    cacert: str,
    destination: str | None,
    header: tuple[str, ...],
    token_id: str | None,
    token_secret: str | None,
    logfile: str | None,
    log_directory: str | None,
    log_level: str,
    connect_to: str,
    edge_url: str,
    debug_stream: int | None,
    origincert: str | None,
    vnet: str | None,
    api_url: str | None,
) -> None:
    """Forward a local listener (--url) or stdin/stdout to a TCP service behind a tunnel:
    a public hostname's (--hostname), or a private address (--destination IP:PORT)."""
    if not hostname and destination:
        _configure_logging(log_level, logfile, stderr=listen is not None)
        _run_private_tcp(listen, destination, origincert, vnet, api_url)
        return
    if not hostname:
        click.echo(ctx.get_help())
        ctx.exit(0)
    _configure_logging(log_level, logfile, stderr=listen is not None)
    target = resolve_target(hostname, connect_to, edge or edge_url, cacert)
    headers = _headers(header, token_id, token_secret, destination)
    if not token_id:
        # A person's token from ``adit access login`` (a service token, given, goes instead).
        from adit.cli.access_login import stored_token

        session = stored_token(target.server_name)
        if session is not None:
            headers.append(("cf-access-token", session))
    try:
        if listen:
            asyncio.run(_serve_listener(listen, target, headers))
        else:
            asyncio.run(_serve_stdio(target, headers))
    except KeyboardInterrupt:
        return


def _run_private_tcp(
    listen: str | None,
    destination: str,
    origincert: str | None,
    vnet: str | None,
    api_url: str | None,
) -> None:
    from adit.cli import access_private

    access_private.check_destination(destination)  # a typo is told before cert.pem is read
    account = access_private.load_account(origincert, api_url)
    vnet_id = access_private.resolve_vnet(account, vnet) if vnet is not None else None
    target, headers = access_private.private_target(account, "tcp", destination, vnet_id)
    try:
        asyncio.run(access_private.serve_private_tcp(listen, target, headers))
    except KeyboardInterrupt:
        return


@click.command("udp", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--destination", required=True, help="The private IP:PORT behind a tunnel.")
@click.option(
    "--listen",
    "--url",
    "listen",
    required=True,
    help="The local UDP address (host:port) whose datagrams go to the destination.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds after which a client address's flow without datagrams is closed.",
)
@click.option(
    "--max-flows",
    type=click.IntRange(min=1),
    default=128,
    show_default=True,
    help="Client addresses with a flow at once; past it the one idle longest makes room.",
)
@click.option("--logfile", default=None, help="Also write the log to this file.")
@click.option(
    "--log-level",
    "--loglevel",
    "log_level",
    default="info",
    help="debug, info, warn, error or fatal.",
)
@_private_options
def udp(
    destination: str,
    listen: str,
    idle_timeout: float,
    max_flows: int,
    logfile: str | None,
    log_level: str,
    origincert: str | None,
    vnet: str | None,
    api_url: str | None,
) -> None:
    """Relay a local UDP socket to a private IP:PORT behind a tunnel (DNS, say), through the
    edge; each client address gets a flow of its own. Needs a connector over QUIC."""
    from adit.cli import access_private

    _configure_logging(log_level, logfile, stderr=True)
    access_private.check_destination(destination)
    account = access_private.load_account(origincert, api_url)
    vnet_id = access_private.resolve_vnet(account, vnet) if vnet is not None else None
    target, headers = access_private.private_target(account, "udp", destination, vnet_id)
    try:
        asyncio.run(
            access_private.serve_udp(
                listen, target, headers, idle_timeout=idle_timeout, max_flows=max_flows
            )
        )
    except KeyboardInterrupt:
        return


def _configure_logging(level: str, logfile: str | None, *, stderr: bool) -> None:
    # In stdio mode stderr is ssh's terminal: only errors go there, as cloudflared keeps quiet.
    names = {"debug": logging.DEBUG, "warn": logging.WARNING, "error": logging.ERROR}
    root = logging.getLogger("adit")
    root.setLevel(names.get(level.lower(), logging.INFO))
    formatter = logging.Formatter("%(asctime)s %(levelname).3s %(message)s")
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.DEBUG if stderr else logging.ERROR)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    if logfile:
        file_handler = logging.FileHandler(logfile)
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)


for _name in ("tcp", "ssh", "rdp", "smb"):
    access.add_command(tcp, _name)
access.add_command(udp)

# The operators' side: an account's applications, policies, providers and tokens (imported
# last: it uses the account loading of access_private, which imports this module).
from adit.cli.access_admin import ADMIN_COMMANDS  # noqa: E402

for _command in ADMIN_COMMANDS:
    access.add_command(_command)

# An application's token for the command line: login, token, curl.
from adit.cli.access_login import LOGIN_COMMANDS  # noqa: E402

for _command in LOGIN_COMMANDS:
    access.add_command(_command)

# The ssh_config stanza for ``adit access ssh`` (and ssh-gen, which adit's edge cannot serve).
from adit.cli.access_ssh_config import SSH_COMMANDS  # noqa: E402

for _command in SSH_COMMANDS:
    access.add_command(_command)
