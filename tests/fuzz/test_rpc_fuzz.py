"""The Cap'n Proto decoders under hostile bytes: framing, messages, registration, sessions.

Only :class:`RpcProtocolError` (or its :class:`FramingError`) may escape a decoder: pycapnp's
own reports of bad input are turned into it at the one trust boundary, and any other exception
is a bug. The connector's pycapnp-free readers (``registration_wire``) either decline or agree
with pycapnp. Nothing spins, and no small message makes a reader allocate much.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from adit.protocol import registration_wire as wire
from adit.protocol.errors import FramingError, ProtocolError, RpcProtocolError
from adit.protocol.framing import MessageSplitter
from adit.protocol.registration import ClientInfo, ConnectionOptions, TunnelAuth
from adit.protocol.registration_codec import (
    decode_register_params,
    decode_register_results,
    decode_update_local_configuration_params,
    register_params_schema,
    register_results_schema,
    update_local_configuration_params_schema,
)
from adit.protocol.rpc import RegistrationClientSession, RegistrationServerSession
from adit.protocol.rpc_messages import (
    ReturnMessage,
    decode_message,
    encode_unimplemented,
    read_content,
)
from fuzz.budget import allocation_bounded, budget, cpu_bounded
from fuzz.capnp_wire import CFD_STREAM, EDGE_STREAM, MESSAGES, RETURNS, corrupted, framed
from fuzz.http2_wire import splits

# Found: a bootstrap Return whose cap table claims 2^29 - 1 zero-sized entries (96 bytes) made
# decode_return loop over them all, allocating gigabytes.
CAP_TABLE_BOMB = bytes.fromhex(
    "000000000b00000000000000010001000300000000000000000000000200010000000000"
    "000000000000000000000000000000000000020003000000000000000100000017000000"
    "fcffff7f0000000001000000000000000000000000000000"
)
# Found: an Abort whose type is not in the schema's enum raised RuntimeError from pycapnp.
UNKNOWN_ABORT_TYPE = bytes.fromhex(
    "0000000007000000000000000100010001000000000000000000000001000100260000007800000001000000"
    "720000007270633a2073687574646f776e000000"
)


def feed(session: RegistrationServerSession | RegistrationClientSession, data: bytes) -> None:
    try:
        session.receive_data(data)
    except ProtocolError:
        assert session.closed  # a protocol error always ends the session...
        assert session.data_to_send()  # ...with an Abort for the peer


def _client() -> RegistrationClientSession:
    client = RegistrationClientSession()
    client.register(
        TunnelAuth("a", b"s"),
        uuid.UUID(int=1),
        0,
        ConnectionOptions(ClientInfo(uuid.UUID(int=2), (), "", "")),
    )
    client.data_to_send()
    return client


# -- sessions -----------------------------------------------------------------------------------


@budget(100)
@given(st.binary(max_size=2048))
def test_server_survives_raw_garbage(data: bytes) -> None:
    with cpu_bounded(), allocation_bounded(len(data)):
        feed(RegistrationServerSession(), data)


@budget(100)
@given(st.lists(st.binary(min_size=8, max_size=256), min_size=1, max_size=4))
def test_server_survives_well_framed_garbage(bodies: list[bytes]) -> None:
    with cpu_bounded():
        feed(RegistrationServerSession(), b"".join(framed(body) for body in bodies))


@budget(150)
@given(st.lists(st.tuples(st.integers(0, len(CFD_STREAM) - 1), st.integers(0, 255)), max_size=6))
def test_server_survives_corrupted_cloudflared_stream(flips: list[tuple[int, int]]) -> None:
    data = bytearray(CFD_STREAM)
    for offset, value in flips:
        data[offset] = value
    server = RegistrationServerSession()
    try:
        with cpu_bounded():
            for event in server.receive_data(bytes(data)):
                answer_id = getattr(event, "answer_id", None)
                if answer_id is not None:
                    server.answer_exception(answer_id, "fuzz")
    except ProtocolError:
        assert server.closed


@budget(150)
@given(st.lists(corrupted(MESSAGES), min_size=1, max_size=4))
@example([UNKNOWN_ABORT_TYPE])
def test_server_survives_corrupted_messages(messages: list[bytes]) -> None:
    with cpu_bounded():
        feed(RegistrationServerSession(), b"".join(messages))


@budget(150)
@given(st.lists(st.tuples(st.integers(0, len(EDGE_STREAM) - 1), st.integers(0, 255)), max_size=6))
def test_client_survives_corrupted_edge_stream(flips: list[tuple[int, int]]) -> None:
    data = bytearray(EDGE_STREAM)
    for offset, value in flips:
        data[offset] = value
    with cpu_bounded(), allocation_bounded(len(data)):
        feed(_client(), bytes(data))


@budget(150)
@given(st.lists(corrupted(RETURNS), min_size=1, max_size=3))
@example([CAP_TABLE_BOMB])
def test_client_survives_corrupted_returns(messages: list[bytes]) -> None:
    data = b"".join(messages)
    with cpu_bounded(), allocation_bounded(len(data)):
        feed(_client(), data)


@budget(100)
@given(st.binary(max_size=1024))
def test_client_survives_raw_garbage(data: bytes) -> None:
    with cpu_bounded(), allocation_bounded(len(data)):
        feed(RegistrationClientSession(), data)


# -- the decoders one by one --------------------------------------------------------------------

_CONTENT: list[tuple[Any, Callable[[Any], object]]] = [
    (register_params_schema, decode_register_params),
    (register_results_schema, decode_register_results),
    (update_local_configuration_params_schema, decode_update_local_configuration_params),
]


@budget(300)
@given(corrupted(MESSAGES))
@example(UNKNOWN_ABORT_TYPE)
def test_message_decoders_raise_only_protocol_errors(data: bytes) -> None:
    with cpu_bounded():
        for decode in (decode_message, encode_unimplemented):
            with suppress(RpcProtocolError):
                decode(data)
        for schema, content in _CONTENT:
            with suppress(RpcProtocolError):
                read_content(data, schema, content)


def _same_return(raw: bytes, read: wire.ReadReturn) -> None:
    message = decode_message(raw)
    assert isinstance(message, ReturnMessage)
    assert (read.answer_id, read.outcome, read.reason) == (
        message.answer_id,
        message.outcome,
        message.reason,
    )
    assert read.cap_table == tuple((entry.kind, entry.id) for entry in message.cap_table)


@budget(300)
@given(corrupted(RETURNS))
@example(CAP_TABLE_BOMB)
def test_fast_readers_decline_or_agree_with_pycapnp(data: bytes) -> None:
    with cpu_bounded(), allocation_bounded(len(data)):
        read = wire.decode_return(data)
        result = wire.decode_register_results(data)
    if read is not None:
        _same_return(data, read)
    if result is not None:
        assert read_content(data, register_results_schema, decode_register_results) == result


# -- framing ----------------------------------------------------------------------------------


def _split(pieces: list[bytes]) -> tuple[list[bytes], bool]:
    splitter = MessageSplitter(max_message_size=4096, max_segments=8)
    messages: list[bytes] = []
    try:
        for piece in pieces:
            messages += splitter.feed(piece)
    except FramingError:
        return messages, True
    return messages, False


@budget(200)
@given(st.one_of(st.binary(max_size=300), corrupted(MESSAGES)), st.data())
@example(b"\xff\xff\xff\xff", None)  # four billion segments
@example(b"\x00\x00\x00\x00\xff\xff\xff\x7f", None)  # a 16 GiB segment
def test_framing_is_split_independent_and_bounded(data: bytes, draw: st.DataObject | None) -> None:
    pieces = draw.draw(splits(data)) if draw is not None else [data]
    with cpu_bounded(), allocation_bounded(len(data)):
        whole, refused = _split([data])
        split, split_refused = _split(pieces)
    assert refused == split_refused
    if not refused:
        assert split == whole
