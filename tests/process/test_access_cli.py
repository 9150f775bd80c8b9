"""`adit access` on the wire, against a stand-in edge: the upgrade request (flags → headers, as
cloudflared sends them, CLOUDFLARED_FEATURES.md §7.1), masking, and stdin/stdout mode."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from adit.protocol.websocket import (
    FrameDecoder,
    Opcode,
    Role,
    WebSocketConnection,
    accept_key,
)
from harness import adit_command

pytestmark = pytest.mark.process


@dataclass
class StandIn:
    """A one-connection edge: records the upgrade head, echoes the first message, closes."""

    port: int
    heads: list[str] = field(default_factory=list)
    masked: list[bool] = field(default_factory=list)
    status: int = 101


def _serve(listener: socket.socket, state: StandIn) -> None:
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(20)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        text = head.decode("latin-1")
        state.heads.append(text)
        if state.status != 101:
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        key = next(
            line.split(":", 1)[1].strip()
            for line in text.split("\r\n")
            if line.lower().startswith("sec-websocket-key:")
        )
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n".encode()
        )
        state.masked.append(len(rest) < 2 or bool(rest[1] & 0x80))
        server = WebSocketConnection(Role.SERVER)
        while True:
            frames = server.receive(rest)
            # Echo each message as it comes, then owed answers (the close reply last).
            echoed = b"".join(f.payload for f in frames if f.opcode == Opcode.BINARY)
            if echoed:
                conn.sendall(server_frames(echoed))
            conn.sendall(server.data_to_send())
            if server.close_received:
                return
            rest = conn.recv(65536)
            if not rest:
                return


def server_frames(payload: bytes) -> bytes:
    out = WebSocketConnection(Role.SERVER)
    return out.send_data(payload)


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    state = StandIn(int(listener.getsockname()[1]))
    thread = threading.Thread(target=_serve, args=(listener, state), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        listener.close()
        thread.join(10)


def test_stdio_mode_sends_cloudflareds_headers_and_masks(stand_in: StandIn) -> None:
    result = subprocess.run(
        [
            *adit_command(),
            "forward",
            "ssh",
            "--hostname",
            "ssh.example.com",
            "--edge-url",
            f"http://127.0.0.1:{stand_in.port}",
            "--id",
            "myid.access",
            "--service-token-secret",
            "s3cr3t",
            "--destination",
            "10.0.0.5:22",
            "-H",
            "X-Extra: 1",
            "--header",
            "X-Other: two",
        ],
        input=b"ping over stdio",
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (head,) = stand_in.heads
    lines = head.split("\r\n")
    assert lines[0] == "GET / HTTP/1.1"
    fields = [tuple(x.split(": ", 1)) for x in lines[1:]]
    names = [name for name, _ in fields]
    assert fields[0] == ("Host", "ssh.example.com")
    assert ("Cf-Access-Client-Id", "myid.access") in fields
    assert ("Cf-Access-Client-Secret", "s3cr3t") in fields
    assert ("Cf-Access-Jump-Destination", "10.0.0.5:22") in fields
    assert ("X-Extra", "1") in fields and ("X-Other", "two") in fields
    assert ("Upgrade", "websocket") in fields and ("Connection", "Upgrade") in fields
    assert ("Sec-WebSocket-Version", "13") in fields
    assert "Sec-WebSocket-Key" in names
    assert stand_in.masked == [True]
    assert result.stdout == b"ping over stdio"


def test_refused_upgrade_fails_the_connection(stand_in: StandIn) -> None:
    stand_in.status = 403
    result = subprocess.run(
        [
            *adit_command(),
            "access",
            "tcp",
            "--tunnel-host",
            "https://tcp.example.com:8443",
            "--edge-url",
            f"http://127.0.0.1:{stand_in.port}",
        ],
        input=b"",
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == (
        b"Error: the edge refused the WebSocket upgrade for tcp.example.com with status 403\n"
    )
    assert stand_in.heads[0].split("\r\n")[1] == "Host: tcp.example.com:8443"


def test_without_hostname_prints_help_and_exits_zero() -> None:
    result = subprocess.run(
        [*adit_command(), "access", "rdp"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0
    assert "--hostname" in result.stdout and "--service-token-id" in result.stdout


def test_frame_decoder_reads_what_the_stand_in_sends() -> None:
    # Guards the stand-in itself: its frames are unmasked server frames.
    (frame,) = FrameDecoder(expect_masked=False).feed(server_frames(b"x"))
    assert frame.payload == b"x"
