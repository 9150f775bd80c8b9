"""A token bucket: the one rate limiter adit uses wherever a peer's behaviour is metered.

Sans-IO: the caller passes the time (any monotonic clock, in seconds) to every call, so the
bucket is deterministic in tests and costs no clock read of its own. Nothing here knows what is
being limited; the policies that use it (:mod:`adit.protocol.http2_limits`) say that.
"""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """Up to ``burst`` tokens, refilled at ``rate`` tokens a second; each event takes some.

    A peer that stays under ``rate`` on average never runs dry; one that goes faster gets
    ``burst`` events of grace and is then refused until the bucket refills. Tokens can also be
    :meth:`earned <give>` by something the limited party is owed (data we sent earns the
    window updates that may answer it), above ``burst`` up to ``ceiling``.
    """

    __slots__ = ("_at", "_tokens", "burst", "ceiling", "rate")

    def __init__(self, rate: float, burst: float, *, ceiling: float | None = None) -> None:
        if rate < 0 or burst < 0:
            raise ValueError("a token bucket's rate and burst are not negative")
        self.rate = rate
        self.burst = burst
        #: The most tokens the bucket ever holds (earned tokens included).
        self.ceiling = burst if ceiling is None else max(burst, ceiling)
        self._tokens = float(burst)
        self._at: float | None = None

    def take(self, now: float | None, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens at time ``now``; False (and nothing taken) when there are not
        that many. ``now`` None: no time has passed since the last call."""
        self._refill(now)
        if self._tokens < cost:
            return False
        self._tokens -= cost
        return True

    def give(self, tokens: float) -> None:
        """Add earned tokens, up to :attr:`ceiling`."""
        self._tokens = min(self.ceiling, self._tokens + tokens)

    def tokens(self, now: float | None) -> float:
        """The tokens available at ``now``."""
        self._refill(now)
        return self._tokens

    def _refill(self, now: float | None) -> None:
        if now is None:
            return
        at = self._at
        self._at = now
        if at is None or now <= at:
            return
        # Refilling only tops up to the burst: a quiet minute never buys a minute-long flood.
        if self._tokens < self.burst:
            self._tokens = min(self.burst, self._tokens + (now - at) * self.rate)
