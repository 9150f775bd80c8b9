"""The token bucket and the HTTP/2 flood limits, sans-IO with the time passed in."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adit.protocol.errors import Http2FloodError, Http2TunnelError
from adit.protocol.http2 import (
    ConnectorTunnelConnection,
    EdgeTunnelConnection,
    ErrorCode,
    PingAcknowledged,
    TunnelSettings,
)
from adit.protocol.http2_frames import (
    CONNECTION_PREFACE,
    Flag,
    FrameReader,
    FrameType,
    frame,
    ping_frame,
    rst_stream_frame,
    settings_frame,
    window_update_frame,
)
from adit.protocol.http2_limits import Flood, FrameBudget, FrameLimits, RateLimit
from adit.protocol.rate_limit import TokenBucket

# --- the token bucket -------------------------------------------------------------------------


def test_a_bucket_gives_its_burst_then_refuses() -> None:
    bucket = TokenBucket(rate=10, burst=5)
    assert [bucket.take(0.0) for _ in range(6)] == [True] * 5 + [False]


def test_a_bucket_refills_at_its_rate_and_never_above_its_burst() -> None:
    bucket = TokenBucket(rate=10, burst=5)
    for _ in range(5):
        bucket.take(0.0)
    assert not bucket.take(0.05)  # half a token back
    assert bucket.take(0.1)
    assert bucket.tokens(100.0) == 5  # a quiet minute buys no more than the burst


def test_earned_tokens_go_above_the_burst_up_to_the_ceiling() -> None:
    bucket = TokenBucket(rate=0, burst=2, ceiling=10)
    bucket.give(100)
    assert bucket.tokens(0.0) == 10
    assert sum(bucket.take(0.0) for _ in range(20)) == 10


def test_time_standing_still_only_counts() -> None:
    bucket = TokenBucket(rate=1000, burst=3)
    assert [bucket.take(None) for _ in range(4)] == [True, True, True, False]


def test_a_clock_going_backwards_refills_nothing() -> None:
    bucket = TokenBucket(rate=10, burst=1)
    assert bucket.take(5.0)
    assert not bucket.take(4.0)


@given(
    st.floats(min_value=0.1, max_value=1000),
    st.floats(min_value=1, max_value=1000),
    st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=200),
)
def test_a_bucket_never_grants_more_than_burst_plus_rate_times_time(
    rate: float, burst: float, gaps: list[float]
) -> None:
    bucket = TokenBucket(rate=rate, burst=burst)
    now = 0.0
    granted = 0
    for gap in gaps:
        now += gap
        granted += sum(bucket.take(now) for _ in range(5))
    assert granted <= burst + rate * now + 1e-6


# --- the frame budget ---------------------------------------------------------------------------


def test_each_kind_has_its_own_bucket() -> None:
    budget = FrameBudget(FrameLimits(ping=RateLimit(burst=2, rate=0)))
    budget.charge(Flood.PING, 0.0)
    budget.charge(Flood.PING, 0.0)
    for _ in range(10):
        budget.charge(Flood.GLITCH, 0.0)
        budget.charge(Flood.SETTINGS, 0.0)
    with pytest.raises(Http2FloodError) as caught:
        budget.charge(Flood.PING, 0.0)
    assert caught.value.error_code == ErrorCode.ENHANCE_YOUR_CALM


def test_data_sent_earns_window_updates() -> None:
    budget = FrameBudget(FrameLimits(window_update=RateLimit(burst=1, rate=0)))
    budget.charge(Flood.WINDOW_UPDATE, 0.0)
    with pytest.raises(Http2FloodError):
        budget.charge(Flood.WINDOW_UPDATE, 0.0)
    budget.sent_data(4096)  # earns four
    for _ in range(4):
        budget.charge(Flood.WINDOW_UPDATE, 0.0)


# --- the limits inside the HTTP/2 connection ---------------------------------------------------


def _edge(limits: FrameLimits | None = None) -> EdgeTunnelConnection:
    """An edge whose control stream (1) is open and answered, as after a registration."""
    conn = EdgeTunnelConnection(TunnelSettings(limits=limits or FrameLimits()))
    conn.initiate()
    conn.open_control_stream()
    conn.data_to_send()
    conn.receive_data(settings_frame(), 0.0)
    conn.data_to_send()
    return conn


def _connector() -> ConnectorTunnelConnection:
    conn = ConnectorTunnelConnection()
    conn.initiate()
    conn.data_to_send()
    conn.receive_data(CONNECTION_PREFACE + settings_frame(), 0.0)
    conn.data_to_send()
    return conn


FLOODS: dict[str, Callable[[int], bytes]] = {
    "ping": lambda n: ping_frame(n.to_bytes(8, "big")),
    "ping ack": lambda n: ping_frame(n.to_bytes(8, "big"), ack=True),
    "settings": lambda n: settings_frame([(0x4, 65535)]),
    "settings ack": lambda n: settings_frame(ack=True),
    "window update": lambda n: window_update_frame(0, 1),
    "empty data": lambda n: frame(FrameType.DATA, 0, 1, b""),
    "priority": lambda n: frame(FrameType.PRIORITY, 0, 1, b"\0\0\0\0\x10"),
    "unknown type": lambda n: frame(0x42, 0, 0, b"x"),
    "reset of a closed stream": lambda n: rst_stream_frame(1, 8),
}


@pytest.mark.parametrize("kind", sorted(FLOODS))
def test_a_flood_of_any_kind_ends_in_enhance_your_calm(kind: str) -> None:
    with pytest.raises(Http2FloodError) as caught:
        _flood(_edge(), FLOODS[kind])
    assert caught.value.error_code == ErrorCode.ENHANCE_YOUR_CALM


def _flood(conn: EdgeTunnelConnection, make: Callable[[int], bytes]) -> None:
    for n in range(100_000):
        conn.receive_data(make(n), 0.0)
        conn.data_to_send()


@pytest.mark.parametrize("kind", ["ping", "settings", "window update", "empty data"])
def test_the_same_frames_at_an_honest_pace_are_fine(kind: str) -> None:
    """One a second for ten minutes: more than any legitimate tunnel peer sends."""
    conn = _edge()
    make = FLOODS[kind]
    for n in range(600):
        conn.receive_data(make(n), float(n))
        conn.data_to_send()


def test_empty_continuation_frames_are_a_flood() -> None:
    conn = _edge()
    conn.receive_data(frame(FrameType.HEADERS, 0, 1, b""), 0.0)
    with pytest.raises(Http2FloodError):
        _flood(conn, lambda n: frame(FrameType.CONTINUATION, 0, 1, b""))


def test_a_header_block_may_not_span_more_frames_than_any_peer_needs() -> None:
    conn = _edge(FrameLimits(max_continuations=4))
    conn.receive_data(frame(FrameType.HEADERS, 0, 1, b"\x82"), 0.0)
    for _ in range(4):
        conn.receive_data(frame(FrameType.CONTINUATION, 0, 1, b"\x82"), 0.0)
    with pytest.raises(Http2FloodError):
        conn.receive_data(frame(FrameType.CONTINUATION, 0, 1, b"\x82"), 0.0)


def test_go_style_header_blocks_in_16_kib_frames_are_taken() -> None:
    """cloudflared splits a large header block into 16 KiB frames: 100 of them are fine."""
    conn = _edge()
    conn.receive_data(frame(FrameType.HEADERS, 0, 1, b""), 0.0)
    events = []
    for n in range(100):
        last = n == 99
        flags = Flag.END_HEADERS if last else 0
        events += conn.receive_data(frame(FrameType.CONTINUATION, flags, 1, b"\x82"), 0.0)
    assert len(events) == 1  # the block, whole: the control stream's answer


def test_a_settings_frame_with_too_many_entries_is_refused() -> None:
    conn = _edge()
    with pytest.raises(Http2FloodError):
        conn.receive_data(settings_frame([(0x4, 65535)] * 33), 0.0)


def test_a_reset_of_an_idle_stream_is_a_protocol_error() -> None:
    conn = _edge()
    with pytest.raises(Http2TunnelError) as caught:
        conn.receive_data(rst_stream_frame(5, 8), 0.0)
    assert caught.value.error_code == ErrorCode.PROTOCOL_ERROR
    assert not isinstance(caught.value, Http2FloodError)


def test_errors_keep_their_http2_code() -> None:
    conn = _edge()
    with pytest.raises(Http2TunnelError) as caught:
        conn.receive_data(settings_frame([(0x4, 2**31)]), 0.0)
    assert caught.value.error_code == ErrorCode.FLOW_CONTROL_ERROR


def test_resets_crossing_ours_earn_their_way() -> None:
    """Every stream we reset may see the peer's reset of it arrive after ours."""
    conn = _edge(FrameLimits(glitch=RateLimit(burst=0, rate=0)))
    ids = [conn.send_request("GET", "/", "h.test", [], end_stream=True) for _ in range(50)]
    for sid in ids:
        conn.reset_stream(sid)
    conn.data_to_send()
    for sid in ids:
        conn.receive_data(rst_stream_frame(sid, 8), 0.0)
    with pytest.raises(Http2FloodError):
        conn.receive_data(rst_stream_frame(ids[0], 8), 0.0)


