"""What a tunnel QUIC connection counts for cloudflared's ``quic_client_*`` metrics.

cloudflared learns them from quic-go's qlog tracer (quic/tracing.go, quic/metrics.go): frames
and bytes of every packet sent and received, packets lost and dropped, RTT and congestion
updates. aioquic's own qlog trace builds a dict for every frame of every packet, far too
costly to leave on. :class:`~adit.protocol.quic_engine.TunnelQuicConnection` instead counts
into the plain integers of :class:`QuicCounters` from a few hooks (no allocation per packet),
and whoever publishes them reads :class:`QuicCounters` and :func:`path_stats` now and then.

Labels are cloudflared's: frame types as quic-go's qlog names them (its ``frameName``: the Go
type without ``Frame``), loss and drop reasons and packet types as qlog spells them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from aioquic.quic.recovery import QuicPacketRecovery

__all__ = [
    "CONGESTION_APPLICATION_LIMITED",
    "CONGESTION_AVOIDANCE",
    "CONGESTION_RECOVERY",
    "CONGESTION_SLOW_START",
    "FRAME_LABELS",
    "FRAME_TYPE_SLOTS",
    "LOSS_REORDERING",
    "LOSS_TIME",
    "PathStats",
    "QuicCounters",
    "congestion_state",
    "frames_by_label",
]

#: Frame type → cloudflared's ``frame_type`` label. PADDING is absent: quic-go skips padding
#: while parsing and never reports it as a frame.
FRAME_LABELS: dict[int, str] = {
    0x01: "Ping",
    0x02: "Ack",
    0x03: "Ack",
    0x04: "ResetStream",
    0x05: "StopSending",
    0x06: "Crypto",
    0x07: "NewToken",
    **dict.fromkeys(range(0x08, 0x10), "Stream"),
    0x10: "MaxData",
    0x11: "MaxStreamData",
    0x12: "MaxStreams",
    0x13: "MaxStreams",
    0x14: "DataBlocked",
    0x15: "StreamDataBlocked",
    0x16: "StreamsBlocked",
    0x17: "StreamsBlocked",
    0x18: "NewConnectionID",
    0x19: "RetireConnectionID",
    0x1A: "PathChallenge",
    0x1B: "PathResponse",
    0x1C: "ConnectionClose",
    0x1D: "ConnectionClose",
    0x1E: "HandshakeDone",
    0x30: "Datagram",
    0x31: "Datagram",
}
#: Length of the per-type count lists: every frame type aioquic knows indexes into them.
FRAME_TYPE_SLOTS = 0x32

#: qlog's loss triggers (quic-go internal/ackhandler detectLostPackets).
LOSS_REORDERING = "reordering_threshold"
LOSS_TIME = "time_threshold"

#: cloudflared's ``quic_client_congestion_state`` values (quic/conversion.go).
CONGESTION_SLOW_START = 0
CONGESTION_AVOIDANCE = 1
CONGESTION_APPLICATION_LIMITED = 2
CONGESTION_RECOVERY = 3
#: quic-go's maxBurstPackets: a window with no more room than this is being used up.
_MAX_BURST_PACKETS = 3


class QuicCounters:
    """Cumulative counts of one QUIC connection (plain integers, bumped in place)."""

    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "dropped",
        "frames_received",
        "frames_sent",
        "last_packet_size",
        "lost",
    )

    def __init__(self) -> None:
        #: Frames by type (an index of :data:`FRAME_TYPE_SLOTS`), each direction.
        self.frames_sent = [0] * FRAME_TYPE_SLOTS
        self.frames_received = [0] * FRAME_TYPE_SLOTS
        #: UDP payload bytes.
        self.bytes_sent = 0
        self.bytes_received = 0
        #: Ack-eliciting packets declared lost, by qlog trigger.
        self.lost = {LOSS_REORDERING: 0, LOSS_TIME: 0}
        #: Bytes of packets dropped on receipt, by (packet type, qlog reason): what cloudflared
        #: adds to ``quic_client_dropped_packets`` (a byte count despite the name). Drops are
        #: rare, so a dict.
        self.dropped: dict[tuple[str, str], int] = {}
        #: Size of the packet being decrypted: a duplicate is found right after.
        self.last_packet_size = 0

    def drop(self, packet_type: str, reason: str, size: int) -> None:
        """A received packet of ``size`` bytes was dropped."""
        key = (packet_type, reason)
        self.dropped[key] = self.dropped.get(key, 0) + size


def frames_by_label(counts: list[int]) -> dict[str, int]:
    """Per-type frame counts summed by cloudflared's label (types never seen left out)."""
    out: dict[str, int] = {}
    for frame_type, label in FRAME_LABELS.items():
        count = counts[frame_type]
        if count:
            out[label] = out.get(label, 0) + count
    return out


class PathStats(NamedTuple):
    """What cloudflared's ``quic_client_*`` gauges show of one connection now."""

    #: The peer's ``max_udp_payload_size`` transport parameter (``None`` before it came).
    max_udp_payload: int | None
    #: RTTs in milliseconds, truncated as Go's ``Duration.Milliseconds`` (``None`` before the
    #: first sample).
    min_rtt_ms: int | None
    latest_rtt_ms: int | None
    smoothed_rtt_ms: int | None
    #: The largest datagram sent (aioquic has no path MTU discovery: the configured size).
    mtu: int
    congestion_window: int
    congestion_state: int


def congestion_state(recovery: QuicPacketRecovery, max_datagram_size: int) -> int:
    """quic-go's congestion state of a connection, from aioquic's controller.

    quic-go's cubic sender (internal/congestion cubic_sender.go): in recovery until a packet
    sent after the loss is acknowledged; else application limited when the window is not
    being used up (``isCwndLimited``), else slow start below ``ssthresh``, else congestion
    avoidance. aioquic's CUBIC keeps the recovery start and the send time of the latest
    acknowledged packet; another controller, without them, never reports recovery.
    """
    control = recovery._cc
    window = control.congestion_window
    in_flight = control.bytes_in_flight
    started = getattr(control, "_congestion_recovery_start_time", 0.0)
    last_acked = getattr(control, "last_ack", math.inf)
    if started and last_acked <= started:
        return CONGESTION_RECOVERY
    slow_start = control.ssthresh is None or window < control.ssthresh
    limited = (
        in_flight >= window
        or (slow_start and in_flight > window // 2)
        or window - in_flight <= _MAX_BURST_PACKETS * max_datagram_size
    )
    if not limited:
        return CONGESTION_APPLICATION_LIMITED
    return CONGESTION_SLOW_START if slow_start else CONGESTION_AVOIDANCE
