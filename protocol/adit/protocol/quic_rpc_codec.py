"""``SessionManager`` and ``ConfigurationManager`` params and results <-> plain values (§3.1-3.2).

The QUIC transport's short RPC streams (§5.6, §6.1) call these two interfaces:

* ``SessionManager`` ``0x839445a59fb01686``: ``registerUdpSession`` @0, ``unregisterUdpSession``
  @1 (datagram v2 UDP sessions; cloudflared serves both, the edge serves the second);
* ``ConfigurationManager`` ``0xb48edfbdaa25db04``: ``updateConfiguration`` @0 (served by
  cloudflared).

cloudflared's bootstrap object is a ``CloudflaredServer`` (``0xf548cef9dea2a4a1``), which extends
both; calls still carry the declaring interface's id (§3.2).

Builders set fields in schema order, which is the order go-capnproto2 allocates them in
(tunnelrpc/pogs/session_manager.go, configuration_manager.go), and leave an empty Text or
Data unset, as go-capnproto2's ``SetText``/``SetData`` write a null pointer for it
(vendor/zombiezen.com/go/capnproto2/struct.go). They refuse values the wire cannot carry with
:class:`~adit.protocol.errors.ProtocolUsageError`.

Decoders reject what cloudflared rejects (tunnelrpc/pogs/session_manager.go: ``uuid.FromBytes``
of the session id; connection/quic_datagram_v2.go ``RegisterUdpSession``: a destination IP
``netip.AddrFromSlice`` cannot read) with :class:`~adit.protocol.errors.RpcProtocolError`,
which :func:`adit.protocol.rpc_messages.read_content` passes on.
"""

from __future__ import annotations

import ipaddress
import math
import uuid
from typing import Any

from adit.protocol.errors import ProtocolUsageError, RpcProtocolError
from adit.protocol.registration_wire import check_fits
from adit.protocol.rpc_messages import struct_module, struct_schema, tunnelrpc, uuid_from_data
from adit.protocol.values import Value

__all__ = [
    "CLOUDFLARED_SERVER_INTERFACE_ID",
    "CONFIGURATION_MANAGER_INTERFACE_ID",
    "REGISTER_UDP_SESSION",
    "SESSION_MANAGER_INTERFACE_ID",
    "UNREGISTER_UDP_SESSION",
    "UPDATE_CONFIGURATION",
    "IPAddress",
    "RegisterUdpSessionParams",
    "RegisterUdpSessionResponse",
    "UnregisterUdpSessionParams",
    "UpdateConfigurationParams",
    "UpdateConfigurationResponse",
    "build_register_udp_session_params",
    "build_register_udp_session_results",
    "build_unregister_udp_session_params",
    "build_update_configuration_params",
    "build_update_configuration_results",
    "decode_register_udp_session_params",
    "decode_register_udp_session_results",
    "decode_unregister_udp_session_params",
    "decode_update_configuration_params",
    "decode_update_configuration_results",
    "register_udp_session_params_schema",
    "register_udp_session_results_schema",
    "unregister_udp_session_params_schema",
    "update_configuration_params_schema",
    "update_configuration_results_schema",
]

