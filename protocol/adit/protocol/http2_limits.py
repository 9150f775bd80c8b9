"""How many frames of each kind an HTTP/2 tunnel peer may send: the flood policy, sans-IO.

A frame that makes us work or answer without moving a request forward (PING, SETTINGS,
WINDOW_UPDATE, a RST_STREAM for a stream that is already closed, an empty DATA or CONTINUATION
frame, PRIORITY, an unknown type) is nearly free to send and not free to receive: a peer that
sends a million of them a second stalls this process's event loop for every other tenant. Each
kind is metered by one :class:`~adit.protocol.rate_limit.TokenBucket`; a peer that empties one
gets GOAWAY ``ENHANCE_YOUR_CALM`` (:class:`~adit.protocol.errors.Http2FloodError`).

The limits are set from what the legitimate peers of a tunnel send, with room to spare, and
from what others settled on for the same attacks:

* nghttp2 (1.67) meters "glitches" (frames for closed or idle streams, empty DATA without
  END_STREAM, PRIORITY...) with a bucket of 10,000 refilled at 330/s, stream resets with
  1,000 at 33/s, allows 8 CONTINUATION frames per header block, 32 entries per SETTINGS frame,
  and closes a session that leaves 1,000 SETTINGS/PING ACKs unsent (CVE-2019-9512/9515).
* Go's x/net/http2 (cloudflared's HTTP/2) closes a connection with 10,000 control frames
  queued unsent, and answers more early resets than 4x its stream limit with
  ``ENHANCE_YOUR_CALM`` (CVE-2023-44487).
* The tunnel's peers: adit pings once per liveness interval (1 s by default) and sends one
  SETTINGS frame per connection; cloudflared's connector (Go's server) never pings and sends
  one SETTINGS frame; Go returns flow-control credit every 4 KiB a handler reads, once for
  the stream and once for the connection, so its WINDOW_UPDATEs follow the data we send.

Our per-frame cost is higher than a C library's, so the bursts are smaller than nghttp2's: a
flood at a hundred thousand frames a second is refused within milliseconds, and the
rates are still ten times anything a legitimate peer of a tunnel sends.

What is deliberately not metered: RST_STREAM for a stream that is open. In the edge's role
(the HTTP/2 client) every such stream was opened by the edge for a visitor, so a connector
resetting them costs nothing the visitors did not already cost (the Rapid Reset amplification
needs a peer that opens the streams it resets). In the connector's role the edge opens and
resets streams as visitors come and go, at a rate visitors decide: metering that would let
visitors make a connector drop its own edge connection.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from adit.protocol.errors import Http2FloodError
from adit.protocol.rate_limit import TokenBucket

__all__ = ["Flood", "FrameBudget", "FrameLimits", "RateLimit"]


class Flood(enum.Enum):
    """The kinds of frames that are metered."""

    PING = "PING"
    SETTINGS = "SETTINGS"
    WINDOW_UPDATE = "WINDOW_UPDATE"
    #: Frames with no use to a legitimate peer: RST_STREAM for a closed stream, empty DATA
    #: without END_STREAM, empty CONTINUATION without END_HEADERS, PRIORITY, unknown types.
    GLITCH = "glitch"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``burst`` frames at once, ``rate`` frames a second on average."""

    burst: float
    rate: float


@dataclass(frozen=True, slots=True)
class FrameLimits:
    """The flood policy of one connection (defaults: see the module docstring)."""

    #: PING frames either way (requests and ACKs): adit sends one a second at most.
    ping: RateLimit = field(default_factory=lambda: RateLimit(burst=100, rate=10))
    #: SETTINGS frames (and ACKs): one per connection is what both peers send.
    settings: RateLimit = field(default_factory=lambda: RateLimit(burst=20, rate=2))
    #: WINDOW_UPDATE frames beyond those the data we sent earns (see ``window_updates_per_kib``).
    window_update: RateLimit = field(default_factory=lambda: RateLimit(burst=1000, rate=100))
    #: Tokens each KiB of DATA we send earns the WINDOW_UPDATE bucket: Go credits every 4 KiB
    #: twice (stream and connection), so one per KiB is twice what it needs.
    window_updates_per_kib: float = 1.0
    #: The most earned WINDOW_UPDATE tokens held (64 MiB of data in flight: more than the
    #: largest windows a tunnel peer grants).
    window_update_ceiling: float = 65536.0
    #: Glitches (:attr:`Flood.GLITCH`); each stream we reset earns one back (the peer's reset
    #: of the same stream may cross ours).
    glitch: RateLimit = field(default_factory=lambda: RateLimit(burst=1000, rate=100))
    #: The most glitch tokens earned by our resets held (ten times the streams a connector
    #: serves at once).
    glitch_ceiling: float = 10000.0
    #: Entries in one SETTINGS frame (RFC 9113 defines six).
    max_settings_entries: int = 32
    #: CONTINUATION frames in one header block. Go's server (cloudflared) splits header blocks
    #: into 16 KiB frames, so the largest block we take (2 MiB) needs 128.
    max_continuations: int = 128
    #: Control frames we owe the peer (PING and SETTINGS ACKs, RST_STREAM answers) that are
    #: still queued here because the transport is not taking our output.
    max_owed_control: int = 1000


class FrameBudget:
    """The buckets of one connection: :meth:`charge` each metered frame as it arrives."""

    __slots__ = ("_buckets", "limits")

    def __init__(self, limits: FrameLimits | None = None) -> None:
        self.limits = limits = limits or FrameLimits()
        window = limits.window_update
        self._buckets = {
            Flood.PING: TokenBucket(limits.ping.rate, limits.ping.burst),
            Flood.SETTINGS: TokenBucket(limits.settings.rate, limits.settings.burst),
            Flood.WINDOW_UPDATE: TokenBucket(
                window.rate, window.burst, ceiling=window.burst + limits.window_update_ceiling
            ),
            Flood.GLITCH: TokenBucket(
                limits.glitch.rate, limits.glitch.burst, ceiling=limits.glitch_ceiling
            ),
        }

    def charge(self, kind: Flood, now: float | None) -> None:
        """Count one frame of ``kind`` received at ``now``; raise when the peer is flooding.

        ``now`` None: time has not moved since the last call (frames are only counted).
        """
        bucket = self._buckets[kind]
        if not bucket.take(now):
            raise Http2FloodError(f"{kind.value} flood: more than {bucket.burst:.0f} at once")

    def sent_data(self, size: int) -> None:
        """We sent ``size`` bytes of DATA: the peer may credit them back."""
        self._buckets[Flood.WINDOW_UPDATE].give(size * self.limits.window_updates_per_kib / 1024)

    def reset_locally(self) -> None:
        """We reset a stream: the peer's own reset of it may cross ours."""
        self._buckets[Flood.GLITCH].give(1.0)