def test_window_updates_follow_the_data_we_send() -> None:
    """Go credits every 4 KiB twice (stream and connection): 64 MiB sent, 32,768 updates."""
    conn = _connector()
    events = conn.receive_data(
        frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, 1, _request_block()), 0.0
    )
    assert events
    conn.send_response(1, 200, [])
    chunk = b"x" * 16384
    now = 0.0
    for _ in range(64 * 64):  # 64 MiB in 16 KiB pieces, credited as Go does
        conn.send_data(1, chunk)
        conn.data_to_send()
        for _ in range(4):
            conn.receive_data(window_update_frame(1, 4096) + window_update_frame(0, 4096), now)
        now += 0.0001
    assert conn.pending(1) == 0


def _request_block() -> bytes:
    import hpack

    return hpack.Encoder().encode(
        [(":method", "GET"), (":scheme", "https"), (":authority", "h.test"), (":path", "/")]
    )


# --- answers a peer makes us owe ----------------------------------------------------------------


def test_answers_owed_to_a_peer_that_does_not_read_are_capped() -> None:
    conn = _edge(FrameLimits(ping=RateLimit(burst=10**9, rate=0), max_owed_control=100))
    for n in range(100):
        conn.receive_data(ping_frame(n.to_bytes(8, "big")), 0.0)
    assert conn.owed_control_frames == 100
    with pytest.raises(Http2FloodError):
        conn.receive_data(ping_frame(b"one more"), 0.0)


def test_answers_taken_by_the_transport_are_no_longer_owed() -> None:
    conn = _edge(FrameLimits(ping=RateLimit(burst=10**9, rate=0), max_owed_control=10))
    for n in range(1000):
        conn.receive_data(ping_frame(n.to_bytes(8, "big")), 0.0)
        answer = conn.data_to_send()
        assert FrameReader(1 << 20, expect_preface=False).feed(answer) == [
            (FrameType.PING, Flag.ACK, 0, n.to_bytes(8, "big"))
        ]
    assert conn.owed_control_frames == 0


def test_our_own_pings_are_acknowledged_as_events() -> None:
    conn = _edge()
    conn.ping(b"12345678")
    assert conn.receive_data(ping_frame(b"12345678", ack=True), 0.0) == [
        PingAcknowledged(b"12345678")
    ]
