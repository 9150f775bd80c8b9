"""Which transport each HA connection dials: cloudflared's protocol selection and fallback.

Sans-IO: dial outcomes go in, the protocol of the next dial and cloudflared's log lines come
out. The worker's connect loop (``adit.workers.runtime``) asks :meth:`ConnectionProtocol.choose`
before each dial and reports what happened with :meth:`ConnectionProtocol.record`. One
:class:`ProtocolSelector` per worker holds the ``--protocol`` setting and which protocol each
connection index last registered with (its own connections', and the other workers' as the
supervisor relays them).

The rules, from cloudflared 2026.8.2 (d1df798; paths relative to its source root):

1. ``--protocol quic`` and ``http2`` (``h2mux`` is http2) are static: no connection ever
   changes protocol (connection/protocol.go:241-250, static selector :109-120).
2. ``auto`` starts with QUIC and can fall back to HTTP/2: QUIC's one fallback is HTTP/2, HTTP/2
   has none (connection/protocol.go:43-53, :251-255).
3. Every connection index keeps its own protocol, retry count and "in fallback" flag for the
   life of the process (supervisor/supervisor.go:39,214-218,235-242; supervisor/tunnel.go:296-313).
   Connections other than 0 start with the protocol connection 0 registered with
   (supervisor/supervisor.go:235-241).
4. Each failed attempt adds one to the retry count, which stops at ``--retries``
   (retry/backoffhandler.go:70-85); a registration zeroes it and ends "in fallback"
   (supervisor/tunnel.go:304-307,715-718).
5. Dial errors (TCP or TLS of HTTP/2, any QUIC dial error) are also counted per index towards
   ``--max-edge-addr-retries``. Only the dial error that finds the count already at that
   maximum (the 9th with the default 8) can change the protocol; it starts the count again.
   Success never resets it (supervisor/tunnel.go:154-176,250-256). Any other failure can
   change the protocol if cloudflared retries it: not after a permanent refusal or a duplicate
   connection (supervisor/tunnel.go:406-433).
6. A failure that can change the protocol does not while some connection's latest
   registration used the selector's current protocol (supervisor/tunnel.go:277-281;
   tunnelstate/conntracker.go:74-85).
7. Otherwise, if the retry count reached ``--retries``, or QUIC looks broken (an idle timeout,
   or "operation not permitted") and there is a fallback, the connection switches to the
   fallback: "Switching to fallback protocol http2", its retry count starts again and it is
   "in fallback". A connection already on the fallback stays. Before that, a broken QUIC logs
   the UDP warning, even when there is no fallback (supervisor/tunnel.go:323-345,356-368).
8. Else a connection not "in fallback" takes the current protocol again: "Changing protocol to
   quic" (supervisor/tunnel.go:346-352).

So a connection that fell back stays on HTTP/2 for as long as it does not register
(cloudflared issue #1534). One that registered over HTTP/2 returns to QUIC at its next failure
that can change the protocol, unless a connection is registered over QUIC by then.

cloudflared's rules count attempts and read no clock. Time comes in where quic-go decides which
timeout ends a handshake, and that decides whether QUIC looks broken:
:func:`quic_handshake_expiry`.

Deliberate differences:

* ``auto`` without ``--token``: cloudflared asks the DNS TXT record
  ``protocol-v2.argotunnel.com`` (percentages against FNV-32a of the account tag; when the
  lookup fails it starts with HTTP/2; connection/protocol.go:181-195,231-239,256). adit's edges
  publish no such record, so ``auto`` is always what cloudflared's token runs get: QUIC, with
  HTTP/2 as the fallback.
* When cloudflared finds no free address to rotate to, it returns before its backoff and
  before the protocol decision (supervisor/tunnel.go:244-248) and dials again at once (the tight
  loop adit does not copy). With as many connections as addresses it would never fall back.
  adit backs off and decides as usual.
* cloudflared's tracker records HTTP/2 (the zero value) for an index that has only registered
  or disconnected (tunnelstate/conntracker.go:51-56). That matters only when the current
  protocol is HTTP/2, which has no fallback, so it is not kept.
"""

from __future__ import annotations

import enum
from typing import Final, NamedTuple

