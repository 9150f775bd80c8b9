"""The clients of the QUIC transport's short RPC streams (PROTOCOL.md §5.6, §6.1).

After the 6-byte RPC signature (``52 BB 82 5C DB 65``, written by the stream layer, not here) an
RPC stream carries one Cap'n Proto RPC connection:

* :class:`CloudflaredClientSession` — the edge calls the connector's ``CloudflaredServer`` on a
  stream it opened: ``registerUdpSession``, ``unregisterUdpSession``, ``updateConfiguration``
  (cloudflared's own client of it: tunnelrpc/quic/cloudflared_client.go).
* :class:`SessionManagerClientSession` — the connector calls the edge's ``SessionManager``, as
  cloudflared does with ``unregisterUdpSession`` when a datagram v2 UDP session ends
  (tunnelrpc/quic/session_client.go, connection/quic_datagram_v2.go ``closeUDPSession``).

Both are :class:`~adit.protocol.rpc_client.CapabilityClientSession` s, so they speak as
go-capnproto2 does: ``Bootstrap`` and the first call pipelined on it at once, a Finish for every
Return, ``Release`` and ``Abort("rpc: shutdown")`` on :meth:`close`. One stream is meant for one
exchange: the caller closes the session (and the stream) once its answer arrived.

Each call returns its question id; its answer comes back as :class:`UdpSessionRegistered`,
:class:`ConfigurationUpdated` or :class:`~adit.protocol.rpc_events.CallReturned` (a method without
results), or :class:`~adit.protocol.rpc_events.CallFailed` for an RPC exception.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from adit.protocol.framing import DEFAULT_MAX_MESSAGE_SIZE
from adit.protocol.quic_rpc_codec import (
    CONFIGURATION_MANAGER_INTERFACE_ID,
    REGISTER_UDP_SESSION,
    SESSION_MANAGER_INTERFACE_ID,
    UNREGISTER_UDP_SESSION,
    UPDATE_CONFIGURATION,
    IPAddress,
    RegisterUdpSessionParams,
    UnregisterUdpSessionParams,
    UpdateConfigurationParams,
    build_register_udp_session_params,
    build_unregister_udp_session_params,
    build_update_configuration_params,
    decode_register_udp_session_results,
    decode_update_configuration_results,
    register_udp_session_results_schema,
    update_configuration_results_schema,
)
from adit.protocol.quic_rpc_events import (
    CloudflaredClientEvent,
    ConfigurationUpdated,
    SessionManagerClientEvent,
    UdpSessionRegistered,
)
from adit.protocol.rpc_client import CapabilityClientSession
from adit.protocol.rpc_events import CallFailed, CallReturned
from adit.protocol.rpc_messages import encode_call, read_content
from adit.protocol.rpc_targets import CallTarget

__all__ = ["CloudflaredClientSession", "SessionManagerClientSession"]

E = TypeVar("E")


class _Method(enum.Enum):
    REGISTER_UDP = (SESSION_MANAGER_INTERFACE_ID, REGISTER_UDP_SESSION)
    UNREGISTER_UDP = (SESSION_MANAGER_INTERFACE_ID, UNREGISTER_UDP_SESSION)
    UPDATE_CONFIGURATION = (CONFIGURATION_MANAGER_INTERFACE_ID, UPDATE_CONFIGURATION)


# The event a Return becomes: (question id, failure or None, the Return message) -> event.
_ResultEvent = Callable[[int, str | None, bytes], E]


def _udp_session_registered(
    question_id: int, failure: str | None, raw: bytes
) -> UdpSessionRegistered | CallFailed:
    if failure is not None:
        return CallFailed(question_id=question_id, reason=failure)
    response = read_content(
        raw, register_udp_session_results_schema, decode_register_udp_session_results
    )
    return UdpSessionRegistered(question_id=question_id, error=response.error, spans=response.spans)


def _call_returned(question_id: int, failure: str | None, raw: bytes) -> CallReturned | CallFailed:
    if failure is not None:
        return CallFailed(question_id=question_id, reason=failure)
    return CallReturned(question_id=question_id)


def _configuration_updated(
    question_id: int, failure: str | None, raw: bytes
) -> ConfigurationUpdated | CallFailed:
    if failure is not None:
        return CallFailed(question_id=question_id, reason=failure)
    response = read_content(
        raw, update_configuration_results_schema, decode_update_configuration_results
    )
    return ConfigurationUpdated(
        question_id=question_id,
        latest_applied_version=response.latest_applied_version,
        error=response.error,
    )


_SESSION_MANAGER_RESULTS: Mapping[_Method, _ResultEvent[SessionManagerClientEvent]] = {
    _Method.REGISTER_UDP: _udp_session_registered,
    _Method.UNREGISTER_UDP: _call_returned,
}
_CLOUDFLARED_SERVER_RESULTS: Mapping[_Method, _ResultEvent[CloudflaredClientEvent]] = {
    **_SESSION_MANAGER_RESULTS,
    _Method.UPDATE_CONFIGURATION: _configuration_updated,
}


class _SessionManagerCalls(CapabilityClientSession[_Method, E]):
    """The ``SessionManager`` calls both clients make; ``results`` maps each method the
    peer's capability has to the event its Return becomes."""

    def __init__(
        self, results: Mapping[_Method, _ResultEvent[E]], *, max_message_size: int
    ) -> None:
        super().__init__(max_message_size=max_message_size)
        self._results = results

    def register_udp_session(
        self,
        session_id: uuid.UUID,
        dst_ip: IPAddress,
        dst_port: int,
        close_after_idle: float,
        trace_context: str = "",
    ) -> int:
        """Call ``registerUdpSession``; return the question id of the call.

        ``close_after_idle`` is in seconds (0: the connector's default); the answer arrives as
        :class:`UdpSessionRegistered` (or :class:`CallFailed`).
        """
        params = RegisterUdpSessionParams(
            session_id=session_id,
            dst_ip=dst_ip,
            dst_port=dst_port,
            close_after_idle=close_after_idle,
            trace_context=trace_context,
        )
        return self._call_method(_Method.REGISTER_UDP, build_register_udp_session_params(params))

    def unregister_udp_session(self, session_id: uuid.UUID, message: str) -> int:
        """Call ``unregisterUdpSession``; return the question id of the call.

        The answer arrives as :class:`CallReturned` (or :class:`CallFailed`).
        """
        params = UnregisterUdpSessionParams(session_id=session_id, message=message)
        return self._call_method(
            _Method.UNREGISTER_UDP, build_unregister_udp_session_params(params)
        )

    def _call_method(self, method: _Method, params: Any) -> int:
        """Queue a call of ``method`` with ``params`` (a struct builder, built before: a value
        it refuses leaves the session as it was)."""
        interface_id, method_id = method.value

        def encode(question_id: int, target: CallTarget) -> bytes:
            return encode_call(question_id, target, interface_id, method_id, params)

        return self._call(method, encode)

    def _returned(
        self, question_id: int, kind: _Method, failure: str | None, raw: bytes
    ) -> list[E]:
        return [self._results[kind](question_id, failure, raw)]


class SessionManagerClientSession(_SessionManagerCalls[SessionManagerClientEvent]):
    """The connector's RPC client on a stream it opened to the edge's ``SessionManager``."""

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        super().__init__(_SESSION_MANAGER_RESULTS, max_message_size=max_message_size)


class CloudflaredClientSession(_SessionManagerCalls[CloudflaredClientEvent]):
    """The edge's RPC client on a stream it opened to the connector's ``CloudflaredServer``."""

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        super().__init__(_CLOUDFLARED_SERVER_RESULTS, max_message_size=max_message_size)

    def update_configuration(self, version: int, config: bytes) -> int:
        """Call ``updateConfiguration(version, config)``; return the question id of the call.

        The answer arrives as :class:`ConfigurationUpdated` (or :class:`CallFailed`).
        """
        params = UpdateConfigurationParams(version=version, config=config)
        return self._call_method(
            _Method.UPDATE_CONFIGURATION, build_update_configuration_params(params)
        )
