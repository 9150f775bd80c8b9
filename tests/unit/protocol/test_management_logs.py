"""The ``/logs`` messages, filters and tail's output lines (cloudflared's management events)."""

from __future__ import annotations

import json
import random

import pytest

from adit.protocol.management_logs import (
    InvalidManagementMessage,
    LogEntry,
    StreamingFilters,
    encode_logs,
    encode_start_streaming,
    format_json,
    format_line,
    parse_client_event,
    parse_logs,
)


def test_start_streaming_round_trip() -> None:
    filters = StreamingFilters(frozenset({"tcp", "http"}), "info", 0.5)
    event = parse_client_event(encode_start_streaming(filters))
    assert event.type == "start_streaming"
    assert event.filters == filters
    assert json.loads(encode_start_streaming(None)) == {"type": "start_streaming"}
    assert parse_client_event(b'{"type":"stop_streaming"}').type == "stop_streaming"


@pytest.mark.parametrize(
    "message",
    [
        b"not json",
        b"[]",
        b'{"type":"start"}',
        b'{"type":"start_streaming","filters":{"events":["nope"]}}',
        b'{"type":"start_streaming","filters":{"level":"trace"}}',
        b'{"type":"start_streaming","filters":{"sampling":"x"}}',
    ],
)
def test_bad_client_messages_are_refused(message: bytes) -> None:
    with pytest.raises(InvalidManagementMessage):
        parse_client_event(message)


def test_sampling_is_clamped_like_cloudflared() -> None:
    event = parse_client_event(b'{"type":"start_streaming","filters":{"sampling":7}}')
    assert event.filters.sampling == 1.0


def test_filters_pass_level_and_above_of_the_chosen_events() -> None:
    filters = StreamingFilters(frozenset({"http"}), "warn")
    assert filters.accepts("warn", "http")
    assert filters.accepts("error", "http")
    assert not filters.accepts("info", "http")
    assert not filters.accepts("error", "tcp")
    assert StreamingFilters().accepts("debug", "udp")
    sampled = StreamingFilters(sampling=0.1)
    rand = random.Random(1)
    kept = sum(sampled.accepts("debug", "http", rand) for _ in range(1000))
    assert 50 < kept < 200


def test_logs_messages_leave_out_go_zero_values() -> None:
    entry = LogEntry("2026-12-07T05:00:00Z", "debug", "hello", "cloudflared", {"b": 1, "a": "<"})
    payload = json.loads(encode_logs([entry]))
    # cloudflared's omitempty: debug and cloudflared are its enums' zero values.
    assert payload == {
        "type": "logs",
        "logs": [
            {"time": "2026-12-07T05:00:00Z", "message": "hello", "fields": {"b": 1, "a": "<"}}
        ],
    }
    assert parse_logs(encode_logs([entry])) == [entry]
    assert parse_logs(b'{"type":"other"}') is None
    with pytest.raises(InvalidManagementMessage):
        parse_logs(b'{"logs":[]}')


def test_output_lines_are_cloudflareds() -> None:
    entry = LogEntry("2026-12-07T05:00:00Z", "info", "GET /", "http", {"b": 1, "a": "<"})
    assert format_line(entry) == '2026-12-07T05:00:00Z info http GET / {"a":"\\u003c","b":1}'
    assert format_json(entry) == (
        '{"time":"2026-12-07T05:00:00Z","level":"info","message":"GET /","event":"http",'
        '"fields":{"a":"\\u003c","b":1}}'
    )
    bare = LogEntry("2026-12-07T05:00:00Z", "debug", "x", "cloudflared")
    assert format_line(bare) == "2026-12-07T05:00:00Z debug cloudflared x null"
    assert format_json(bare) == '{"time":"2026-12-07T05:00:00Z","message":"x"}'