__all__ = [
    "PROTOCOL_SETTINGS",
    "QUIC_HANDSHAKE_IDLE_TIMEOUT",
    "QUIC_HANDSHAKE_TIMEOUT",
    "QUIC_MAX_IDLE_TIMEOUT",
    "UDP_BLOCKED_WARNING",
    "Choice",
    "ChoiceState",
    "ConnectionProtocol",
    "Outcome",
    "Protocol",
    "ProtocolChoiceError",
    "ProtocolSelector",
    "Verdict",
    "quic_handshake_deadline",
    "quic_handshake_expiry",
]

#: What ``WorkerSettings.protocol`` may hold (``h2mux`` is mapped to http2 by the CLI).
PROTOCOL_SETTINGS: Final = ("auto", "quic", "http2")

#: quic-go ends a handshake that heard nothing this long with an ``IdleTimeoutError``
#: (cloudflared's ``HandshakeIdleTimeout``, quic/constants.go:6).
QUIC_HANDSHAKE_IDLE_TIMEOUT: Final = 5.0
#: ... and one that has not completed this long after it began with a
#: ``HandshakeTimeoutError``: twice the idle timeout (vendored quic-go config.go:17-19).
QUIC_HANDSHAKE_TIMEOUT: Final = 2 * QUIC_HANDSHAKE_IDLE_TIMEOUT
#: An established connection that heard nothing this long ends with an ``IdleTimeoutError``
#: (quic/constants.go:7).
QUIC_MAX_IDLE_TIMEOUT: Final = 5.0

#: cloudflared's warning when QUIC looks broken (supervisor/tunnel.go:328-333), in adit's terms.
UDP_BLOCKED_WARNING: Final = (
    "If this log occurs persistently, and adit is unable to connect to the edge with `quic` "
    "protocol, then most likely your machine/network is getting its egress UDP to port 7844 "
    "(or others) blocked or dropped. Make sure to allow egress UDP to the edge's addresses. "
    "If you are using private routing to this Tunnel, then ICMP, UDP (and Private DNS "
    "Resolution) will not work unless adit can connect to the edge with `quic`."
)


class Protocol(enum.Enum):
    """A transport to the edge; the value is how cloudflared spells it in logs and flags."""

    QUIC = "quic"
    HTTP2 = "http2"

    @property
    def fallback(self) -> Protocol | None:
        """The protocol to fall back to, if any (connection/protocol.go:43-53)."""
        return Protocol.HTTP2 if self is Protocol.QUIC else None

    @property
    def server_name(self) -> str:
        """The SNI cloudflared sends for this transport (connection/protocol.go:18-21,66-80)."""
        return "quic.cftunnel.com" if self is Protocol.QUIC else "h2.cftunnel.com"


class Outcome(enum.Enum):
    """How one attempt of a connection ended, in the classes cloudflared's rules tell apart.

    Dial errors (rule 5) are ``DIAL_FAILED``, ``QUIC_HANDSHAKE_IDLE`` and
    ``QUIC_DIAL_NOT_PERMITTED``; the four ``QUIC_*`` outcomes are what ``isQuicBroken``
    accepts (supervisor/tunnel.go:356-368).
    """

    #: ``registerConnection`` succeeded.
    REGISTERED = "registered"
    #: TCP connect or TLS handshake of HTTP/2 failed (``edgediscovery.DialError``), or a QUIC
    #: dial failed otherwise than below: a TLS alert, version negotiation, a handshake still
    #: incomplete after :data:`QUIC_HANDSHAKE_TIMEOUT` though packets came back, a socket
    #: error. cloudflared wraps every QUIC dial error in ``EdgeQuicDialError``
    #: (connection/quic.go:39-44).
    DIAL_FAILED = "dial failed"
    #: A QUIC handshake heard nothing for :data:`QUIC_HANDSHAKE_IDLE_TIMEOUT`: UDP is dropped
    #: on the way. Also what an ICMP unreachable for adit's (connected) UDP socket counts as:
    #: cloudflared's socket is not connected, never learns of the ICMP, and ends this way.
    QUIC_HANDSHAKE_IDLE = "quic handshake idle timeout"
    #: A QUIC dial failed with a ``TransportError`` saying "operation not permitted" (a local
    #: firewall refusing UDP). Reading of quic-go v0.59.1: a send error ends the connection
    #: with the raw socket error (connection.go ``destroyImpl``, immediate close), not a
    #: ``TransportError``, so cloudflared would count that one as ``DIAL_FAILED``.
    QUIC_DIAL_NOT_PERMITTED = "quic dial not permitted"
    #: An established QUIC connection heard nothing for :data:`QUIC_MAX_IDLE_TIMEOUT`
    #: (before or after it registered).
    QUIC_IDLE_TIMEOUT = "quic idle timeout"
    #: An established QUIC connection ended with "operation not permitted".
    QUIC_NOT_PERMITTED = "quic not permitted"
    #: Any other failure cloudflared retries: a retryable refusal, a registration that did not
    #: complete, a registered connection that was lost, a UDP socket that could not be opened
    #: (not a dial error for cloudflared: connection/quic.go:34-37).
    FAILED = "failed"
    #: The edge refused the registration for good (``ServerRegisterTunnelError.Permanent``).
    REFUSED_FOR_GOOD = "refused for good"
    #: The edge has this connection index already (``EDUPCONN``).
    DUPLICATE = "duplicate connection"


