"""Is the peer of a tunnel connection still there? The one liveness rule, both roles, sans-IO.

A peer that is frozen (SIGSTOP, a stuck event loop) or cut off without a FIN (a dropped
route, a dead host) sends nothing, and TCP alone notices that only after minutes, if ever.
So each end watches how long the peer has been silent, and asks when it is unsure:

* anything read from the peer counts as hearing from it (a busy peer is never pinged);
* after ``interval`` of silence a PING goes out (one at a time);
* a PING unanswered for ``allowance`` (and nothing else heard since) makes the peer
  *unresponsive*: the edge stops routing new requests to it at once, and routes to it again
  as soon as it is heard from;
* ``timeout`` of silence and the connection is dropped (the connector then redials).

The defaults follow cloudflared's QUIC transport (a keep-alive PING every 1 s, 5 s of idleness
end the connection); over HTTP/2 cloudflared itself never pings, it only answers, at once, from
Go's serve loop. A frozen peer is therefore unroutable within ``interval + allowance`` of its
last frame (2.5 s by default) and dropped after ``timeout``.

Time is passed in. The caller asks :meth:`Liveness.poll` at :meth:`Liveness.deadline`; when
that call comes much later than asked, our own process was stalled (a stopped process, a long
pause), and the peer's silence over that stretch proves nothing: it is forgiven.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "DEFAULT_ALLOWANCE",
    "DEFAULT_INTERVAL",
    "DEFAULT_TIMEOUT",
    "Liveness",
    "LivenessSettings",
    "PeerState",
]

DEFAULT_INTERVAL = 1.0
DEFAULT_ALLOWANCE = 1.5
DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class LivenessSettings:
    """How often to ask and how long to wait (seconds)."""

    #: Silence after which a PING goes out.
    interval: float = DEFAULT_INTERVAL
    #: How long a PING may go unanswered before the peer is unresponsive.
    allowance: float = DEFAULT_ALLOWANCE
    #: Silence after which the connection is dropped.
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.allowance <= 0:
            raise ValueError("the ping interval and allowance must be positive")
        if self.timeout <= self.interval + self.allowance:
            raise ValueError("the idle timeout must be longer than the ping interval + allowance")


class PeerState(enum.Enum):
    """What the peer's silence means now."""

    ALIVE = "alive"
    #: A PING went unanswered for longer than the allowance: route nothing new to it.
    UNRESPONSIVE = "unresponsive"
    #: Silent for the whole timeout: drop the connection.
    GONE = "gone"


class Liveness:
    """The liveness of one peer: when we last heard from it, whether a PING is out."""

    __slots__ = ("_asked_at", "_counter", "_heard", "_ping_sent", "settings")

    def __init__(self, settings: LivenessSettings, now: float) -> None:
        self.settings = settings
        self._heard = now
        #: When the outstanding PING went out (None: none is).
        self._ping_sent: float | None = None
        self._counter = 0
        #: When the caller was told to poll next.
        self._asked_at = now

    def heard(self, now: float) -> None:
        """The peer sent something (any frame): it is there."""
        self._heard = now
        self._ping_sent = None

    def state(self, now: float) -> PeerState:
        """What the silence means at ``now``."""
        # Compared as the deadlines are computed (heard + timeout...), so that a poll at a
        # deadline always sees it reached.
        if now >= self._heard + self.settings.timeout:
            return PeerState.GONE
        sent = self._ping_sent
        if sent is not None and now >= sent + self.settings.allowance:
            return PeerState.UNRESPONSIVE
        return PeerState.ALIVE

    def poll(self, now: float) -> bytes | None:
        """The payload of a PING to send now, if one is due."""
        if now - self._asked_at > self.settings.interval:
            # We were not running when we should have been: the silence is ours.
            self.heard(now)
        if self._ping_sent is None and now >= self._heard + self.settings.interval:
            self._ping_sent = now
            self._counter += 1
            return self._counter.to_bytes(8, "big")
        return None

    def deadline(self, now: float) -> float:
        """When :meth:`poll` (and :meth:`state`) should be asked next, after asking at ``now``."""
        s = self.settings
        if self._ping_sent is None:
            at = self._heard + s.interval
        else:
            unresponsive_at = self._ping_sent + s.allowance
            at = unresponsive_at if unresponsive_at > now else self._heard + s.timeout
        self._asked_at = at
        return at
