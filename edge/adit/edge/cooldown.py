"""Tunnels that flooded the edge wait before they register again.

Closing a flooding connection within milliseconds (``adit.protocol.http2_limits``) is not the
end of it: a connector that dials and registers again at once, and floods again, makes the
edge pay a TLS handshake, a registration and a flood check many times a second (measured with
``loadtests/attack.py``: ~100 registrations a second moved another tenant's p99 from 2 to
13 ms). So a tunnel whose connection was closed for a flood is refused registration for a
while, with a retryable refusal that says how long (cloudflared and adit's connector both wait
``retry_after``): 1 s after the first flood, doubling with each further one up to a minute,
and forgotten after ten quiet minutes.

The key is the tunnel: the tenant who holds its credentials. Nothing a caller without them
does can put a tunnel in cooldown, since only a registered connection's flood counts.
Sans-IO: the time is passed in.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

__all__ = ["Cooldowns"]


@dataclass(slots=True)
class _Record:
    #: Floods counted (each doubles the wait).
    strikes: int
    #: Registrations are refused until then.
    until: float
    #: The last flood (the record is forgotten ``forget_after`` later).
    last: float


class Cooldowns:
    """How long each tunnel must wait before it may register again."""

    def __init__(
        self,
        *,
        first: float = 1.0,
        longest: float = 60.0,
        forget_after: float = 600.0,
        max_tunnels: int = 100_000,
    ) -> None:
        self.first = first
        self.longest = longest
        self.forget_after = forget_after
        self.max_tunnels = max_tunnels
        self._records: dict[uuid.UUID, _Record] = {}

    def punish(self, tunnel_id: uuid.UUID, now: float) -> float:
        """Count a flood by ``tunnel_id``; returns how long it must now wait."""
        record = self._records.get(tunnel_id)
        if record is None or now - record.last >= self.forget_after:
            if len(self._records) >= self.max_tunnels:
                self._forget_old(now)
            record = self._records[tunnel_id] = _Record(0, now, now)
        record.strikes += 1
        wait = min(self.longest, self.first * 2.0 ** min(record.strikes - 1, 32))
        record.until = now + wait
        record.last = now
        return wait

    def remaining(self, tunnel_id: uuid.UUID, now: float) -> float:
        """Seconds ``tunnel_id`` must still wait (0 when it may register)."""
        record = self._records.get(tunnel_id)
        if record is None:
            return 0.0
        return max(0.0, record.until - now)

    def _forget_old(self, now: float) -> None:
        stale = [k for k, r in self._records.items() if now - r.last >= self.forget_after]
        for key in stale:
            del self._records[key]
        if len(self._records) >= self.max_tunnels:
            # Every record is recent (a flood from that many tunnels at once): the oldest go.
            oldest = sorted(self._records, key=lambda k: self._records[k].last)
            for key in oldest[: len(oldest) // 2]:
                del self._records[key]