class _Class(NamedTuple):
    dial_error: bool
    #: Can change the protocol (not a dial error): cloudflared's "recoverable".
    recoverable: bool
    quic_broken: bool


_CLASSES: Final = {
    Outcome.DIAL_FAILED: _Class(dial_error=True, recoverable=False, quic_broken=False),
    Outcome.QUIC_HANDSHAKE_IDLE: _Class(dial_error=True, recoverable=False, quic_broken=True),
    Outcome.QUIC_DIAL_NOT_PERMITTED: _Class(dial_error=True, recoverable=False, quic_broken=True),
    Outcome.QUIC_IDLE_TIMEOUT: _Class(dial_error=False, recoverable=True, quic_broken=True),
    Outcome.QUIC_NOT_PERMITTED: _Class(dial_error=False, recoverable=True, quic_broken=True),
    Outcome.FAILED: _Class(dial_error=False, recoverable=True, quic_broken=False),
    Outcome.REFUSED_FOR_GOOD: _Class(dial_error=False, recoverable=False, quic_broken=False),
    Outcome.DUPLICATE: _Class(dial_error=False, recoverable=False, quic_broken=False),
}


class ChoiceState(enum.Enum):
    """Where one connection index stands (cloudflared's ``protocolFallback``)."""

    #: ``--protocol quic`` or ``http2``: nothing changes.
    STATIC = "static"
    #: On the selector's current protocol (QUIC under ``auto``).
    PREFERRED = "preferred"
    #: Switched to the fallback and not registered since ("in fallback").
    FELL_BACK = "fell back"
    #: On the fallback and not "in fallback": registered over it, or started on it because
    #: connection 0 had registered over it.
    SETTLED = "settled on fallback"


class Verdict(enum.Enum):
    """What an outcome amounts to, once cloudflared's guards were applied (the table's input)."""

    REGISTERED = "registered"
    #: A failure that cannot change the protocol (rules 5 and 6).
    KEEP = "keep"
    #: Retries reached ``--retries``, or QUIC looks broken with a fallback to go to (rule 7).
    FALL_BACK = "fall back"
    #: Any other failure: take the current protocol unless in fallback (rule 8).
    RECONSIDER = "reconsider"


class _Move(enum.Enum):
    STAY = "stay"
    TO_FALLBACK = "to fallback"
    TO_CURRENT = "to current"


#: (state, verdict) -> (move, next state). Complete: every pair is here.
_TRANSITIONS: Final = {
    (ChoiceState.STATIC, Verdict.REGISTERED): (_Move.STAY, ChoiceState.STATIC),
    (ChoiceState.STATIC, Verdict.KEEP): (_Move.STAY, ChoiceState.STATIC),
    (ChoiceState.STATIC, Verdict.FALL_BACK): (_Move.STAY, ChoiceState.STATIC),
    (ChoiceState.STATIC, Verdict.RECONSIDER): (_Move.STAY, ChoiceState.STATIC),
    (ChoiceState.PREFERRED, Verdict.REGISTERED): (_Move.STAY, ChoiceState.PREFERRED),
    (ChoiceState.PREFERRED, Verdict.KEEP): (_Move.STAY, ChoiceState.PREFERRED),
    (ChoiceState.PREFERRED, Verdict.FALL_BACK): (_Move.TO_FALLBACK, ChoiceState.FELL_BACK),
    (ChoiceState.PREFERRED, Verdict.RECONSIDER): (_Move.STAY, ChoiceState.PREFERRED),
    (ChoiceState.FELL_BACK, Verdict.REGISTERED): (_Move.STAY, ChoiceState.SETTLED),
    (ChoiceState.FELL_BACK, Verdict.KEEP): (_Move.STAY, ChoiceState.FELL_BACK),
    # Already on the fallback: "no point to retry" (supervisor/tunnel.go:340-343).
    (ChoiceState.FELL_BACK, Verdict.FALL_BACK): (_Move.STAY, ChoiceState.FELL_BACK),
    (ChoiceState.FELL_BACK, Verdict.RECONSIDER): (_Move.STAY, ChoiceState.FELL_BACK),
    (ChoiceState.SETTLED, Verdict.REGISTERED): (_Move.STAY, ChoiceState.SETTLED),
    (ChoiceState.SETTLED, Verdict.KEEP): (_Move.STAY, ChoiceState.SETTLED),
    (ChoiceState.SETTLED, Verdict.FALL_BACK): (_Move.STAY, ChoiceState.SETTLED),
    (ChoiceState.SETTLED, Verdict.RECONSIDER): (_Move.TO_CURRENT, ChoiceState.PREFERRED),
}


