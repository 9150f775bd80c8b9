"""``adit tail [TUNNEL]``: a running connector's log, live, through the edge.

cloudflared's ``tail`` (CLOUDFLARED_FEATURES.md §1.17): a management token (``--token``, or one
fetched with cert.pem from ``POST .../cfd_tunnel/ID/management/logs``), then
``wss://<management hostname>/logs?access_token=..[&connector_id=..]``, a ``start_streaming``
message with the filters, and each log entry printed as ``<time> <level> <event> <message>
<fields-json>`` (or the JSON object with ``--output json``). The edge picks a connector of the
token's tunnel; any connector (cloudflared or adit) answers.

adit's additions, as ``adit access`` has them: ``--edge HOST:PORT`` dials an edge's public
listener directly (``http://HOST:PORT`` for a plain one) while still asking for the management
hostname, and ``--cacert`` names the CA to trust; by default the edge CA pinned in cert.pem.
Where cloudflared logs an error and exits 0, adit exits 1, so that scripts can tell.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import click

from adit.cli.access import AccessError, EdgeTarget, HandshakeRefused, open_websocket
from adit.cli.state import CommandFailure
from adit.protocol.hostnames import AddressError, split_address
from adit.protocol.management_logs import (
    EVENTS,
    LEVELS,
    InvalidManagementMessage,
    StreamingFilters,
    encode_start_streaming,
    format_json,
    format_line,
    parse_logs,
)
from adit.protocol.websocket import CloseCode, Opcode, Role, WebSocketConnection, WebSocketError
from adit.version import __version__

__all__ = ["tail"]

log = logging.getLogger("adit.tail")

_READ = 64 * 1024
#: A message bigger than this is not a log batch (the connector sends a few KiB at most).
_MAX_MESSAGE = 4 * 1024 * 1024
#: After Ctrl-C: how long the connector gets to answer our close.
_CLOSE_WAIT = 1.0


def parse_filters(events: Sequence[str], level: str, sample: float) -> StreamingFilters | None:
    """cloudflared's ``parseFilters``: None when nothing narrows the stream."""
    if level and level not in LEVELS:
        raise CommandFailure(
            "invalid --level filter provided, please use one of the following Log Levels: "
            "debug, info, warn, error"
        )
    for event in events:
        if event not in EVENTS:
            raise CommandFailure(
                "invalid --event filter provided, please use one of the following EventTypes: "
                "cloudflared, http, tcp, udp"
            )
    if not 0.0 < sample <= 1.0:
        raise CommandFailure(
            "invalid --sample value provided, please make sure it is in the range (0.0 .. 1.0)"
        )
    if not level and not events and sample == 1.0:
        return None
    return StreamingFilters(frozenset(events), level or None, sample)


def _target(
    hostname: str, edge: str, ca_pem: str, token: str, connector_id: str | None
) -> EdgeTarget:
    query = {"access_token": token}
    if connector_id:
        try:
            query["connector_id"] = str(uuid.UUID(connector_id))
        except ValueError:
            raise CommandFailure(
                f"unable to parse 'connector-id' flag into a valid UUID: {connector_id!r}"
            ) from None
    path = "/logs?" + urlencode(query)
    if not edge:
        return EdgeTarget(hostname, path, hostname, 443, True, hostname, ca_pem=ca_pem)
    parts = urlsplit(edge if "://" in edge else f"https://{edge}")
    if parts.scheme not in ("http", "https", "ws", "wss"):
        raise CommandFailure(f"--edge {edge!r}: use HOST:PORT, or http://HOST:PORT (plain)")
    tls = parts.scheme in ("https", "wss")
    netloc = parts.netloc if parts.port else f"{parts.netloc}:{443 if tls else 80}"
    try:
        address, port = split_address(netloc)
    except AddressError as exc:
        raise CommandFailure(f"--edge {edge!r}: {exc}") from None
    return EdgeTarget(hostname, path, address, port, tls, hostname, ca_pem=ca_pem)


def _management_token(
    ctx: click.Context, tunnel: str | None, origincert: str | None, api_url: str | None
) -> tuple[str, str]:
    """A ``logs`` token from the API with cert.pem, and the edge CA cert.pem pins."""
    from adit.cli.apiclient import ApiError
    from adit.cli.manage import AccountContext

    if not tunnel:
        raise CommandFailure("unable to acquire management token: no tunnel ID provided")
    account = AccountContext(ctx, origincert, api_url)
    try:
        client = account.client()
        tunnel_id = account.find_id(tunnel)
        token = client.get_management_token(tunnel_id, "logs")
    except ApiError as exc:
        raise CommandFailure(
            f"unable to acquire management token for requested tunnel id: {exc}"
        ) from None
    return token, client.ca_pem


