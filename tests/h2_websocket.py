"""A WebSocket client over HTTP/2 (RFC 8441) for tests: ``h2`` for the connection (TLS, ALPN
h2) and the ``websockets`` library's sans-IO protocol for the frames, both real, on a blocking
socket. Every wait is bounded by the socket's timeout and a count of reads."""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections import deque
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side

_READ = 65536
_MAX_READS = 100_000


class H2Closed(Exception):
    """The connection ended (or the stream was reset) before what was awaited came."""


class H2WebSocket:
    """One HTTP/2 connection to ``address:port`` as a visitor of ``host``, and at most one
    WebSocket stream on it."""

    def __init__(
        self,
        address: str,
        port: int,
        host: str,
        ca: Path,
        timeout: float = 30,
        *,
        settings_first: bool = True,
    ) -> None:
        """``settings_first``: wait for (and acknowledge) the server's SETTINGS before any
        request, as a client must (False: send requests in the first flight)."""
        context = ssl.create_default_context(cafile=str(ca))
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection((address, port), timeout=timeout)
        self.sock = context.wrap_socket(raw, server_hostname=host)
        assert self.sock.selected_alpn_protocol() == "h2"
        self.host = host
        # Not validated: tests send what a client must not.
        config = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False)
        self.h2 = h2.connection.H2Connection(config)
        self.h2.initiate_connection()
        self._write()
        #: The server's SETTINGS_ENABLE_CONNECT_PROTOCOL (None until its SETTINGS came).
        self.connect_protocol: int | None = None
        self.stream_id = 0
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        #: Streams the server ended.
        self.ended_streams: set[int] = set()
        #: The WebSocket's stream (0: none yet).
        self.ws_stream = 0
        #: Streams the server reset, with the code.
        self.resets: dict[int, int] = {}
        self.terminated: h2.events.ConnectionTerminated | None = None
        self.body = b""
        self.ws = Protocol(Side.CLIENT, max_size=None)
        self._frames: deque[Frame] = deque()
        self._end_sent = False
        if settings_first:
            self._pump_until(lambda: self.connect_protocol is not None)

    # -- HTTP/2 ----------------------------------------------------------------------------------

    def request(self, headers: list[tuple[bytes, bytes]], *, end_stream: bool = False) -> None:
        """A request head on a new stream; then wait for its response head, its reset or the
        connection's end."""
        self.stream_id = self.h2.get_next_available_stream_id()
        self.status, self.body = 0, b""
        self.h2.send_headers(self.stream_id, headers, end_stream=end_stream)
        self._write()
        with contextlib.suppress(H2Closed, OSError):
            self._pump_until(lambda: self.status != 0 or self.reset_code is not None)

    def connect(self, path: str, protocol: bytes = b"websocket") -> int:
        """An extended CONNECT (RFC 8441 §4) for ``path``; the response's status."""
        self.request(
            [
                (b":method", b"CONNECT"),
                (b":protocol", protocol),
                (b":scheme", b"https"),
                (b":path", path.encode()),
                (b":authority", self.host.encode()),
                (b"sec-websocket-version", b"13"),
            ]
        )
        if self.status == 200:
            self.ws_stream = self.stream_id
        return self.status

    @property
    def reset_code(self) -> int | None:
        """The code the server reset the current stream with (None: not reset)."""
        return self.resets.get(self.stream_id)

    @property
    def ended(self) -> bool:
        """Whether the server ended the current stream."""
        return self.stream_id in self.ended_streams

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)

    def read_body(self) -> bytes:
        """The rest of the response body, until the stream ends."""
        self._pump_until(lambda: self.ended or self.reset_code is not None)
        return self.body

    def _write(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def _pump_until(self, done: object) -> None:
        assert callable(done)
        for _ in range(_MAX_READS):
            if done():
                return
            if self.terminated is not None:
                raise H2Closed(f"GOAWAY {self.terminated.error_code!r}")
            data = self.sock.recv(_READ)
            if not data:
                raise H2Closed("the server closed the connection")
            self._received(data)
        raise AssertionError("too many reads")

    def _received(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.RemoteSettingsChanged):
                code = h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL
                self.connect_protocol = self.h2.remote_settings.get(code, 0)
            elif isinstance(event, h2.events.ResponseReceived):
                assert event.headers is not None
                self.headers = [(bytes(n), bytes(v)) for n, v in event.headers]
                self.status = int(self.header(b":status") or b"0")
            elif isinstance(event, h2.events.DataReceived):
                assert event.data is not None and event.stream_id is not None
                self.h2.acknowledge_received_data(
                    event.flow_controlled_length or 0, event.stream_id
                )
                if event.stream_id == self.ws_stream:
                    self.ws.receive_data(event.data)
                else:
                    self.body += event.data
            elif isinstance(event, h2.events.StreamEnded):
                assert event.stream_id is not None
                self.ended_streams.add(event.stream_id)
                if event.stream_id == self.ws_stream:
                    self.ws.receive_eof()
            elif isinstance(event, h2.events.StreamReset):
                assert event.stream_id is not None
                self.resets[event.stream_id] = int(event.error_code or 0)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.terminated = event
        self._write()

    # -- WebSocket -------------------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        self.ws.send_text(text.encode())
        self._flush_ws()

    def send_binary(self, data: bytes) -> None:
        self.ws.send_binary(data)
        self._flush_ws()

    def close(self) -> Frame:
        """The close handshake: our close frame, the server's echoed one, then the stream's
        end from both sides (HTTP/2's TCP close); the server's close frame."""
        self.ws.send_close(1000, "bye")
        self._flush_ws()
        frame = self.receive()
        if not self._end_sent:
            self._end_sent = True
            self.h2.end_stream(self.stream_id)
            self._write()
        self._pump_until(lambda: self.ended or self.reset_code is not None)
        return frame

    def receive(self) -> Frame:
        """The next message (its frames joined) or close frame."""
        parts: list[bytes] = []
        first: Frame | None = None
        for _ in range(_MAX_READS):
            self._frames.extend(self.ws.events_received())  # type: ignore[arg-type]
            self._flush_ws()  # pongs, the answer to a close
            while self._frames:
                event = self._frames.popleft()
                if event.opcode is Opcode.CLOSE:
                    return event
                if event.opcode in (Opcode.PING, Opcode.PONG):
                    continue
                first = first or event
                parts.append(bytes(event.data))
                if event.fin:
                    return Frame(first.opcode, b"".join(parts))
            if self.ended or self.reset_code is not None:
                raise H2Closed(f"the stream ended (reset {self.reset_code})")
            self._received(self._recv())
        raise AssertionError("no frame")

    def _flush_ws(self) -> None:
        """The protocol's bytes as DATA frames, as the server's windows take them."""
        for data in self.ws.data_to_send():
            view = memoryview(data)
            for _ in range(_MAX_READS):
                if not view:
                    break
                window = min(
                    self.h2.local_flow_control_window(self.stream_id),
                    self.h2.max_outbound_frame_size,
                )
                if window <= 0:
                    self._received(self._recv())
                    continue
                self.h2.send_data(self.stream_id, bytes(view[:window]))
                view = view[window:]
                self._write()

    def _recv(self) -> bytes:
        data = self.sock.recv(_READ)
        if not data:
            raise H2Closed("the server closed the connection")
        return data

    def shutdown(self) -> None:
        try:
            self.h2.close_connection()
            self._write()
        except (OSError, h2.exceptions.ProtocolError):
            pass
        self.sock.close()