class ProtocolChoiceError(Exception):
    """A (state, verdict) pair the table does not have: a bug in this module."""


class Choice(NamedTuple):
    """The protocol of the next dial, and what to log about it."""

    protocol: Protocol
    #: cloudflared's info line when the protocol changed ("Switching to fallback protocol
    #: http2", "Changing protocol to quic"), else ``None``.
    reason: str | None = None
    #: :data:`UDP_BLOCKED_WARNING` when QUIC looked broken (a warning), else ``None``.
    warning: str | None = None


class ProtocolSelector:
    """One worker's ``--protocol``: the current protocol, its fallback, who registered how.

    ``setting`` is ``auto``, ``quic`` or ``http2``. ``retries`` and
    ``max_edge_addr_retries`` are cloudflared's ``--retries`` and ``--max-edge-addr-retries``.
    """

    def __init__(
        self,
        setting: str,
        *,
        retries: int = 5,
        max_edge_addr_retries: int = 8,
    ) -> None:
        if setting not in PROTOCOL_SETTINGS:
            raise ValueError(f"unknown protocol setting {setting!r}")
        self.current = Protocol.HTTP2 if setting == "http2" else Protocol.QUIC
        #: ``None``: static (rule 1).
        self.fallback = self.current.fallback if setting == "auto" else None
        self.retries = max(0, retries)
        self.max_edge_addr_retries = max(0, max_edge_addr_retries)
        #: The protocol of each connection index's latest registration (rule 6).
        self._registered: dict[int, Protocol] = {}

    def registered(self, conn_index: int, protocol: Protocol) -> None:
        """Connection ``conn_index`` (of this worker or another) registered over ``protocol``."""
        self._registered[conn_index] = protocol

    def has_connected_with(self, protocol: Protocol) -> bool:
        """Some connection's latest registration used ``protocol`` (cloudflared's tracker)."""
        return protocol in self._registered.values()

    def registered_with(self, conn_index: int) -> Protocol | None:
        """The protocol of ``conn_index``'s latest registration, if it registered."""
        return self._registered.get(conn_index)

    def connection(self, conn_index: int) -> ConnectionProtocol:
        """A fresh per-index state for ``conn_index``."""
        return ConnectionProtocol(self, conn_index)


class _Pending(NamedTuple):
    """A failure recorded, waiting for the next :meth:`ConnectionProtocol.choose`."""

    can_change: bool
    quic_broken: bool


