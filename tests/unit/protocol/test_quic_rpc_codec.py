"""SessionManager / ConfigurationManager codecs: round trips through real RPC messages, what
they refuse to write and what they reject on reading (as cloudflared rejects it)."""

from __future__ import annotations

import ipaddress
import math
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from adit.protocol.errors import ProtocolUsageError, RpcProtocolError
from adit.protocol.quic_rpc_codec import (
    IPAddress,
    RegisterUdpSessionParams,
    RegisterUdpSessionResponse,
    UnregisterUdpSessionParams,
    UpdateConfigurationParams,
    UpdateConfigurationResponse,
    build_register_udp_session_params,
    build_register_udp_session_results,
    build_unregister_udp_session_params,
    build_update_configuration_params,
    build_update_configuration_results,
    decode_register_udp_session_params,
    decode_register_udp_session_results,
    decode_unregister_udp_session_params,
    decode_update_configuration_params,
    decode_update_configuration_results,
    register_udp_session_params_schema,
    register_udp_session_results_schema,
    unregister_udp_session_params_schema,
    update_configuration_params_schema,
    update_configuration_results_schema,
)
from adit.protocol.rpc_messages import (
    PromisedAnswerTarget,
    encode_call,
    encode_results_return,
    read_content,
)

# capnp Text is NUL-terminated on the wire; cloudflared never sends NUL inside a string.
texts = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
int32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
# Whole nanoseconds, as the wire carries them, small enough (±13 days) to survive a float.
idle_seconds = st.integers(min_value=-(2**50), max_value=2**50).map(lambda ns: ns / 1e9)


# An IPv4-mapped IPv6 address reads back as IPv4, as cloudflared dials it (tested below).
def unmapped(address: IPAddress) -> bool:
    return not (isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped)


addresses: st.SearchStrategy[IPAddress] = st.ip_addresses(v=4) | st.ip_addresses(v=6).filter(
    unmapped
)


def through_call(builder: Any, schema: Any, decode: Callable[[Any], Any]) -> Any:
    """``builder`` sent as a Call's params and read back."""
    raw = encode_call(1, PromisedAnswerTarget(0, ()), 0x839445A59FB01686, 0, builder)
    return read_content(raw, schema, decode)


def through_return(builder: Any, schema: Any, decode: Callable[[Any], Any]) -> Any:
    """``builder`` sent as a Return's results and read back."""
    return read_content(encode_results_return(1, builder), schema, decode)


def register_params(**changes: Any) -> Any:
    """A registerUdpSession params builder with fields written as is (no checks)."""
    builder = build_register_udp_session_params(
        RegisterUdpSessionParams(uuid.UUID(int=1), ipaddress.IPv4Address("10.0.0.1"), 53, 1.5)
    )
    for name, value in changes.items():
        setattr(builder, name, value)
    return builder


# Round trips ----------------------------------------------------------------------------------


@given(st.uuids(), addresses, st.integers(0, 2**16 - 1), idle_seconds, texts)
# 15 ns / 1e9 * 1e9 is 14.999...: the seconds are rounded to the nearest nanosecond, not cut.
@example(uuid.UUID(int=0), ipaddress.IPv4Address(0), 0, 15 / 1e9, "")
def test_register_udp_session_params_round_trip(
    session_id: uuid.UUID, dst_ip: IPAddress, dst_port: int, idle: float, trace: str
) -> None:
    value = RegisterUdpSessionParams(session_id, dst_ip, dst_port, idle, trace)
    builder = build_register_udp_session_params(value)
    schema, decode = register_udp_session_params_schema, decode_register_udp_session_params
    assert through_call(builder, schema, decode) == value


@given(st.uuids(), texts)
def test_unregister_udp_session_params_round_trip(session_id: uuid.UUID, message: str) -> None:
    value = UnregisterUdpSessionParams(session_id, message)
    builder = build_unregister_udp_session_params(value)
    schema, decode = unregister_udp_session_params_schema, decode_unregister_udp_session_params
    assert through_call(builder, schema, decode) == value


@given(int32, st.binary(max_size=2048))
def test_update_configuration_params_round_trip(version: int, config: bytes) -> None:
    value = UpdateConfigurationParams(version, config)
    builder = build_update_configuration_params(value)
    schema, decode = update_configuration_params_schema, decode_update_configuration_params
    assert through_call(builder, schema, decode) == value


register_responses = st.builds(
    RegisterUdpSessionResponse, error=texts.filter(bool), spans=st.just(b"")
) | st.builds(RegisterUdpSessionResponse, error=st.none(), spans=st.binary(max_size=256))


@given(register_responses)
def test_register_udp_session_results_round_trip(value: RegisterUdpSessionResponse) -> None:
    builder = build_register_udp_session_results(value)
    schema, decode = register_udp_session_results_schema, decode_register_udp_session_results
    assert through_return(builder, schema, decode) == value


