"""registration_wire writes what pycapnp writes and reads what pycapnp reads, or declines."""

from __future__ import annotations

import struct
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adit.protocol import registration_wire as wire
from adit.protocol.registration import (
    ClientInfo,
    ConnectionDetails,
    ConnectionOptions,
    DuplicateConnection,
    PermanentRefusal,
    RegistrationError,
    TemporaryRefusal,
    TunnelAuth,
)
from adit.protocol.registration_codec import (
    RegisterConnectionParams,
    build_register_params,
    build_register_results,
    build_update_local_configuration_params,
    decode_register_results,
    register_results_schema,
)
from adit.protocol.rpc_messages import (
    ImportedCapTarget,
    PromisedAnswerTarget,
    ReturnMessage,
    decode_message,
    encode_bootstrap,
    encode_bootstrap_return,
    encode_call,
    encode_exception_return,
    encode_finish,
    encode_results_return,
    read_content,
)

IFACE = wire.REGISTRATION_SERVER_INTERFACE_ID
ids = st.integers(0, 2**32 - 1)
uint8 = st.integers(0, 255)
text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40)

options_strategy = st.builds(
    ConnectionOptions,
    client=st.builds(
        ClientInfo,
        client_id=st.uuids(),
        features=st.lists(text, max_size=5).map(tuple),
        version=text,
        arch=text,
    ),
    origin_local_ip=st.binary(max_size=20),
    replace_existing=st.booleans(),
    compression_quality=uint8,
    num_previous_attempts=uint8,
)


@settings(max_examples=200)
@given(
    question=ids,
    bootstrap=ids,
    auth=st.builds(TunnelAuth, text, st.binary(max_size=64)),
    tunnel_id=st.uuids(),
    conn_index=uint8,
    options=options_strategy,
)
def test_register_call_is_byte_identical_to_pycapnp(
    question: int,
    bootstrap: int,
    auth: TunnelAuth,
    tunnel_id: uuid.UUID,
    conn_index: int,
    options: ConnectionOptions,
) -> None:
    params = build_register_params(RegisterConnectionParams(auth, tunnel_id, conn_index, options))
    expected = encode_call(question, PromisedAnswerTarget(bootstrap, ()), IFACE, 0, params)
    found = wire.encode_register_call(
        question, bootstrap, IFACE, 0, auth, tunnel_id, conn_index, options
    )
    assert found == expected


@given(question=ids, import_id=ids, config=st.binary(max_size=300))
def test_update_call_bootstrap_and_finish_are_byte_identical(
    question: int, import_id: int, config: bytes
) -> None:
    params = build_update_local_configuration_params(config)
    assert wire.encode_update_local_configuration_call(
        question, import_id, IFACE, 2, config
    ) == encode_call(question, ImportedCapTarget(import_id), IFACE, 2, params)
    assert wire.encode_bootstrap(question) == encode_bootstrap(question)
    assert wire.encode_finish(question) == encode_finish(question)


def _same_return(raw: bytes) -> None:
    read = wire.decode_return(raw)
    message = decode_message(raw)
    assert isinstance(message, ReturnMessage) and read is not None
    assert (read.answer_id, read.outcome, read.reason) == (
        message.answer_id,
        message.outcome,
        message.reason,
    )
    assert read.cap_table == tuple((entry.kind, entry.id) for entry in message.cap_table)


@given(
    answer=ids,
    result=st.one_of(
        st.builds(ConnectionDetails, st.uuids(), text, st.booleans()),
        st.builds(RegistrationError, text, st.integers(-(2**63), 2**63 - 1), st.booleans()),
    ),
)
def test_register_results_read_as_pycapnp_reads_them(
    answer: int, result: ConnectionDetails | RegistrationError
) -> None:
    raw = encode_results_return(answer, build_register_results(result))
    _same_return(raw)
    assert wire.decode_register_results(raw) == result
    assert read_content(raw, register_results_schema, decode_register_results) == result


@given(answer=ids, export=ids, reason=text)
def test_bootstrap_and_exception_returns_read_as_pycapnp_reads_them(
    answer: int, export: int, reason: str
) -> None:
    _same_return(encode_bootstrap_return(answer, export))
    _same_return(encode_exception_return(answer, reason, "overloaded"))


def test_what_is_not_a_plain_return_is_left_to_pycapnp() -> None:
    assert wire.decode_return(encode_bootstrap(1)) is None
    assert wire.decode_return(encode_finish(1)) is None
    assert wire.decode_register_results(encode_exception_return(1, "no")) is None
    # A connection id of the wrong length: pycapnp's reader reports it.
    details = encode_results_return(
        1, build_register_results(ConnectionDetails(uuid.UUID(int=1), "x"))
    )
    broken = details.replace(uuid.UUID(int=1).bytes, b"\x00" * 16)
    assert wire.decode_register_results(broken) == ConnectionDetails(uuid.UUID(int=0), "x")


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_readers_never_raise_on_garbage(data: bytes) -> None:
    wire.decode_return(data)
    wire.decode_register_results(data)


@settings(max_examples=300)
@given(st.data())
def test_readers_decline_or_agree_on_corrupted_returns(data: st.DataObject) -> None:
    raw = bytearray(
        encode_results_return(
            7, build_register_results(ConnectionDetails(uuid.UUID(int=9), "loc", True))
        )
    )
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(8, len(raw) - 1))] = data.draw(st.integers(0, 255))
    read = wire.decode_return(bytes(raw))
    if read is not None:
        _same_return(bytes(raw))
    result = wire.decode_register_results(bytes(raw))
    if result is not None:
        assert read_content(bytes(raw), register_results_schema, decode_register_results) == result


@pytest.mark.parametrize(
    ("error", "kind", "retryable", "move", "after"),
    [
        (RegistrationError("EDUPCONN", 0, True), DuplicateConnection, True, True, 0.0),
        (RegistrationError("EDUPCONN", 0, False), DuplicateConnection, True, True, 0.0),
        (RegistrationError("busy", 2_500_000_000, True), TemporaryRefusal, True, False, 2.5),
        (RegistrationError("busy", -5, True), TemporaryRefusal, True, False, 0.0),
        (
            RegistrationError("bad secret", 9_000_000_000, False),
            PermanentRefusal,
            False,
            False,
            0.0,
        ),
    ],
)
def test_a_refusal_carries_its_policy(
    error: RegistrationError, kind: type, retryable: bool, move: bool, after: float
) -> None:
    refusal = error.refusal()
    assert type(refusal) is kind
    assert (refusal.retryable, refusal.try_another_address) == (retryable, move)
    assert refusal.retry_after == after and refusal.cause == error.cause


def test_a_text_of_no_bytes_is_refused_as_capnp_refuses_it() -> None:
    """Found by Hypothesis: a Text pointer to a list of 0 bytes (not even the NUL) was read as
    "" by our reader and refused by capnp's."""
    raw = bytearray(
        encode_results_return(
            7, build_register_results(ConnectionDetails(uuid.UUID(int=9), "loc", True))
        )
    )
    text_pointer = (4 << 3) | 2  # a byte list of 4 elements: "loc" and its NUL
    patched = 0
    for at in range(8, len(raw) - 7, 8):
        lower, upper = struct.unpack_from("<iI", raw, at)
        if lower & 3 == 1 and upper == text_pointer:
            struct.pack_into("<iI", raw, at, lower, 2)  # 0 elements
            patched += 1
    assert patched == 1
    assert wire.decode_register_results(bytes(raw)) is None
