"""One Cap'n Proto RPC exchange per QUIC stream, both ways (PROTOCOL.md §5.6, §6.1).

cloudflared gives each RPC its own short stream: the caller opens it, writes the RPC preamble
and its calls, reads the answer and closes; the callee serves what arrives for at most
``--rpc-timeout`` (5 s) from the stream's start, then closes whatever is in flight
(tunnelrpc/quic/cloudflared_server.go ``handleRPC``, session_server.go ``Serve``). The edge
calls the connector's ``CloudflaredServer`` (``registerUdpSession``, ``unregisterUdpSession``);
the connector calls the edge's ``SessionManager`` (``unregisterUdpSession``). The sessions are
the sans-IO ones of :mod:`adit.protocol.quic_rpc`; this module runs them on a
:class:`~adit.tunnelio.StreamChannel`.

Every wait here is bounded by the timeout, and a stream is never left open: once the exchange
is over (answered, aborted, timed out) our side sends ``Abort`` and FIN, and what the peer
still sends is read (and so credited to QUIC's flow control) until it ends too, or the stream
is reset when it does not within the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from adit.protocol.errors import RpcProtocolError
from adit.protocol.rpc_events import RpcAborted
from adit.quicio import QuicIO
from adit.tunnelio import StreamChannel, StreamClosedError

__all__ = ["RPC_TIMEOUT", "RpcSession", "RpcStreamFailed", "call_on_new_stream", "serve_stream"]

#: cloudflared's ``--rpc-timeout``: how long one RPC stream may take, either side.
RPC_TIMEOUT = 5.0

# Streams whose exchange is over and whose peer is still to end them: referenced here so that
# their closing tasks are not collected mid-way (each ends within its timeout).
_closing: set[asyncio.Task[None]] = set()


class RpcSession(Protocol):
    """What both kinds of sans-IO RPC session offer (client and server)."""

    @property
    def closed(self) -> bool: ...
    def receive_data(self, data: bytes) -> Sequence[object]: ...
    def data_to_send(self) -> bytes: ...
    def close(self) -> None: ...


class RpcStreamFailed(Exception):
    """The exchange ended without an answer to our call; the message says how."""


def _send(channel: StreamChannel, data: bytes) -> None:
    """Queue ``data`` on the stream now (RPC messages are small: no waiting for room)."""
    io = channel.io
    if not data or channel.local_ended or channel.reset_code is not None or io.closed:
        return
    with contextlib.suppress(Exception):
        io.conn.send_data(channel.stream_id, data)
        io.flush()


async def call_on_new_stream(
    io: QuicIO,
    session: RpcSession,
    question_id: int,
    *,
    within: float = RPC_TIMEOUT,
) -> object:
    """Open an RPC stream carrying the calls queued in ``session`` and return the event that
    answers ``question_id`` (results or ``CallFailed``).

    Raises :class:`RpcStreamFailed` when the peer ends or aborts the exchange first, breaks
    the protocol, the connection goes, or ``within`` seconds pass. The stream is closed either way.
    """
    try:
        channel = io.open_rpc_stream(session.data_to_send())
    except StreamClosedError as exc:
        raise RpcStreamFailed(str(exc)) from None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    try:
        async with asyncio.timeout_at(deadline):
            while data := await channel.read():
                for event in session.receive_data(data):
                    if isinstance(event, RpcAborted):
                        raise RpcStreamFailed(f"the peer aborted the RPC: {event.reason}")
                    if getattr(event, "question_id", None) == question_id:
                        return event
                _send(channel, session.data_to_send())
            raise RpcStreamFailed("the peer ended the RPC stream without answering")
    except TimeoutError:
        raise RpcStreamFailed(f"no answer within {within:g}s") from None
    except StreamClosedError as exc:
        raise RpcStreamFailed(f"the RPC stream closed: {exc}") from None
    except RpcProtocolError as exc:
        raise RpcStreamFailed(f"the peer broke the RPC protocol: {exc}") from None
    finally:
        _finish(session, channel, deadline)


async def serve_stream(
    channel: StreamChannel,
    session: RpcSession,
    handle: Callable[[object], Awaitable[None]],
    *,
    within: float = RPC_TIMEOUT,
) -> None:
    """Serve the RPC connection on a stream the peer opened: every call it makes is given
    to ``handle`` (which answers it on ``session``), for at most ``within`` seconds from now, as
    cloudflared's servers do; then the connection and the stream are closed."""
    deadline = asyncio.get_running_loop().time() + within
    try:
        async with asyncio.timeout_at(deadline):
            while not session.closed and (data := await channel.read()):
                for event in session.receive_data(data):
                    if isinstance(event, RpcAborted):
                        break
                    await handle(event)
                _send(channel, session.data_to_send())
    except (TimeoutError, StreamClosedError):
        pass
    except RpcProtocolError:
        pass  # the session queued an Abort saying why: _finish sends it
    finally:
        _finish(session, channel, deadline)


def _finish(session: RpcSession, channel: StreamChannel, deadline: float) -> None:
    """Abort the RPC connection (if not over), end our side, and let the peer end its side
    until ``deadline`` (plus a grace of :data:`RPC_TIMEOUT` when the exchange ended early)."""
    session.close()
    _send(channel, session.data_to_send())
    if channel.reset_code is not None or channel.io.closed:
        return
    channel.end()
    if channel.remote_ended:
        channel.io.release(channel)  # what arrived after the answer, unread
        channel.io.forget(channel)
        return
    loop = asyncio.get_running_loop()
    task = loop.create_task(_await_peer_end(channel, max(deadline, loop.time() + RPC_TIMEOUT)))
    _closing.add(task)
    task.add_done_callback(_closing.discard)


async def _await_peer_end(channel: StreamChannel, deadline: float) -> None:
    """Read (and so credit) what the peer still sends until it ends the stream; reset it at
    ``deadline``."""
    try:
        async with asyncio.timeout_at(deadline):
            while await channel.read():
                pass
    except (TimeoutError, StreamClosedError):
        channel.reset()
    channel.io.forget(channel)
