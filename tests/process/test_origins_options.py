"""Origins and originRequest options end to end: HTTPS with a self-signed certificate (TLS
errors, noTLSVerify, caPool, SNI), a unix-socket origin, an HTTP/2 origin, keep-alive pooling,
connectTimeout against a black hole, what the origin sees, and the edge's 502 reasons."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import http.server
import json
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from harness import (
    Account,
    Edge,
    Origin,
    Proc,
    Processes,
    create_tunnel,
    request,
    start_connector,
    write_config,
)

pytestmark = pytest.mark.process

HOST = "origins.example.test"
CERT_NAME = "secure.internal"


@dataclass
class Pki:
    """A CA and a server certificate for ``secure.internal`` (not for 127.0.0.1)."""

    ca: Path
    chain: Path


def _make_pki(tmp: Path) -> Pki:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "adit test origin CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CERT_NAME)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(CERT_NAME)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = tmp / "origin-ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain = tmp / "origin-chain.pem"
    chain.write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Pki(ca_path, chain)


@dataclass
class TlsOrigin:
    """An HTTPS origin that records the SNI of each handshake and the protocol it spoke."""

    port: int
    sni: list[str | None] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)


def _server_context(pki: Pki, alpn: list[str], sni: list[str | None]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.chain)
    context.set_alpn_protocols(alpn)

    def record(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        sni.append(name)

    context.sni_callback = record
    return context


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, "headers": list(self.headers.items())}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Threading(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return _make_pki(tmp_path)


@pytest.fixture
def tls_origin(pki: Pki) -> Iterator[TlsOrigin]:
    origin = TlsOrigin(0)
    context = _server_context(pki, ["http/1.1"], origin.sni)

    class Server(_Threading):
        def get_request(self) -> tuple[socket.socket, object]:
            sock, address = self.socket.accept()
            origin.accepted.append(1)
            try:
                return context.wrap_socket(sock, server_side=True), address
            except (ssl.SSLError, OSError):
                sock.close()
                raise

    server = Server(("127.0.0.1", 0), _Handler)
    origin.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield origin
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def unix_origin(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "origin.sock"

    class Handler(_Handler):
        def address_string(self) -> str:
            return "unix"

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    server = Server(str(path), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def unix_tls_origin(tmp_path: Path, pki: Pki) -> Iterator[Path]:
    path = tmp_path / "origin-tls.sock"
    context = _server_context(pki, ["http/1.1"], [])

    class Handler(_Handler):
        def address_string(self) -> str:
            return "unix"

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

        def get_request(self) -> tuple[socket.socket, object]:
            sock, address = self.socket.accept()
            try:
                return context.wrap_socket(sock, server_side=True), address
            except (ssl.SSLError, OSError):
                sock.close()
                raise

    server = Server(str(path), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class H2Origin:
    port: int
    connections: list[str] = field(default_factory=list)  # negotiated ALPN per connection


@pytest.fixture
def h2_origin(pki: Pki) -> Iterator[H2Origin]:
    """A tiny HTTP/2-only origin (h2 over TLS): answers JSON with the request's headers."""
    origin = H2Origin(0)
    sni: list[str | None] = []
    context = _server_context(pki, ["h2"], sni)
    started = threading.Event()
    state: dict[str, object] = {}

    writers: set[asyncio.StreamWriter] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        ssl_object = writer.get_extra_info("ssl_object")
        origin.connections.append(ssl_object.selected_alpn_protocol() if ssl_object else "")
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        requests: dict[int, list[tuple[str, str]]] = {}
        bodies: dict[int, bytearray] = {}
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        requests[event.stream_id] = [
                            (
                                n.decode() if isinstance(n, bytes) else n,
                                v.decode() if isinstance(v, bytes) else v,
                            )
                            for n, v in event.headers or []
                        ]
                        bodies[event.stream_id] = bytearray()
                    elif isinstance(event, h2.events.DataReceived):
                        bodies[event.stream_id] += event.data
                        conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, h2.events.StreamEnded):
                        sid = event.stream_id
                        body = json.dumps(
                            {
                                "protocol": "h2",
                                "headers": requests[sid],
                                "body": len(bodies[sid]),
                            }
                        ).encode()
                        conn.send_headers(
                            sid,
                            [(":status", "200"), ("content-type", "application/json")],
                        )
                        conn.send_data(sid, body, end_stream=True)
                writer.write(conn.data_to_send())
                await writer.drain()
        writer.close()

    async def main() -> None:
        stop = asyncio.Event()
        state["stop"], state["loop"] = stop, asyncio.get_running_loop()
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
        origin.port = server.sockets[0].getsockname()[1]
        started.set()
        async with server:
            await stop.wait()
            # Pooled connections from the connector are still open: close them here, so
            # nothing is left for the garbage collector to warn about.
            for writer in writers:
                writer.close()
            for writer in writers:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.wait_closed(), 2)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield origin
    finally:
        loop = state["loop"]
        loop.call_soon_threadsafe(state["stop"].set)  # type: ignore[attr-defined]
        thread.join(10)


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A listener whose accept backlog is full: SYNs are dropped, connects hang."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@pytest.fixture
def connector(
    edge: Edge,
    account: Account,
    processes: Processes,
    tmp_path: Path,
    pki: Pki,
    tls_origin: TlsOrigin,
    unix_origin: Path,
    unix_tls_origin: Path,
    h2_origin: H2Origin,
    origin: Origin,
    black_hole: int,
) -> Proc:
    tunnel = create_tunnel(account, "origins", HOST)
    https = f"https://127.0.0.1:{tls_origin.port}"
    rules: list[dict[str, object]] = [
        {"path": "^/tls/plain", "service": https},
        {"path": "^/tls/noverify", "service": https, "originRequest": {"noTLSVerify": True}},
        {
            "path": "^/tls/capool",
            "service": https,
            "originRequest": {"caPool": str(pki.ca), "originServerName": CERT_NAME},
        },
        {
            "path": "^/tls/wrongname",
            "service": https,
            "originRequest": {"caPool": str(pki.ca)},
        },
        {
            "path": "^/tls/matchsni",
            "service": https,
            "originRequest": {"noTLSVerify": True, "matchSNItoHost": True},
        },
        {
            "path": "^/unixtls",
            "service": f"unix+tls:{unix_tls_origin}",
            "originRequest": {"caPool": str(pki.ca), "originServerName": CERT_NAME},
        },
        {"path": "^/unxtls-unverified", "service": f"unix+tls:{unix_tls_origin}"},
        {"path": "^/unix", "service": f"unix:{unix_origin}"},
        {
            "path": "^/h2",
            "service": f"https://127.0.0.1:{h2_origin.port}",
            "originRequest": {"http2Origin": True, "noTLSVerify": True},
        },
        {
            "path": "^/h1-with-h2-offered",
            "service": https,
            "originRequest": {"http2Origin": True, "noTLSVerify": True},
        },
        {"path": "^/rewrite", "service": origin.url, "originRequest": {"httpHostHeader": "in.lan"}},
        {
            "path": "^/blackhole",
            "service": f"http://127.0.0.1:{black_hole}",
            "originRequest": {"connectTimeout": "1s"},
        },
        {"path": "^/refused", "service": "http://127.0.0.1:1"},
        {"service": origin.url},
    ]
    config = write_config(tmp_path / "config.yml", HOST, rules)
    return start_connector(processes, tunnel, config, extra=["--ha-connections", "1"])


