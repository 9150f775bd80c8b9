"""Pure parts of stream services and origin dialling: destinations, address order, h2 heads,
SOCKS ip rules."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator

import pytest

from adit.config.origin import IpRule
from adit.workers.errors import BastionDestinationMissing, OriginUnreachable
from adit.workers.origins.dialer import connect_first, interleave_families, split_destination
from adit.workers.origins.http2 import h2_request_headers
from adit.workers.origins.socks import ip_allowed
from adit.workers.origins.wsbridge import ack_headers, jump_destination
from adit.workers.stream import IncomingRequest, StreamKind


def request(*headers: tuple[str, str]) -> IncomingRequest:
    return IncomingRequest(StreamKind.WEBSOCKET, "GET", "/", "h.test", "h.test", headers)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("db.internal:5432", "db.internal:5432"),
        ("tcp://db.internal:5432", "db.internal:5432"),
        ("ssh://user@10.0.0.5:22/ignored/path", "10.0.0.5:22"),
        ("10.0.0.5:22/path", "10.0.0.5:22"),
        ("[::1]:22", "[::1]:22"),
    ],
)
def test_jump_destination_strips_scheme_and_path(value: str, expected: str) -> None:
    assert jump_destination(request(("Cf-Access-Jump-Destination", value))) == expected


def test_missing_jump_destination() -> None:
    with pytest.raises(BastionDestinationMissing, match="--destination flag"):
        jump_destination(request())


def test_ack_headers_compute_the_accept_key() -> None:
    headers = ack_headers(request(("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")))
    assert ("Sec-Websocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") in headers


@pytest.mark.parametrize(
    ("text", "expected"),
    [("a.b:22", ("a.b", 22)), ("[::1]:3389", ("::1", 3389)), ("127.0.0.1:1", ("127.0.0.1", 1))],
)
def test_split_destination(text: str, expected: tuple[str, int]) -> None:
    assert split_destination(text) == expected


@pytest.mark.parametrize("text", ["host", "::1", "host:http", "host:0", "host:70000"])
def test_split_destination_errors(text: str) -> None:
    with pytest.raises(OriginUnreachable):
        split_destination(text)


def test_interleave_families_alternates_starting_with_the_first() -> None:
    v6, v4 = socket.AF_INET6, socket.AF_INET
    addresses = [(v6, "a"), (v6, "b"), (v6, "c"), (v4, "1"), (v4, "2")]
    assert interleave_families(addresses) == [
        (v6, "a"),
        (v4, "1"),
        (v6, "b"),
        (v4, "2"),
        (v6, "c"),
    ]
    assert interleave_families([]) == []


def test_h2_request_headers_drop_connection_specific_fields() -> None:
    headers = h2_request_headers(
        "POST",
        "/x?y",
        "in.lan",
        (
            ("Host", "in.lan"),
            ("Connection", "keep-alive"),
            ("TE", "gzip"),
            ("Te", "trailers"),
            ("X-Forwarded-For", "1.2.3.4"),
        ),
    )
    assert headers == [
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "in.lan"),
        (":path", "/x?y"),
        ("te", "trailers"),
        ("x-forwarded-for", "1.2.3.4"),
    ]


def test_ip_rules_first_match_decides_and_default_denies() -> None:
    rules = (
        IpRule("10.0.0.0/8", (22,), allow=True),
        IpRule("10.0.0.0/8", (), allow=False),
        IpRule("::/0", (), allow=True),
    )
    assert ip_allowed(rules, "10.1.2.3", 22)
    assert not ip_allowed(rules, "10.1.2.3", 80)
    assert ip_allowed(rules, "2001:db8::1", 443)
    assert not ip_allowed(rules, "192.0.2.1", 22)
    assert not ip_allowed((), "127.0.0.1", 22)


@pytest.fixture
def black_hole() -> Iterator[tuple[str, int]]:
    """A listener whose accept backlog is full: SYNs are dropped, connects hang."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(address)
        fillers.append(filler)
    try:
        yield address
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_happy_eyeballs_races_past_a_hanging_address(black_hole: tuple[str, int]) -> None:
    with socket.socket() as good:
        good.bind(("127.0.0.1", 0))
        good.listen(8)
        addresses = [(socket.AF_INET, black_hole), (socket.AF_INET, good.getsockname())]

        async def race() -> float:
            started = time.monotonic()
            sock = await asyncio.wait_for(connect_first(addresses, race=True, delay=0.2), 5)
            with sock:
                assert sock.getpeername() == good.getsockname()
            return time.monotonic() - started

        elapsed = asyncio.run(race())
        assert 0.15 <= elapsed < 3

        async def serial() -> None:
            await asyncio.wait_for(connect_first(addresses, race=False), 1.0)

        # noHappyEyeballs: the first address hangs and nothing else is tried meanwhile.
        with pytest.raises(TimeoutError):
            asyncio.run(serial())
