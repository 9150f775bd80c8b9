"""The servers of the QUIC transport's short RPC streams (PROTOCOL.md §5.6, §6.1).

After the 6-byte RPC signature (``52 BB 82 5C DB 65``, read and written by the stream layer, not
here) an RPC stream carries one Cap'n Proto RPC connection, usually for one call:

* :class:`CloudflaredServerSession` — the connector's side of a stream the edge opened: it serves
  cloudflared's ``CloudflaredServer`` bootstrap (``SessionManager`` + ``ConfigurationManager``,
  tunnelrpc/quic/cloudflared_server.go). cloudflared closes such a connection ``--rpc-timeout``
  (5 s) after the stream opened, whatever is in flight; the caller does that with ``close()``.
* :class:`SessionManagerServerSession` — the edge's side of a stream the connector opened to call
  ``unregisterUdpSession`` when a datagram v2 UDP session ends (connection/quic_datagram_v2.go
  ``closeUDPSession``).

Both are :class:`~adit.protocol.rpc_server.CapabilityServerSession` s: Bootstrap, pipelined calls,
Finish, Release and Abort work as on the control stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adit.protocol.framing import DEFAULT_MAX_MESSAGE_SIZE
from adit.protocol.quic_rpc_codec import (
    CONFIGURATION_MANAGER_INTERFACE_ID,
    REGISTER_UDP_SESSION,
    SESSION_MANAGER_INTERFACE_ID,
    UNREGISTER_UDP_SESSION,
    UPDATE_CONFIGURATION,
    RegisterUdpSessionResponse,
    UpdateConfigurationResponse,
    build_register_udp_session_results,
    build_update_configuration_results,
    decode_register_udp_session_params,
    decode_unregister_udp_session_params,
    decode_update_configuration_params,
    register_udp_session_params_schema,
    unregister_udp_session_params_schema,
    update_configuration_params_schema,
)
from adit.protocol.quic_rpc_events import (
    CloudflaredServerEvent,
    RegisterUdpSessionCalled,
    SessionManagerServerEvent,
    UnregisterUdpSessionCalled,
    UpdateConfigurationCalled,
)
from adit.protocol.rpc_messages import ExceptionType
from adit.protocol.rpc_server import CapabilityServerSession, MethodKey, ServedMethod

__all__ = ["CloudflaredServerSession", "SessionManagerServerSession"]

_REGISTER_UDP = (SESSION_MANAGER_INTERFACE_ID, REGISTER_UDP_SESSION)
_UNREGISTER_UDP = (SESSION_MANAGER_INTERFACE_ID, UNREGISTER_UDP_SESSION)
_UPDATE_CONFIGURATION = (CONFIGURATION_MANAGER_INTERFACE_ID, UPDATE_CONFIGURATION)


def _register_udp_called(answer_id: int, reader: Any) -> RegisterUdpSessionCalled:
    params = decode_register_udp_session_params(reader)
    return RegisterUdpSessionCalled(
        answer_id=answer_id,
        session_id=params.session_id,
        dst_ip=params.dst_ip,
        dst_port=params.dst_port,
        close_after_idle=params.close_after_idle,
        trace_context=params.trace_context,
    )


def _unregister_udp_called(answer_id: int, reader: Any) -> UnregisterUdpSessionCalled:
    params = decode_unregister_udp_session_params(reader)
    return UnregisterUdpSessionCalled(
        answer_id=answer_id, session_id=params.session_id, message=params.message
    )


def _update_configuration_called(answer_id: int, reader: Any) -> UpdateConfigurationCalled:
    params = decode_update_configuration_params(reader)
    return UpdateConfigurationCalled(
        answer_id=answer_id, version=params.version, config=params.config
    )


_CLOUDFLARED_SERVER_METHODS: Mapping[MethodKey, ServedMethod[CloudflaredServerEvent]] = {
    _REGISTER_UDP: ServedMethod(register_udp_session_params_schema, _register_udp_called),
    _UNREGISTER_UDP: ServedMethod(
        unregister_udp_session_params_schema, _unregister_udp_called, empty_results=True
    ),
    _UPDATE_CONFIGURATION: ServedMethod(
        update_configuration_params_schema, _update_configuration_called
    ),
}

_SESSION_MANAGER_METHODS: Mapping[MethodKey, ServedMethod[SessionManagerServerEvent]] = {
    _UNREGISTER_UDP: ServedMethod(
        unregister_udp_session_params_schema, _unregister_udp_called, empty_results=True
    ),
}


class CloudflaredServerSession(CapabilityServerSession[CloudflaredServerEvent]):
    """The connector's RPC server on one edge-opened RPC stream, serving ``CloudflaredServer``.

    Answer :class:`RegisterUdpSessionCalled` with :meth:`answer_register_udp`,
    :class:`UpdateConfigurationCalled` with :meth:`answer_update_configuration` and
    :class:`UnregisterUdpSessionCalled` with ``answer_empty``; ``answer_exception`` fails any.
    """

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        super().__init__(_CLOUDFLARED_SERVER_METHODS, max_message_size=max_message_size)

    def answer_register_udp(self, answer_id: int, error: str = "", spans: bytes = b"") -> None:
        """Return ``registerUdpSession``'s result: ``error`` is empty when the session is up.

        cloudflared reports a session it could not start (too many flows, no origin socket) this
        way, not as an RPC exception (tunnelrpc/pogs/session_manager.go); ``spans`` are sent only
        with no error.
        """
        response = RegisterUdpSessionResponse(error=error or None, spans=spans)
        self._answer_results(
            answer_id, {_REGISTER_UDP}, build_register_udp_session_results(response)
        )

    def answer_update_configuration(
        self, answer_id: int, latest_applied_version: int, error: str | None = None
    ) -> None:
        """Return ``updateConfiguration``'s result: the version in force and, if the pushed one
        was not applied, why (cloudflared keeps its previous configuration then)."""
        response = UpdateConfigurationResponse(
            latest_applied_version=latest_applied_version, error=error or None
        )
        self._answer_results(
            answer_id, {_UPDATE_CONFIGURATION}, build_update_configuration_results(response)
        )

    def _not_implemented(self, interface_id: int, method_id: int) -> tuple[str, ExceptionType]:
        # cloudflared's go-capnproto2 server answers a method it lacks with MethodError{method,
        # ErrUnimplemented} (vendor/zombiezen.com/go/capnproto2/server/server.go Call), named by
        # ids as Method.String does and sent as a "failed" exception, the type toException gives
        # every Go error (capability.go, rpc/errors.go).
        reason = f"@0x{interface_id:x}.@{method_id}: capnp: method not implemented"
        return reason, "failed"


class SessionManagerServerSession(CapabilityServerSession[SessionManagerServerEvent]):
    """The edge's RPC server on one connector-opened RPC stream, serving ``SessionManager``.

    Only ``unregisterUdpSession`` is served (the edge starts UDP sessions, it does not proxy
    them): answer :class:`UnregisterUdpSessionCalled` with ``answer_empty``.
    """

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        super().__init__(_SESSION_MANAGER_METHODS, max_message_size=max_message_size)