class ConnectionProtocol:
    """The protocol of one connection index and the counts cloudflared keeps for it.

    :meth:`record` counts at once, as cloudflared does when the attempt ends. The decision
    waits for :meth:`choose`, as cloudflared's waits for the end of the backoff: a connection
    that registers meanwhile elsewhere is taken into account (rule 6). Only the latest failure
    since the last :meth:`choose` is decided on.
    """

    def __init__(self, selector: ProtocolSelector, conn_index: int) -> None:
        self.selector = selector
        self.conn_index = conn_index
        self.protocol = selector.current
        self.state = ChoiceState.STATIC if selector.fallback is None else ChoiceState.PREFERRED
        #: Failed attempts since the last registration or switch, at most ``--retries``.
        self.retries = 0
        #: Dial errors towards ``--max-edge-addr-retries`` (never reset by success).
        self.dial_errors = 0
        #: When the protocol last changed (``now`` of that :meth:`choose`); ``None``: never.
        self.changed_at: float | None = None
        self._pending: _Pending | None = None
        self._started = False

    def choose(self, now: float) -> Choice:
        """The protocol to dial now, deciding on the failure recorded last (if any)."""
        self._start()
        pending, self._pending = self._pending, None
        if pending is None:
            return Choice(self.protocol)
        verdict, warning = self._verdict(pending)
        reason = self._apply(verdict)
        if reason is not None:
            self.changed_at = now
        return Choice(self.protocol, reason, warning)

    def record(self, outcome: Outcome) -> None:
        """Count how the attempt ended (see :class:`Outcome`); a registration is also noted
        in the selector (rule 6)."""
        self._start()
        if outcome is Outcome.REGISTERED:
            self._pending = None
            self._apply(Verdict.REGISTERED)
            self.retries = 0
            self.selector.registered(self.conn_index, self.protocol)
            return
        kind = _CLASSES[outcome]
        can_change = self._count_dial_error() if kind.dial_error else kind.recoverable
        # Every failed attempt goes through the backoff, which counts it up to --retries.
        self.retries = min(self.retries + 1, self.selector.retries)
        self._pending = _Pending(can_change, kind.quic_broken)

    def _start(self) -> None:
        """Take connection 0's protocol on first use: cloudflared starts connections 1.. once
        connection 0 registered, with its protocol and not "in fallback"
        (supervisor/supervisor.go:235-241)."""
        if self._started:
            return
        self._started = True
        if self.conn_index == 0 or self.state is ChoiceState.STATIC:
            return
        first = self.selector.registered_with(0)
        if first is not None and first is self.selector.fallback:
            self.protocol = first
            self.state = ChoiceState.SETTLED

    def _count_dial_error(self) -> bool:
        """cloudflared's per-index address-retry count: true on the dial error that finds it
        at the maximum (which starts it again)."""
        if self.dial_errors >= self.selector.max_edge_addr_retries:
            self.dial_errors = 0
            return True
        self.dial_errors += 1
        return False

    def _verdict(self, pending: _Pending) -> tuple[Verdict, str | None]:
        selector = self.selector
        if not pending.can_change or selector.has_connected_with(selector.current):
            return Verdict.KEEP, None
        broken = pending.quic_broken
        if self.retries >= selector.retries or (selector.fallback is not None and broken):
            return Verdict.FALL_BACK, UDP_BLOCKED_WARNING if broken else None
        return Verdict.RECONSIDER, None

    def _apply(self, verdict: Verdict) -> str | None:
        """Move along the table; cloudflared's log line when the protocol changed."""
        try:
            move, self.state = _TRANSITIONS[(self.state, verdict)]
        except KeyError:
            raise ProtocolChoiceError(f"no transition from {self.state} on {verdict}") from None
        if move is _Move.TO_FALLBACK:
            fallback = self.selector.fallback
            assert fallback is not None  # only PREFERRED moves there, and only under auto
            self.protocol = fallback
            self.retries = 0
            return f"Switching to fallback protocol {fallback.value}"
        if move is _Move.TO_CURRENT:
            self.protocol = self.selector.current
            return f"Changing protocol to {self.protocol.value}"
        return None


def quic_handshake_deadline(started: float, idle_since: float) -> float:
    """When a QUIC handshake still running ends by timeout (see :func:`quic_handshake_expiry`)."""
    return min(started + QUIC_HANDSHAKE_TIMEOUT, idle_since + QUIC_HANDSHAKE_IDLE_TIMEOUT)


def quic_handshake_expiry(started: float, idle_since: float, now: float) -> Outcome | None:
    """Which of quic-go's timeouts ends a handshake that is still running at ``now``.

    ``started`` is when the dial began. ``idle_since`` is quic-go's idle start: the latest of
    the last packet received and the first ack-eliciting packet sent after it (``started``
    when nothing came back; connection.go:918-923). The total budget is checked first
    (connection.go:703-712): it is a plain dial error, while silence means UDP is dropped
    (:attr:`Outcome.QUIC_HANDSHAKE_IDLE`). ``None``: neither has expired.
    """
    if now - started >= QUIC_HANDSHAKE_TIMEOUT:
        return Outcome.DIAL_FAILED
    if now - idle_since >= QUIC_HANDSHAKE_IDLE_TIMEOUT:
        return Outcome.QUIC_HANDSHAKE_IDLE
    return None