def _read_cacert(path: Path) -> str:
    """``--cacert``: a PEM file OpenSSL takes as a CA, or a clear error naming it."""
    import ssl

    try:
        pem = path.read_text(encoding="ascii", errors="replace")
        if "-----BEGIN CERTIFICATE-----" not in pem:
            raise ssl.SSLError("no BEGIN CERTIFICATE line")
        ssl.create_default_context(cadata=pem)
    except ssl.SSLError as exc:  # an OSError too: first
        detail = getattr(exc, "reason", None) or (exc.args[-1] if exc.args else "")
        raise CommandFailure(
            f"--cacert {path} holds no PEM CA certificate ({detail}): give the edge's ca.pem"
        ) from None
    except OSError as exc:
        raise CommandFailure(f"--cacert {path}: cannot read it: {exc.strerror or exc}") from None
    return pem


def _pinned_ca(origincert: str | None) -> str:
    """The edge CA pinned in cert.pem, if there is one (with ``--token``, cert.pem is not
    otherwise needed: its absence is no error)."""
    from adit.credentials import CredentialsError, find_default_origin_cert, read_origin_cert

    path = Path(origincert).expanduser() if origincert else find_default_origin_cert()
    if path is None or not path.is_file():
        return ""
    try:
        return read_origin_cert(path).edge_ca_pem
    except (CredentialsError, OSError):
        return ""


def _refusal_lines(refused: HandshakeRefused) -> list[str]:
    """cloudflared's ``handleValidationError``."""
    import json

    lines = []
    if refused.status == 530:
        lines.append(
            "no connector available or reachable via management request (a recent version of "
            "cloudflared or adit is required to use streaming logs)"
        )
    try:
        body = json.loads(refused.body)
        errors = body.get("errors") if isinstance(body, dict) else None
    except ValueError:
        errors = None
    if not errors or not isinstance(errors, list):
        lines.append(
            "unable to start management log streaming session: http response code returned "
            f"{refused.status}"
        )
        return lines
    for error in errors:
        if isinstance(error, dict):
            lines.append(
                f"management request failed validation: ({error.get('code', 0)}) "
                f"{error.get('message', '')}"
            )
    return lines


async def stream_logs(
    target: EdgeTarget,
    filters: StreamingFilters | None,
    output: str,
    headers: list[tuple[str, str]],
) -> None:
    """Open the stream and print every entry until the connector closes it or we are
    interrupted (SIGINT, SIGTERM)."""
    reader, writer, rest = await open_websocket(target, headers)
    ws = WebSocketConnection(Role.CLIENT)
    lock = asyncio.Lock()

    async def send(data: bytes) -> None:
        # One writer at a time: a pong (from the reader) must not land inside our close.
        if data:
            async with lock:
                writer.write(data)
                await writer.drain()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await send(ws.send_data(encode_start_streaming(filters), opcode=Opcode.TEXT))
        log.debug("connected")
        reading = asyncio.ensure_future(_read(reader, ws, send, rest, output))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stopping.done() and not reading.done():
            log.debug("closing management connection")
            with contextlib.suppress(OSError):
                await send(ws.send_close(CloseCode.NORMAL))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(reading), _CLOSE_WAIT)
        stopping.cancel()
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        writer.close()


async def _read(
    reader: asyncio.StreamReader,
    ws: WebSocketConnection,
    send: Callable[[bytes], Awaitable[None]],
    rest: bytes,
    output: str,
) -> None:
    data = rest
    message = bytearray()
    while True:
        if data:
            try:
                frames = ws.receive(data)
            except WebSocketError as exc:
                raise CommandFailure(f"unable to read event from server: {exc}") from None
            finally:
                await send(ws.data_to_send())
            for frame in frames:
                if frame.opcode == Opcode.CLOSE:
                    code = ws.close_code
                    if code not in (CloseCode.NORMAL, CloseCode.NO_STATUS):
                        reason = frame.payload[2:].decode("utf-8", "replace")
                        log.error("received remote closure: (%s) %s", code, reason)
                    return
                if frame.opcode not in (Opcode.TEXT, Opcode.CONTINUATION, Opcode.BINARY):
                    continue
                message += frame.payload
                if len(message) > _MAX_MESSAGE:
                    raise CommandFailure("unable to read event from server: message too large")
                if frame.fin:
                    _print_message(bytes(message), output)
                    message.clear()
        data = await reader.read(_READ)
        if not data:
            log.error("the management connection closed without a close frame")
            return