def _json(edge: Edge, path: str, **kwargs: object) -> dict[str, object]:
    reply = request(edge, HOST, path=path, **kwargs)  # type: ignore[arg-type]
    assert reply.status == 200, reply.body
    data = json.loads(reply.body)
    assert isinstance(data, dict)
    return data


def _headers(data: dict[str, object]) -> dict[str, str]:
    pairs = data["headers"]
    assert isinstance(pairs, list)
    return {str(n).lower(): str(v) for n, v in pairs}


def test_self_signed_origin_refused_with_a_clear_page_and_log(
    edge: Edge, connector: Proc, tls_origin: TlsOrigin
) -> None:
    reply = request(edge, HOST, path="/tls/plain")
    assert reply.status == 502
    page = reply.body.decode()
    assert "the origin could not be reached: TLS verification failed" in page
    assert "noTLSVerify" in page and "caPool" in page and "originServerName" in page
    # The connector's own words are for the operator: in the edge's log, under the Ray ID.
    assert "certificate verify failed" not in page
    ray = reply.header("Cf-Ray")
    assert ray is not None
    edge.proc.wait_for_log(ray + r".*certificate verify failed")
    log = connector.wait_for_log(r"ingressRule=0 originService=https://127\.0\.0\.1")
    line = next(x for x in log.splitlines() if "ingressRule=0" in x)
    assert "noTLSVerify" in line and "caPool" in line and "originServerName" in line

    # The CA alone is not enough: the certificate does not name 127.0.0.1.
    reply = request(edge, HOST, path="/tls/wrongname")
    assert reply.status == 502
    assert "TLS verification" in reply.body.decode()


