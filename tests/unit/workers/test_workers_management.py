"""The connector's management token check and the bounded log sessions behind ``/logs``."""

from __future__ import annotations

import asyncio
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from adit.logs.live_stream import LogSession
from adit.protocol.management_logs import LogEntry, StreamingFilters
from adit.workers.management import TokenInvalid, check_token

TUNNEL = uuid.uuid4()
KEY = ec.generate_private_key(ec.SECP256R1())
CLAIMS = {
    "tun": {"id": str(TUNNEL), "account_tag": "acc"},
    "actor": {"id": "someone", "support": False},
    "res": ["logs"],
}


def test_a_token_is_taken_as_cloudflared_takes_it() -> None:
    token = jwt.encode(CLAIMS, KEY, algorithm="ES256")
    assert check_token(token, TUNNEL) == "someone"
    assert check_token(token, None) == "someone"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        jwt.encode(CLAIMS, "secret-of-at-least-32-bytes-for-hs256!!", algorithm="HS256"),
        jwt.encode({**CLAIMS, "actor": {"id": ""}}, KEY, algorithm="ES256"),
        jwt.encode({"tun": CLAIMS["tun"]}, KEY, algorithm="ES256"),
        jwt.encode({**CLAIMS, "tun": {"id": str(TUNNEL)}}, KEY, algorithm="ES256"),
        # adit's own check: a token of another tunnel.
        jwt.encode(
            {**CLAIMS, "tun": {"id": str(uuid.uuid4()), "account_tag": "acc"}},
            KEY,
            algorithm="ES256",
        ),
    ],
)
def test_bad_tokens_are_refused(token: str) -> None:
    with pytest.raises(TokenInvalid):
        check_token(token, TUNNEL)


def _entry(n: int, level: str = "info", event: str = "cloudflared") -> LogEntry:
    return LogEntry("2026-12-07T05:00:00Z", level, f"line {n}", event)


def test_a_session_holds_a_bounded_queue_and_counts_what_it_dropped() -> None:
    async def main() -> None:
        session = LogSession(StreamingFilters(level="info"), capacity=3)
        for n in range(10):
            session.offer(_entry(n))  # never waits, whatever the reader does
        session.offer(_entry(99, level="debug"))  # filtered: neither queued nor dropped
        session.lost(2)  # what a publisher could not send
        batch, dropped = await session.next_batch()
        assert [e.message for e in batch] == ["line 0", "line 1", "line 2"]
        assert dropped == 7 + 2
        session.offer(_entry(10))
        batch, dropped = await asyncio.wait_for(session.next_batch(), 5)
        assert [e.message for e in batch] == ["line 10"] and dropped == 0

    asyncio.run(main())


def test_a_session_bounds_the_bytes_it_holds_too() -> None:
    async def main() -> None:
        session = LogSession(StreamingFilters(), capacity=100, max_bytes=1000)
        for n in range(5):
            session.offer(_entry(n), 400)
        batch, dropped = await session.next_batch()
        assert len(batch) == 2 and dropped == 3
        session.offer(_entry(9), 5000)  # one entry bigger than the bound still goes alone
        batch, dropped = await session.next_batch()
        assert len(batch) == 1 and dropped == 0

    asyncio.run(main())