SESSION_MANAGER_INTERFACE_ID = 0x839445A59FB01686
REGISTER_UDP_SESSION = 0
UNREGISTER_UDP_SESSION = 1
CONFIGURATION_MANAGER_INTERFACE_ID = 0xB48EDFBDAA25DB04
UPDATE_CONFIGURATION = 0
CLOUDFLARED_SERVER_INTERFACE_ID = 0xF548CEF9DEA2A4A1
"""Never in a Call: ``CloudflaredServer`` has no methods of its own."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_UINT16 = range(2**16)
_INT32 = range(-(2**31), 2**31)
_INT64 = range(-(2**63), 2**63)
_NS_PER_SECOND = 1_000_000_000

_SESSIONS = tunnelrpc.SessionManager
_CONFIGURATION = tunnelrpc.ConfigurationManager
register_udp_session_params_schema: Any = struct_schema(_SESSIONS, "registerUdpSession")
register_udp_session_results_schema: Any = struct_schema(
    _SESSIONS, "registerUdpSession", results=True
)
unregister_udp_session_params_schema: Any = struct_schema(_SESSIONS, "unregisterUdpSession")
update_configuration_params_schema: Any = struct_schema(_CONFIGURATION, "updateConfiguration")
update_configuration_results_schema: Any = struct_schema(
    _CONFIGURATION, "updateConfiguration", results=True
)
_RegisterParams: Any = struct_module(register_udp_session_params_schema, "RegisterUdpParams")
_RegisterResults: Any = struct_module(register_udp_session_results_schema, "RegisterUdpResults")
_UnregisterParams: Any = struct_module(unregister_udp_session_params_schema, "UnregisterUdpParams")
_UpdateParams: Any = struct_module(update_configuration_params_schema, "UpdateConfigParams")
_UpdateResults: Any = struct_module(update_configuration_results_schema, "UpdateConfigResults")


class RegisterUdpSessionParams(Value, frozen=True):
    """The arguments of ``registerUdpSession``: proxy UDP of ``session_id`` to ``dst_ip:dst_port``.

    ``close_after_idle`` is in seconds (nanoseconds on the wire; cloudflared takes 0 as its
    default of 210 s, datagramsession/session.go); ``trace_context`` is a serialised trace
    context, empty when the request is not traced.
    """

    session_id: uuid.UUID
    dst_ip: IPAddress
    dst_port: int
    close_after_idle: float
    trace_context: str = ""


class UnregisterUdpSessionParams(Value, frozen=True):
    """The arguments of ``unregisterUdpSession``: why the session ended, e.g.
    ``"session idle for 2s"``."""

    session_id: uuid.UUID
    message: str


class UpdateConfigurationParams(Value, frozen=True):
    """The arguments of ``updateConfiguration``: a versioned remote configuration (JSON, §4.6.2)."""

    version: int
    config: bytes


class RegisterUdpSessionResponse(Value, frozen=True):
    """The result of ``registerUdpSession``: ``error`` is None when the session is up.

    ``spans`` are protobuf OTLP spans of a traced registration. cloudflared sends either an
    error or spans, never both (tunnelrpc/pogs/session_manager.go ``Marshal``).
    """

    error: str | None = None
    spans: bytes = b""


class UpdateConfigurationResponse(Value, frozen=True):
    """The result of ``updateConfiguration``: the version now in force, and ``error`` (None on
    success) when the pushed one was not applied."""

    latest_applied_version: int
    error: str | None = None


def _ip_address(data: bytes) -> IPAddress:
    if len(data) == 4:
        return ipaddress.IPv4Address(data)
    if len(data) == 16:
        address = ipaddress.IPv6Address(data)
        # cloudflared dials an IPv4-mapped address as IPv4 (net.IP.To4 in
        # connection/quic_datagram_v2.go RegisterUdpSession): that is what it means.
        return address.ipv4_mapped or address
    raise RpcProtocolError(f"dstIp must be 4 or 16 bytes, got {len(data)}")


def _nanoseconds(seconds: float) -> int:
    if not math.isfinite(seconds):
        raise ProtocolUsageError(f"close_after_idle must be finite, got {seconds}")
    nanoseconds = round(seconds * _NS_PER_SECOND)
    check_fits("close_after_idle", nanoseconds, _INT64, "an Int64 of nanoseconds")
    return nanoseconds


def _error_text(text: str) -> str | None:
    # cloudflared reads an empty err as success (pogs ``Unmarshal``: respErr != "").
    return text or None


def build_register_udp_session_params(params: RegisterUdpSessionParams) -> Any:
    """A ``registerUdpSession`` params struct builder."""
    check_fits("dst_port", params.dst_port, _UINT16, "a UInt16")
    nanoseconds = _nanoseconds(params.close_after_idle)
    builder = _RegisterParams.new_message()
    builder.sessionId = params.session_id.bytes
    builder.dstIp = params.dst_ip.packed
    builder.dstPort = params.dst_port
    builder.closeAfterIdleHint = nanoseconds
    if params.trace_context:
        builder.traceContext = params.trace_context
    return builder


def decode_register_udp_session_params(reader: Any) -> RegisterUdpSessionParams:
    """Plain values from a ``registerUdpSession`` params struct reader."""
    return RegisterUdpSessionParams(
        session_id=uuid_from_data(reader.sessionId, "sessionId"),
        dst_ip=_ip_address(bytes(reader.dstIp)),
        dst_port=int(reader.dstPort),
        close_after_idle=int(reader.closeAfterIdleHint) / _NS_PER_SECOND,
        trace_context=str(reader.traceContext),
    )


def build_register_udp_session_results(response: RegisterUdpSessionResponse) -> Any:
    """A ``registerUdpSession`` results struct builder."""
    builder = _RegisterResults.new_message()
    result = builder.init("result")
    if response.error:
        result.err = response.error
    elif response.spans:
        result.spans = response.spans
    return builder


def decode_register_udp_session_results(reader: Any) -> RegisterUdpSessionResponse:
    """A :class:`RegisterUdpSessionResponse` from a ``registerUdpSession`` results reader."""
    result = reader.result
    return RegisterUdpSessionResponse(error=_error_text(str(result.err)), spans=bytes(result.spans))


def build_unregister_udp_session_params(params: UnregisterUdpSessionParams) -> Any:
    """An ``unregisterUdpSession`` params struct builder."""
    builder = _UnregisterParams.new_message()
    builder.sessionId = params.session_id.bytes
    if params.message:
        builder.message = params.message
    return builder


def decode_unregister_udp_session_params(reader: Any) -> UnregisterUdpSessionParams:
    """Plain values from an ``unregisterUdpSession`` params struct reader."""
    return UnregisterUdpSessionParams(
        session_id=uuid_from_data(reader.sessionId, "sessionId"), message=str(reader.message)
    )


def build_update_configuration_params(params: UpdateConfigurationParams) -> Any:
    """An ``updateConfiguration`` params struct builder."""
    check_fits("version", params.version, _INT32, "an Int32")
    builder = _UpdateParams.new_message()
    builder.version = params.version
    builder.config = params.config
    return builder


def decode_update_configuration_params(reader: Any) -> UpdateConfigurationParams:
    """Plain values from an ``updateConfiguration`` params struct reader."""
    return UpdateConfigurationParams(version=int(reader.version), config=bytes(reader.config))


def build_update_configuration_results(response: UpdateConfigurationResponse) -> Any:
    """An ``updateConfiguration`` results struct builder."""
    check_fits("latest_applied_version", response.latest_applied_version, _INT32, "an Int32")
    builder = _UpdateResults.new_message()
    result = builder.init("result")
    result.latestAppliedVersion = response.latest_applied_version
    if response.error:
        result.err = response.error
    return builder


def decode_update_configuration_results(reader: Any) -> UpdateConfigurationResponse:
    """An :class:`UpdateConfigurationResponse` from an ``updateConfiguration`` results reader."""
    result = reader.result
    return UpdateConfigurationResponse(
        latest_applied_version=int(result.latestAppliedVersion),
        error=_error_text(str(result.err)),
    )
