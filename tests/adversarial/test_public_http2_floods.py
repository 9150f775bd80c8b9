"""Hostile HTTP/2 visitors on the HTTPS listener: the edge stays up, serves everyone else, and
holds no more than its limits, whatever one connection sends.

The visitor here writes raw frames (hyperframe + hpack), so it can break the rules h2's own
client would not let it: streams beyond SETTINGS_MAX_CONCURRENT_STREAMS, a header block
that never ends, a window past 2^31-1, resets or PINGs as fast as it can send them, and never
reading.
Assertions are on counts (requests that reached the origin, bytes it could send, frames the
edge answered), never on timing.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterable, Iterator

import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from adversary import RawOrigin, Tenant, canned, hang, raw_origin, start_tenant, streaming
from harness import Edge, Processes, start_edge

pytestmark = pytest.mark.process

HOST = "app.example.test"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_STREAMS = 128  # adit.edge.h2_visitor.MAX_CONCURRENT_STREAMS
RESET_BURST = 200  # adit.edge.h2_visitor.RESET_BURST
CONTROL_BURST = 1000  # adit.edge.h2_visitor.CONTROL_BURST
PROTOCOL_ERROR, FLOW_CONTROL_ERROR, CANCEL, ENHANCE_YOUR_CALM = 0x1, 0x3, 0x8, 0xB


@pytest.fixture
def edge(processes: Processes) -> Edge:
    return start_edge(processes, https=True, env={"ADIT_EDGE_BODY_TIMEOUT": "3s"})


class Visitor:
    """A raw HTTP/2 client over TLS (ALPN h2) that sends whatever frames it is told to."""

    def __init__(self, edge: Edge, *, window: int | None = None) -> None:
        host, port = edge.https.rsplit(":", 1)
        context = ssl.create_default_context(cafile=str(edge.ca))
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection((host, int(port)), timeout=10)
        self.sock = context.wrap_socket(raw, server_hostname=HOST)
        assert self.sock.selected_alpn_protocol() == "h2"
        self.encoder = hpack.Encoder()
        self.buffer = b""
        settings = {} if window is None else {SettingsFrame.INITIAL_WINDOW_SIZE: window}
        self.sock.sendall(PREFACE + SettingsFrame(0, settings=settings).serialize())

    def headers_block(self, path: str = "/", extra: list[tuple[str, str]] | None = None) -> bytes:
        return self.encoder.encode(
            [
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", HOST),
                (":path", path),
                *(extra or []),
            ]
        )

    def get(self, stream_id: int, path: str = "/", *, end: bool = True) -> bytes:
        frame = HeadersFrame(stream_id)
        frame.data = self.headers_block(path)
        frame.flags.add("END_HEADERS")
        if end:
            frame.flags.add("END_STREAM")
        return frame.serialize()

    def send(self, data: bytes) -> bool:
        """False once the edge closed the connection."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def frames(self, timeout: float = 10.0, limit: int = 100_000) -> Iterator[Frame]:
        """Frames from the edge until it closes the connection, or the first RST_STREAM
        (bounded)."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.5)
        count = 0
        while time.monotonic() < deadline and count < limit:
            while len(self.buffer) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
                if len(self.buffer) < 9 + length:
                    break
                frame.parse_body(memoryview(self.buffer[9 : 9 + length]))
                self.buffer = self.buffer[9 + length :]
                count += 1
                yield frame
                if isinstance(frame, RstStreamFrame):
                    return
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            self.buffer += data

    def goaway(self, timeout: float = 10.0) -> GoAwayFrame | None:
        """The edge's GOAWAY, read until it closes."""
        for frame in self.frames(timeout):
            if isinstance(frame, GoAwayFrame):
                return frame
        return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def served(edge: Edge) -> bool:
    """Another visitor gets an answer over HTTP/2 (curl)."""
    port = edge.https.rsplit(":", 1)[1]
    done = subprocess.run(
        [
            "curl",
            "-sS",
            "--http2",
            "--max-time",
            "20",
            "--cacert",
            str(edge.ca),
            "--resolve",
            f"{HOST}:{port}:127.0.0.1",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            f"https://{HOST}:{port}/other",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.stdout == "200 2" and edge.proc.popen.poll() is None


@pytest.fixture
def recorder() -> Iterator[RawOrigin]:
    with raw_origin() as origin:
        yield origin


@pytest.fixture
def tenant(processes: Processes, edge: Edge, recorder: RawOrigin) -> Tenant:
    return start_tenant(processes, edge, "acme", HOST, recorder.url)


def test_streams_beyond_the_advertised_limit_end_the_connection(
    processes: Processes, edge: Edge
) -> None:
    with raw_origin(hang) as origin:
        start_tenant(processes, edge, "acme", HOST, origin.url)
        visitor = Visitor(edge)
        try:
            # Every stream stays open (the origin never answers), one more than allowed.
            frames = b"".join(visitor.get(1 + 2 * n) for n in range(MAX_STREAMS + 1))
            visitor.send(frames)
            goaway = visitor.goaway()
            assert goaway is not None and goaway.error_code == PROTOCOL_ERROR
        finally:
            visitor.close()
        # At most the allowed streams were forwarded.
        time.sleep(0.5)
        assert len(origin.connections) <= MAX_STREAMS
        origin.wait_for(lambda o: o.open_connections == 0, what="the streams' origin requests end")
        origin.responder = lambda received: b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        assert served(edge)


def test_a_continuation_flood_is_cut_off(edge: Edge, tenant: Tenant, recorder: RawOrigin) -> None:
    visitor = Visitor(edge)
    try:
        first = HeadersFrame(1)
        first.data = visitor.headers_block()
        frames = [first.serialize()]
        for _ in range(10_000):  # empty CONTINUATIONs that never end the block
            frames.append(ContinuationFrame(1).serialize())
        sent = visitor.send(b"".join(frames))
        goaway = visitor.goaway()
        assert goaway is not None and goaway.error_code == PROTOCOL_ERROR, sent
    finally:
        visitor.close()
    assert recorder.requests == []
    assert served(edge)


def test_a_header_block_over_the_limit_is_refused(
    edge: Edge, tenant: Tenant, recorder: RawOrigin
) -> None:
    visitor = Visitor(edge)
    try:
        block = visitor.headers_block(extra=[("x-huge", "a" * 100_000)])
        pieces = [block[i : i + 16_384] for i in range(0, len(block), 16_384)]
        first = HeadersFrame(1)
        first.data = pieces[0]
        first.flags.add("END_STREAM")
        frames = [first.serialize()]
        for n, piece in enumerate(pieces[1:], 1):
            frame = ContinuationFrame(1)
            frame.data = piece
            if n == len(pieces) - 1:
                frame.flags.add("END_HEADERS")
            frames.append(frame.serialize())
        visitor.send(b"".join(frames))
        goaway = visitor.goaway()
        assert goaway is not None and goaway.error_code in (PROTOCOL_ERROR, ENHANCE_YOUR_CALM)
    finally:
        visitor.close()
    assert recorder.requests == []
    assert served(edge)


def test_a_window_update_past_the_maximum_is_a_flow_control_error(
    edge: Edge, tenant: Tenant
) -> None:
    visitor = Visitor(edge)
    try:
        visitor.send(WindowUpdateFrame(0, window_increment=2**31 - 1).serialize())
        goaway = visitor.goaway()
        assert goaway is not None and goaway.error_code == FLOW_CONTROL_ERROR
    finally:
        visitor.close()
    assert served(edge)


def test_a_rapid_reset_flood_gets_goaway_and_reaches_the_origin_boundedly(
    edge: Edge, tenant: Tenant, recorder: RawOrigin
) -> None:
    visitor = Visitor(edge)
    flood = 5_000
    try:
        for batch in range(flood // 100):
            frames = []
            for n in range(100):
                stream_id = 1 + 2 * (batch * 100 + n)
                frames.append(visitor.get(stream_id))
                frames.append(RstStreamFrame(stream_id, error_code=CANCEL).serialize())
            if not visitor.send(b"".join(frames)):
                break
        goaway = visitor.goaway()
        assert goaway is not None and goaway.error_code == ENHANCE_YOUR_CALM
    finally:
        visitor.close()
    # The streams the edge took before it said enough are all the origin can have seen.
    assert goaway.last_stream_id < 2 * flood
    assert len(recorder.parsed) <= RESET_BURST + 100
    assert served(edge)


def test_a_visitor_that_never_reads_holds_the_origin_not_the_edge(
    processes: Processes, edge: Edge
) -> None:
    total = 512 * 1024 * 1024
    with raw_origin(streaming(total)) as origin:
        start_tenant(processes, edge, "acme", HOST, origin.url)
        visitor = Visitor(edge)
        try:
            visitor.send(visitor.get(1, "/big"))
            # The origin sends as far as the chain's windows and buffers let it, then stops.
            last, steady = -1, 0
            for _ in range(200):
                time.sleep(0.1)
                sent = origin.sent
                steady = steady + 1 if sent == last else 0
                last = sent
                if steady >= 10 and sent > 0:
                    break
            assert 0 < last < 64 * 1024 * 1024, last
            assert served(edge)
            # The send timeout (3 s here) ends the stream: the edge resets it, and the
            # origin request ends too.
            resets = [f for f in visitor.frames(timeout=30) if isinstance(f, RstStreamFrame)][:1]
            assert resets and resets[0].stream_id == 1
            origin.wait_for(lambda o: o.open_connections == 0, timeout=30, what="origin freed")
        finally:
            visitor.close()


def test_a_ping_flood_gets_goaway_after_a_bounded_number_of_answers(
    edge: Edge, tenant: Tenant
) -> None:
    visitor = Visitor(edge)
    pings = 50_000
    try:
        visitor.send(PingFrame(0, opaque_data=b"12345678").serialize() * pings)
        answered = 0
        goaway = None
        for frame in visitor.frames(timeout=30, limit=pings + 100):
            if isinstance(frame, PingFrame) and "ACK" in frame.flags:
                answered += 1
            elif isinstance(frame, GoAwayFrame):
                goaway = frame
                break
        assert goaway is not None and goaway.error_code == ENHANCE_YOUR_CALM
        # The budget, and at most one slice of frames read past it.
        assert answered <= CONTROL_BURST + 16 * 1024 // 17 + 10
    finally:
        visitor.close()
    assert served(edge)


def test_a_silent_or_idle_http2_connection_is_closed(processes: Processes) -> None:
    edge = start_edge(
        processes,
        https=True,
        env={"ADIT_EDGE_HEADER_TIMEOUT": "1s", "ADIT_EDGE_KEEPALIVE_TIMEOUT": "2s"},
    )
    with raw_origin() as origin:
        start_tenant(processes, edge, "acme", HOST, origin.url)
        # A preface and nothing else: the head timeout closes it, with a GOAWAY.
        silent = Visitor(edge)
        try:
            assert silent.goaway(timeout=30) is not None
        finally:
            silent.close()
        # One request answered, then nothing: the keep-alive timeout closes it.
        idle = Visitor(edge)
        try:
            idle.send(idle.get(1))
            frames = list(idle.frames(timeout=30))
            assert any(isinstance(f, HeadersFrame) and f.stream_id == 1 for f in frames)
            assert any(isinstance(f, GoAwayFrame) for f in frames)
        finally:
            idle.close()
        assert served(edge)


def test_a_whole_answer_beyond_the_visitors_window_goes_as_the_window_opens(
    processes: Processes, edge: Edge
) -> None:
    # The origin's answer comes whole in one tunnel read, but the visitor's stream window
    # (100 bytes) takes a tenth of it: it must go out piece by piece as the visitor opens
    # the window, never beyond it, and whole (the fast path leaves it to the stream's task).
    body = bytes(range(256)) * 4
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\n\r\n" + body
    with raw_origin(canned(response)) as origin:
        start_tenant(processes, edge, "acme", HOST, origin.url)
        visitor = Visitor(edge, window=100)
        try:
            visitor.send(visitor.get(1, "/whole"))
            got, ended = b"", False
            for frame in visitor.frames(timeout=20, limit=1000):
                if isinstance(frame, RstStreamFrame):
                    break
                if not isinstance(frame, DataFrame) or frame.stream_id != 1:
                    continue
                assert len(frame.data) <= 100
                got += frame.data
                if "END_STREAM" in frame.flags:
                    ended = True
                    break
                update = WindowUpdateFrame(1)
                update.window_increment = len(frame.data)
                assert visitor.send(update.serialize())
            assert ended
            assert got == body
        finally:
            visitor.close()
        assert served(edge)


def test_a_stream_without_an_answer_in_time_gets_524_and_the_others_are_served(
    processes: Processes,
) -> None:
    edge = start_edge(processes, https=True, env={"ADIT_EDGE_RESPONSE_TIMEOUT": "2s"})
    answer = canned()

    def slow_or_answer(received: bytes) -> bytes | Iterable[bytes] | None:
        return None if b" /slow " in received else answer(received)

    with raw_origin(slow_or_answer) as origin:
        start_tenant(processes, edge, "acme", HOST, origin.url)
        port = edge.https.rsplit(":", 1)[1]
        started = time.monotonic()
        slow = subprocess.Popen(
            [
                *("curl", "-sS", "--http2", "--max-time", "20", "--cacert", str(edge.ca)),
                *("--resolve", f"{HOST}:{port}:127.0.0.1", "-o", "/dev/null"),
                *("-w", "%{http_code} %{http_version}", f"https://{HOST}:{port}/slow"),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert served(edge)  # while the slow one waits
            out, _ = slow.communicate(timeout=30)
        finally:
            if slow.poll() is None:
                slow.kill()
                slow.wait()
        # The response timeout, met within the listener's sweep interval (and slack for a
        # busy machine), as on HTTP/1.1 (test_public_timeouts.py).
        assert out == "524 2"
        assert time.monotonic() - started < 2 + 3.0
        assert served(edge)
