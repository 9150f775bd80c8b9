"""Jittered exponential backoff per connection (cloudflared's retry.BackoffHandler, fixed).

The delay is drawn from [base·2^n / 2, base·2^n) with n capped at ``retries``: never zero, so
a refusing address can never make a connection spin (cloudflared's tight loop with a single
static ``--edge`` cannot happen here).

One exception keeps an edge restart short. When a connection that had served for a while
ends, an edge that refuses the next dials (a reset at once: its host is up, nothing listens
yet) is most likely restarting. So the first ``quick_retries`` refused dials come
``quick_delay`` seconds apart (jittered, never zero) instead of 0.5, 1, 2 s... A failure of
any other kind (timeout, TLS, registration) ends the quick phase, and only a connection that
was registered for ``healthy_after`` seconds earns one: a connection the edge keeps dropping
still backs off exponentially.
"""

from __future__ import annotations

import random
from collections.abc import Callable

#: Spacing of the quick redials after a healthy connection ended (the upper bound; jittered).
QUICK_DELAY = 0.1
#: How many refused redials are quick: about 1.5 s of an edge restarting.
QUICK_RETRIES = 20
#: How long a connection must have been registered before its loss earns quick redials.
HEALTHY_AFTER = 2.0


class Backoff:
    """Next delay after each failure; :meth:`connected` after a success, :meth:`lost` after."""

    def __init__(
        self,
        base: float = 1.0,
        retries: int = 5,
        rand: Callable[[], float] = random.random,
        *,
        quick_delay: float = QUICK_DELAY,
        quick_retries: int = QUICK_RETRIES,
        healthy_after: float = HEALTHY_AFTER,
    ) -> None:
        self.base = base
        self.retries = retries
        self.quick_delay = quick_delay
        self.quick_retries = quick_retries
        self.healthy_after = healthy_after
        #: Attempts since the last success (what the registration reports to the edge).
        self.attempts = 0
        self._rand = rand
        #: Attempts that grew the exponential delay.
        self._slow = 0
        self._quick_left = 0
        self._connected_at: float | None = None
        #: The last delay given was a quick one.
        self.quick = False

    def next_delay(self, *, refused: bool = False) -> float:
        """The delay before the next attempt, after one that failed; counts an attempt.

        ``refused``: the dial was refused at once (the address answered with a reset).
        """
        self.attempts += 1
        self.quick = refused and self._quick_left > 0
        if self.quick:
            self._quick_left -= 1
            return self._jitter(self.quick_delay)
        self._quick_left = 0
        ceiling = self.base * float(2 ** min(self._slow, self.retries))
        self._slow += 1
        return self._jitter(ceiling)

    def connected(self, now: float) -> None:
        """A connection succeeded at ``now``: start again from the base delay."""
        self.attempts = 0
        self._slow = 0
        self._quick_left = 0
        self._connected_at = now

    def lost(self, now: float) -> float:
        """The established connection ended at ``now``: the delay before dialling again."""
        since = self._connected_at
        self._connected_at = None
        if since is not None and now - since >= self.healthy_after:
            self._quick_left = self.quick_retries
            self.attempts += 1
            self.quick = True
            return self._jitter(self.quick_delay)
        return self.next_delay()

    def _jitter(self, ceiling: float) -> float:
        return ceiling / 2 + self._rand() * ceiling / 2
