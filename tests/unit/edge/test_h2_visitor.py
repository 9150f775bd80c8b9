"""The edge's HTTP/2 state machine for visitors (sans-IO), against h2's client."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from adit.edge.h2_visitor import (
    MAX_CONCURRENT_STREAMS,
    RESET_BURST,
    Closed,
    RequestBody,
    RequestEnded,
    RequestHead,
    StreamAborted,
    VisitorH2,
)
from adit.edge.http1 import ResponseError


def _pair() -> tuple[h2.connection.H2Connection, VisitorH2]:
    client = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    client.initiate_connection()
    server = VisitorH2()
    server.start()
    client.receive_data(server.data_to_send())
    assert server.receive(client.data_to_send(), 0.0) is not None
    client.receive_data(server.data_to_send())
    return client, server


def _request(client: h2.connection.H2Connection, stream_id: int, *, end: bool = True) -> None:
    client.send_headers(
        stream_id,
        [
            (":method", "POST" if not end else "GET"),
            (":scheme", "https"),
            (":authority", "app.example.com"),
            (":path", "/a?b=1"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("x-thing", "yes"),
        ],
        end_stream=end,
    )


def test_a_request_becomes_the_http1_shape() -> None:
    client, server = _pair()
    _request(client, 1, end=False)
    client.send_data(1, b"body", end_stream=True)
    events = server.receive(client.data_to_send(), 0.0)
    head = events[0]
    assert isinstance(head, RequestHead)
    request = head.request
    assert (request.method, request.target, request.host) == (
        b"POST",
        b"/a?b=1",
        b"app.example.com",
    )
    assert request.has_body and not head.ended
    assert (b"x-thing", b"yes") in request.headers
    assert (b"cookie", b"a=1; b=2") in request.headers
    assert not any(name.startswith(b":") for name, _ in request.headers)
    assert events[1] == RequestBody(1, b"body", 4)
    assert events[2] == RequestEnded(1)


def test_connection_specific_response_headers_are_dropped_and_bad_ones_refused() -> None:
    client, server = _pair()
    _request(client, 1)
    server.receive(client.data_to_send(), 0.0)
    with pytest.raises(ResponseError):
        server.respond(1, 200, [("bad name", "x")], end_stream=True)
    with pytest.raises(ResponseError):
        server.respond(1, 200, [("x-split", "a\r\nb")], end_stream=True)
    server.respond(
        1,
        200,
        [
            ("Connection", "close"),
            ("Keep-Alive", "5"),
            ("Transfer-Encoding", "chunked"),
            ("X-A", "b"),
        ],
        end_stream=True,
    )
    (response, *_) = client.receive_data(server.data_to_send())
    assert isinstance(response, h2.events.ResponseReceived)
    assert response.headers == [(b":status", b"200"), (b"x-a", b"b")]


def test_rapid_resets_beyond_the_budget_close_the_connection() -> None:
    client, server = _pair()
    closed: list[Closed] = []
    aborted = 0
    for n in range(int(RESET_BURST) + 10):
        stream_id = 1 + 2 * n
        _request(client, stream_id)
        client.reset_stream(stream_id)
        for event in server.receive(client.data_to_send(), 0.0):  # all at one moment
            aborted += isinstance(event, StreamAborted)
            if isinstance(event, Closed):
                closed.append(event)
        if closed:
            break
    assert closed and "rapid reset" in closed[0].reason
    assert aborted == int(RESET_BURST) + 1
    goaway = [
        e
        for e in client.receive_data(server.data_to_send())
        if isinstance(e, h2.events.ConnectionTerminated)
    ]
    assert goaway and goaway[0].error_code == 0xB


def test_the_advertised_stream_limit_is_in_force_from_the_start() -> None:
    server = VisitorH2()
    server.start()
    assert server._h2.local_settings.max_concurrent_streams == MAX_CONCURRENT_STREAMS


def test_response_heads_decode_the_same_when_the_visitor_shrinks_its_table() -> None:
    # The edge's encoder keeps no dynamic table; hpack's decoder (what h2 clients use) reads
    # every head the same, also after the visitor lowers SETTINGS_HEADER_TABLE_SIZE, which
    # obliges the encoder to open its next block with a table size update.
    client, server = _pair()
    headers = [("Content-Type", "text/plain"), ("X-Long", "v" * 300), ("Date", "now")]
    expected = [(b":status", b"200"), *((n.lower().encode(), v.encode()) for n, v in headers)]
    for n, table_size in enumerate((4096, 0, 256)):
        stream_id = 1 + 2 * n
        client.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: table_size})
        _request(client, stream_id)
        server.receive(client.data_to_send(), 0.0)
        server.respond(stream_id, 200, headers, end_stream=True)
        events = client.receive_data(server.data_to_send())
        responses = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
        assert [r.headers for r in responses] == [expected], table_size


def test_indexed_and_huffman_request_heads_decode_and_a_broken_block_ends_the_connection() -> None:
    # h2's client indexes fields and Huffman-codes strings (as browsers do): the second
    # request's head is mostly references into the dynamic table the first one filled.
    client, server = _pair()
    for stream_id in (1, 3):
        _request(client, stream_id)
        (head, *_) = server.receive(client.data_to_send(), 0.0)
        assert isinstance(head, RequestHead)
        assert (head.request.method, head.request.host) == (b"GET", b"app.example.com")
        assert (b"x-thing", b"yes") in head.request.headers
    # A HEADERS frame (stream 5, END_HEADERS) whose block indexes past both tables.
    broken = b"\x00\x00\x02\x01\x05\x00\x00\x00\x05" + b"\xff\x7f"
    events = server.receive(broken, 0.0)
    assert isinstance(events[-1], Closed) and "protocol error" in events[-1].reason
    goaway = [
        e
        for e in client.receive_data(server.data_to_send())
        if isinstance(e, h2.events.ConnectionTerminated)
    ]
    assert goaway and goaway[0].error_code == 0x1  # h2 answers any HPACK error so