def test_no_tls_verify_ca_pool_and_sni(edge: Edge, connector: Proc, tls_origin: TlsOrigin) -> None:
    assert _json(edge, "/tls/noverify")["path"] == "/tls/noverify"
    # No SNI for an IP address (Go does the same).
    assert tls_origin.sni[-1:] == [None]

    assert _json(edge, "/tls/capool")["path"] == "/tls/capool"
    assert tls_origin.sni[-1] == CERT_NAME

    assert _json(edge, "/tls/matchsni")["path"] == "/tls/matchsni"
    assert tls_origin.sni[-1] == HOST


def test_unix_socket_origins(edge: Edge, connector: Proc) -> None:
    data = _json(edge, "/unix/x?y=1")
    assert data["path"] == "/unix/x?y=1"
    assert _headers(data)["host"] == HOST
    assert _json(edge, "/unixtls/z")["path"] == "/unixtls/z"
    # unix+tls verifies the certificate against the request's host by default.
    reply = request(edge, HOST, path="/unxtls-unverified")
    assert reply.status == 502
    assert "TLS verification" in reply.body.decode()


def test_http2_origin(edge: Edge, connector: Proc, h2_origin: H2Origin) -> None:
    data = _json(edge, "/h2/a")
    assert data["protocol"] == "h2"
    headers = _headers(data)
    assert headers[":path"] == "/h2/a"
    assert headers[":authority"] == HOST
    assert "connection" not in headers
    assert headers["cf-connecting-ip"] == "127.0.0.1"
    posted = request(edge, HOST, "POST", "/h2/upload", body=b"z" * 300_000)
    assert posted.status == 200
    assert json.loads(posted.body)["body"] == 300_000
    assert _json(edge, "/h2/again")["protocol"] == "h2"
    # Pooled: one HTTP/2 connection served all three requests.
    assert h2_origin.connections == ["h2"]

    # An origin that only speaks HTTP/1.1 still works with http2Origin set.
    assert _json(edge, "/h1-with-h2-offered")["path"] == "/h1-with-h2-offered"


def test_keep_alive_pool_reuses_one_connection(edge: Edge, connector: Proc, origin: Origin) -> None:
    before = len(origin.accepted)
    for index in range(6):
        reply = request(edge, HOST, path=f"/pooled/{index}")
        assert reply.status == 200
    assert len(origin.accepted) - before == 1


def test_what_the_origin_sees(edge: Edge, connector: Proc, origin: Origin) -> None:
    reply = request(
        edge,
        HOST,
        path="/rewrite/me",
        headers=[
            ("X-Forwarded-For", "203.0.113.9"),
            ("Connection", "X-Secret, keep-alive"),
            ("X-Secret", "hop-by-hop"),
            ("Keep-Alive", "timeout=5"),
            ("Cf-Ray", "spoofed"),
        ],
    )
    assert reply.status == 200
    seen = {n.lower(): v for n, v in origin.seen_headers[-1]}
    assert seen["host"] == "in.lan"
    assert seen["x-forwarded-host"] == HOST
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["cf-connecting-ip"] == "127.0.0.1"
    assert seen["cf-ray"] != "spoofed" and seen["cf-ray"].endswith("-test")
    assert seen["cf-warp-tag-id"]
    assert "x-secret" not in seen and "keep-alive" not in seen
    assert seen["connection"] == "keep-alive"
    first_ray = seen["cf-ray"]
    request(edge, HOST, path="/rewrite/again")
    assert {n.lower(): v for n, v in origin.seen_headers[-1]}["cf-ray"] != first_ray


def test_connect_timeout_against_a_black_hole_and_refused(edge: Edge, connector: Proc) -> None:
    started = time.monotonic()
    reply = request(edge, HOST, path="/blackhole")
    elapsed = time.monotonic() - started
    assert reply.status == 502
    assert "timed out" in reply.body.decode()
    assert "connectTimeout" in reply.body.decode()
    assert 0.9 <= elapsed < 8, elapsed
    connector.wait_for_log(r"i/o timeout after 1s")

    reply = request(edge, HOST, path="/refused")
    assert reply.status == 502
    assert "refused the connection" in reply.body.decode()
    assert "connection refused" not in reply.body.decode()  # the detail is in the edge's log