def _print_message(payload: bytes, output: str) -> None:
    try:
        entries = parse_logs(payload)
    except InvalidManagementMessage as exc:
        log.error("unable to read event from server: %s", exc)
        return
    if entries is None:
        log.debug("unexpected log event type")
        return
    lines = [format_json(e) if output == "json" else format_line(e) for e in entries]
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()


@click.command("tail")
@click.option(
    "--connector-id",
    envvar="TUNNEL_MANAGEMENT_CONNECTOR",
    default=None,
    help="Access a specific connector instance by connector id (for when a tunnel has "
    "several connectors).",
)
@click.option(
    "--event",
    "events",
    multiple=True,
    envvar="TUNNEL_MANAGEMENT_FILTER_EVENTS",
    help="Filter by specific Events (cloudflared, http, tcp, udp); otherwise all events. "
    "Repeatable.",
)
@click.option(
    "--level",
    envvar="TUNNEL_MANAGEMENT_FILTER_LEVEL",
    default="debug",
    show_default=True,
    help="Filter by specific log levels (debug, info, warn, error).",
)
@click.option(
    "--sample",
    envvar="TUNNEL_MANAGEMENT_FILTER_SAMPLE",
    type=float,
    default=1.0,
    show_default=True,
    help="Sample log events by percentage (0.0 .. 1.0). No sampling by default.",
)
@click.option(
    "--token",
    envvar="TUNNEL_MANAGEMENT_TOKEN",
    default=None,
    help="Access token for a specific tunnel (else fetched with cert.pem).",
)
@click.option(
    "--output",
    type=click.Choice(["default", "json"]),
    default="default",
    show_default=True,
    help="Output format for the logs.",
)
@click.option(
    "--management-hostname",
    envvar="TUNNEL_MANAGEMENT_HOSTNAME",
    default="management.argotunnel.com",
    show_default=True,
    help="Management hostname to signify incoming management requests.",
)
@click.option(
    "--edge",
    envvar="ADIT_TAIL_EDGE",
    default="",
    help="Dial this edge listener (HOST:PORT over TLS, or http://HOST:PORT) instead of the "
    "management hostname.",
)
@click.option(
    "--cacert",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="CA certificate to trust for the edge (default: the edge CA in cert.pem, else the "
    "system's).",
)
@click.option("--trace", default="", hidden=True, help="Set a cf-trace-id for the request.")
@click.option(
    "--loglevel",
    envvar="TUNNEL_LOGLEVEL",
    default="info",
    show_default=True,
    help="Application logging level {debug, info, warn, error, fatal}.",
)
@click.option(
    "--origincert",
    envvar="TUNNEL_ORIGIN_CERT",
    default=None,
    help="Path to the certificate generated for your origin when you ran adit tunnel login.",
)
@click.option("--api-url", envvar="TUNNEL_API_URL", default=None, hidden=True)
@click.argument("tunnel", required=False)
@click.pass_context
def tail(
    ctx: click.Context,
    connector_id: str | None,
    events: tuple[str, ...],
    level: str,
    sample: float,
    token: str | None,
    output: str,
    management_hostname: str,
    edge: str,
    cacert: Path | None,
    trace: str,
    loglevel: str,
    origincert: str | None,
    api_url: str | None,
    tunnel: str | None,
) -> None:
    """Stream logs from a remote connector."""
    from adit.logs import LogSettings, configure_logging

    configure_logging(LogSettings(level=loglevel))
    filters = parse_filters(events, level, sample)
    ca_pem = ""
    if not token:
        token, ca_pem = _management_token(ctx, tunnel, origincert, api_url)
    if not ca_pem and cacert is None:
        ca_pem = _pinned_ca(origincert)
    if cacert is not None:
        ca_pem = _read_cacert(cacert)
    target = _target(management_hostname, edge, ca_pem, token, connector_id)
    headers = [("User-Agent", f"adit/{__version__}")]
    if trace:
        headers.append(("cf-trace-id", trace))
    try:
        asyncio.run(stream_logs(target, filters, output, headers))
    except HandshakeRefused as refused:
        for line in _refusal_lines(refused):
            log.error("%s", line)
        sys.exit(1)
    except AccessError as exc:
        raise CommandFailure(
            f"unable to start management log streaming session: {exc.message}"
        ) from None
    except click.ClickException:
        raise
    except (OSError, WebSocketError) as exc:
        raise CommandFailure(f"unable to start management log streaming session: {exc}") from None
