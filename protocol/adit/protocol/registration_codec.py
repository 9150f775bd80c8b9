"""``RegistrationServer`` params and results <-> the values of :mod:`adit.protocol.registration`.

Interface ``0xf71695ec7fe85497`` (PROTOCOL.md §3.2): ``registerConnection`` @0,
``unregisterConnection`` @1, ``updateLocalConfiguration`` @2. Builders set fields in schema order;
pycapnp then copies them into the RPC message depth-first, which is the order go-capnproto2
allocates them in, so our bytes match cloudflared's.

Decoders reject what cloudflared itself would reject (a UUID that is not 16 bytes) with
:class:`~adit.protocol.errors.RpcProtocolError`, which
:func:`adit.protocol.rpc_messages.read_content` passes on.
"""

from __future__ import annotations

import uuid
from typing import Any

from adit.protocol.errors import RpcProtocolError
from adit.protocol.registration import (
    ClientInfo,
    ConnectionDetails,
    ConnectionOptions,
    RegistrationError,
    RegistrationResult,
    TunnelAuth,
)
from adit.protocol.registration_wire import (
    REGISTER_CONNECTION,
    REGISTRATION_SERVER_INTERFACE_ID,
    UNREGISTER_CONNECTION,
    UPDATE_LOCAL_CONFIGURATION,
    check_uint8,
)
from adit.protocol.rpc_messages import (
    build_empty,
    struct_module,
    struct_schema,
    tunnelrpc,
    union_member,
    uuid_from_data,
)
from adit.protocol.values import Value

__all__ = [
    "REGISTER_CONNECTION",
    "REGISTRATION_SERVER_INTERFACE_ID",
    "UNREGISTER_CONNECTION",
    "UPDATE_LOCAL_CONFIGURATION",
    "RegisterConnectionParams",
    "build_empty",
    "build_register_params",
    "build_register_results",
    "build_update_local_configuration_params",
    "decode_register_params",
    "decode_register_results",
    "decode_update_local_configuration_params",
    "register_params_schema",
    "register_results_schema",
    "update_local_configuration_params_schema",
]


_SERVER = tunnelrpc.RegistrationServer
register_params_schema: Any = struct_schema(_SERVER, "registerConnection")
register_results_schema: Any = struct_schema(_SERVER, "registerConnection", results=True)
update_local_configuration_params_schema: Any = struct_schema(_SERVER, "updateLocalConfiguration")
_RegisterParams: Any = struct_module(register_params_schema, "RegisterConnectionParams")
_RegisterResults: Any = struct_module(register_results_schema, "RegisterConnectionResults")
_UpdateParams: Any = struct_module(update_local_configuration_params_schema, "UpdateParams")


class RegisterConnectionParams(Value, frozen=True):
    """The arguments of one ``registerConnection`` call."""

    auth: TunnelAuth
    tunnel_id: uuid.UUID
    conn_index: int
    options: ConnectionOptions


def build_register_params(params: RegisterConnectionParams) -> Any:
    """A ``registerConnection`` params struct builder."""
    options = params.options
    check_uint8("conn_index", params.conn_index)
    check_uint8("compression_quality", options.compression_quality)
    check_uint8("num_previous_attempts", options.num_previous_attempts)
    builder = _RegisterParams.new_message()
    auth = builder.init("auth")
    auth.accountTag = params.auth.account_tag
    auth.tunnelSecret = params.auth.tunnel_secret
    builder.tunnelId = params.tunnel_id.bytes
    builder.connIndex = params.conn_index
    options_builder = builder.init("options")
    client = options_builder.init("client")
    client.clientId = options.client.client_id.bytes
    features = client.init("features", len(options.client.features))
    for index, feature in enumerate(options.client.features):
        features[index] = feature
    client.version = options.client.version
    client.arch = options.client.arch
    options_builder.originLocalIp = options.origin_local_ip
    options_builder.replaceExisting = options.replace_existing
    options_builder.compressionQuality = options.compression_quality
    options_builder.numPreviousAttempts = options.num_previous_attempts
    return builder


def decode_register_params(reader: Any) -> RegisterConnectionParams:
    """Plain values from a ``registerConnection`` params struct reader."""
    auth = reader.auth
    options = reader.options
    client = options.client
    return RegisterConnectionParams(
        auth=TunnelAuth(account_tag=str(auth.accountTag), tunnel_secret=bytes(auth.tunnelSecret)),
        tunnel_id=uuid_from_data(reader.tunnelId, "tunnelId"),
        conn_index=int(reader.connIndex),
        options=ConnectionOptions(
            client=ClientInfo(
                client_id=uuid_from_data(client.clientId, "clientId"),
                features=tuple(str(feature) for feature in client.features),
                version=str(client.version),
                arch=str(client.arch),
            ),
            origin_local_ip=bytes(options.originLocalIp),
            replace_existing=bool(options.replaceExisting),
            compression_quality=int(options.compressionQuality),
            num_previous_attempts=int(options.numPreviousAttempts),
        ),
    )


def build_register_results(result: RegistrationResult) -> Any:
    """A ``registerConnection`` results struct builder (a ``ConnectionResponse``)."""
    builder = _RegisterResults.new_message()
    response = builder.init("result").result
    if isinstance(result, ConnectionDetails):
        details = response.init("connectionDetails")
        details.uuid = result.uuid.bytes
        details.locationName = result.location_name
        details.tunnelIsRemotelyManaged = result.tunnel_is_remotely_managed
    else:
        error = response.init("error")
        error.cause = result.cause
        error.retryAfter = result.retry_after_ns
        error.shouldRetry = result.should_retry
    return builder


def decode_register_results(reader: Any) -> RegistrationResult:
    """A :data:`RegistrationResult` from a ``registerConnection`` results struct reader."""
    response = reader.result.result
    kind = union_member(response)
    if kind == "connectionDetails":
        details = response.connectionDetails
        return ConnectionDetails(
            uuid=uuid_from_data(details.uuid, "connectionDetails.uuid"),
            location_name=str(details.locationName),
            tunnel_is_remotely_managed=bool(details.tunnelIsRemotelyManaged),
        )
    if kind == "error":
        error = response.error
        return RegistrationError(
            cause=str(error.cause),
            retry_after_ns=int(error.retryAfter),
            should_retry=bool(error.shouldRetry),
        )
    raise RpcProtocolError(f"ConnectionResponse of unknown kind {kind!r}")


def build_update_local_configuration_params(config: bytes) -> Any:
    """An ``updateLocalConfiguration`` params struct builder."""
    return _UpdateParams.new_message(config=config)


def decode_update_local_configuration_params(reader: Any) -> bytes:
    """The config JSON bytes of an ``updateLocalConfiguration`` params struct reader."""
    return bytes(reader.config)
