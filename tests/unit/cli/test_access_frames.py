"""The access client's writer and dial options without an edge: messages no larger than
cloudflared keeps (over a real socket pair), ``--edge`` and ``--cacert`` parsing, and how the
edge's refusal bodies read."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import click
import pytest

from adit.cli.access import parse_edge, read_cacert, resolve_target
from adit.cli.access_errors import edge_reason, refusal_error
from adit.cli.access_frames import MAX_MESSAGE, FrameSender, MessageTooLarge
from adit.protocol.websocket import Opcode, Role, WebSocketConnection


def _written(payloads: list[bytes], *, whole: bool) -> list[bytes]:
    """The messages a server reads after the sender wrote ``payloads``."""

    async def run() -> bytes:
        left, right = socket.socketpair()
        with left, right:
            _, writer = await asyncio.open_connection(sock=left)
            sender = FrameSender(writer, WebSocketConnection(Role.CLIENT))
            try:
                for payload in payloads:
                    await (sender.send_message if whole else sender.send_stream)(payload)
            finally:
                writer.close()
                await writer.wait_closed()
            right.settimeout(5)
            out = b""
            while chunk := right.recv(1 << 20):
                out += chunk
            return out

    frames = WebSocketConnection(Role.SERVER, max_frame=1 << 20).receive(asyncio.run(run()))
    assert all(f.opcode == Opcode.BINARY and f.fin for f in frames)
    return [f.payload for f in frames]


def test_a_stream_goes_in_messages_cloudflared_keeps_whole() -> None:
    data = bytes(range(256)) * 257  # 65,792 bytes: four full messages and a rest
    messages = _written([data, b"", b"tail"], whole=False)
    assert [len(m) for m in messages] == [MAX_MESSAGE] * 4 + [256, 4]
    assert b"".join(messages) == data + b"tail"
    assert MAX_MESSAGE == 16 * 1024


def test_a_message_that_must_stay_whole_is_refused_past_the_limit() -> None:
    assert _written([b"x" * MAX_MESSAGE, b""], whole=True) == [b"x" * MAX_MESSAGE, b""]
    with pytest.raises(MessageTooLarge, match="16384 bytes cloudflared carries intact"):
        _written([b"x" * (MAX_MESSAGE + 1)], whole=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("edge.example", ("edge.example", 443, True)),
        ("edge.example:8443", ("edge.example", 8443, True)),
        ("https://edge.example:8443", ("edge.example", 8443, True)),
        ("wss://[::1]:8443", ("::1", 8443, True)),
        ("http://127.0.0.1:8080", ("127.0.0.1", 8080, False)),
        ("http://127.0.0.1", ("127.0.0.1", 80, False)),
    ],
)
def test_edge_values(value: str, expected: tuple[str, int, bool]) -> None:
    assert parse_edge(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ftp://edge:1", "the scheme must be https or http"),
        ("https://edge:8443/path", "no path"),
        ("https://user@edge:8443", "no path"),
        ("edge:0", "not a HOST:PORT"),
    ],
)
def test_bad_edge_values_are_told(value: str, message: str) -> None:
    with pytest.raises(click.BadParameter, match=message):
        parse_edge(value)


def test_edge_keeps_the_hostname_for_sni_and_host(tmp_path: Path) -> None:
    target = resolve_target("ssh.example.com", edge="127.0.0.1:8443")
    assert (target.address, target.port, target.tls) == ("127.0.0.1", 8443, True)
    assert (target.server_name, target.host_header) == ("ssh.example.com", "ssh.example.com")
    assert target.ca_pem == "" and target.ca_source == ""
    with pytest.raises(click.UsageError, match="not both"):
        resolve_target("ssh.example.com", connect_to="a:1", edge="b:2")


def test_cacert_must_hold_a_certificate(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(click.BadParameter, match="holds no PEM CA certificate"):
        read_cacert(str(junk))
    with pytest.raises(click.BadParameter, match="cannot read"):
        read_cacert(str(tmp_path / "missing.pem"))


def test_the_edges_reasons_read_in_one_line() -> None:
    page = b"<html><title>x | h</title><body><h1>Error 502: Bad gateway:\n it &amp; you</h1>"
    assert edge_reason(page) == "Error 502: Bad gateway: it & you"
    assert edge_reason(b'{"success":false,"errors":[{"code":1,"message":"no"}]}') == "no"
    assert edge_reason(b'{"error":"unauthenticated","message":"App is protected"}') == (
        "App is protected"
    )
    assert edge_reason(b"plain words\nsecond line") == "plain words"
    assert edge_reason(b"\x1b[31mred\x1b[0m") == "[31mred [0m"
    assert len(edge_reason(b"a" * 1000)) == 160
    assert refusal_error(403, b"", "h.example") == (
        "the edge refused the WebSocket upgrade for h.example with status 403"
    )
    # 401: Access wanted an identity; the message names the login command.
    assert refusal_error(401, b"", "h.example") == (
        "Access refused h.example without a login (401): run `adit access login "
        "https://h.example`, or give a service token with --service-token-id and "
        "--service-token-secret"
    )
    assert refusal_error(502, page, "h.example").startswith(
        "the tunnel for h.example could not reach its origin (502: Bad gateway: it & you)"
    )
