"""Jittered exponential backoff per connection (cloudflared's retry.BackoffHandler, fixed).

The delay is drawn from [base·2^n / 2, base·2^n) with n capped at ``retries``: never zero, so
a refusing address can never make a connection spin (cloudflared's tight loop with a single
static ``--edge`` cannot happen here).
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Next delay after each failure; :meth:`reset` after a success."""

    def __init__(
        self,
        base: float = 1.0,
        retries: int = 5,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.base = base
        self.retries = retries
        self.attempts = 0
        self._rand = rand

    def next_delay(self) -> float:
        """The delay before the next attempt; counts an attempt."""
        ceiling = self.base * float(2 ** min(self.attempts, self.retries))
        self.attempts += 1
        return ceiling / 2 + self._rand() * ceiling / 2

    def reset(self) -> None:
        """A connection succeeded: start again from the base delay."""
        self.attempts = 0