@given(int32, st.none() | texts.filter(bool))
def test_update_configuration_results_round_trip(version: int, error: str | None) -> None:
    value = UpdateConfigurationResponse(version, error)
    builder = build_update_configuration_results(value)
    schema, decode = update_configuration_results_schema, decode_update_configuration_results
    assert through_return(builder, schema, decode) == value


# Go's encoding choices --------------------------------------------------------------------------


def test_an_error_drops_the_spans_as_cloudflared_does() -> None:
    builder = build_register_udp_session_results(RegisterUdpSessionResponse("no socket", b"x"))
    schema, decode = register_udp_session_results_schema, decode_register_udp_session_results
    assert through_return(builder, schema, decode) == RegisterUdpSessionResponse("no socket")


def test_empty_texts_and_spans_stay_null_pointers() -> None:
    # go-capnproto2's SetText("") and SetData(nil) write no object (struct.go).
    unregister = build_unregister_udp_session_params(
        UnregisterUdpSessionParams(uuid.UUID(int=1), "")
    )
    assert not unregister._has("message")
    register = register_params()
    assert not register._has("traceContext")
    results = build_register_udp_session_results(RegisterUdpSessionResponse())
    assert not results.result._has("err")
    assert not results.result._has("spans")
    update = build_update_configuration_results(UpdateConfigurationResponse(3))
    assert not update.result._has("err")


def test_an_empty_error_reads_as_success() -> None:
    builder = build_update_configuration_results(UpdateConfigurationResponse(3))
    builder.result.err = ""
    schema, decode = update_configuration_results_schema, decode_update_configuration_results
    assert through_return(builder, schema, decode).error is None


# Reading: what cloudflared rejects -------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 15, 17, 32])
def test_a_session_id_that_is_not_16_bytes_is_rejected(length: int) -> None:
    schema, decode = register_udp_session_params_schema, decode_register_udp_session_params
    with pytest.raises(RpcProtocolError, match="sessionId must be 16 bytes"):
        through_call(register_params(sessionId=b"x" * length), schema, decode)
    unregister = build_unregister_udp_session_params(
        UnregisterUdpSessionParams(uuid.UUID(int=1), "m")
    )
    unregister.sessionId = b"x" * length
    with pytest.raises(RpcProtocolError, match="sessionId must be 16 bytes"):
        through_call(
            unregister, unregister_udp_session_params_schema, decode_unregister_udp_session_params
        )


@pytest.mark.parametrize("length", [0, 3, 5, 6, 15, 17])
def test_a_destination_that_is_not_4_or_16_bytes_is_rejected(length: int) -> None:
    schema, decode = register_udp_session_params_schema, decode_register_udp_session_params
    with pytest.raises(RpcProtocolError, match="dstIp must be 4 or 16 bytes"):
        through_call(register_params(dstIp=b"\x01" * length), schema, decode)


def test_an_ipv4_mapped_destination_is_ipv4() -> None:
    schema, decode = register_udp_session_params_schema, decode_register_udp_session_params
    mapped = ipaddress.IPv6Address("::ffff:192.0.2.7").packed
    value = through_call(register_params(dstIp=mapped), schema, decode)
    assert value.dst_ip == ipaddress.IPv4Address("192.0.2.7")
    v6 = ipaddress.IPv6Address("2001:db8::7")
    assert through_call(register_params(dstIp=v6.packed), schema, decode).dst_ip == v6


def test_idle_hint_is_read_in_seconds() -> None:
    schema, decode = register_udp_session_params_schema, decode_register_udp_session_params
    value = through_call(register_params(closeAfterIdleHint=2_500_000_000), schema, decode)
    assert value.close_after_idle == 2.5


# Writing: what the wire cannot carry ------------------------------------------------------------


@pytest.mark.parametrize(
    ("port", "idle"),
    [(-1, 1.0), (2**16, 1.0), (53, math.nan), (53, math.inf), (53, 2.0**63 / 1e9), (53, -1e11)],
)
def test_register_params_out_of_range_are_refused(port: int, idle: float) -> None:
    value = RegisterUdpSessionParams(
        uuid.UUID(int=1), ipaddress.IPv4Address("10.0.0.1"), port, idle
    )
    with pytest.raises(ProtocolUsageError):
        build_register_udp_session_params(value)


@pytest.mark.parametrize("version", [-(2**31) - 1, 2**31])
def test_versions_beyond_int32_are_refused(version: int) -> None:
    with pytest.raises(ProtocolUsageError, match="Int32"):
        build_update_configuration_params(UpdateConfigurationParams(version, b"{}"))
    with pytest.raises(ProtocolUsageError, match="Int32"):
        build_update_configuration_results(UpdateConfigurationResponse(version))
