"""Hostile bytes never escape the RPC sessions as anything but a ProtocolError."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from adit.protocol.errors import ProtocolError
from adit.protocol.registration import ClientInfo, ConnectionOptions, TunnelAuth
from adit.protocol.rpc import RegistrationClientSession, RegistrationServerSession

CORPUS = Path(__file__).parents[2] / "corpus" / "rpc_control_stream"
CFD_STREAM = (CORPUS / "rpc_cloudflared_to_edge.bin").read_bytes()
EDGE_STREAM = (CORPUS / "rpc_edge_to_cloudflared.bin").read_bytes()


def framed(body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 8)
    return struct.pack("<II", 0, len(body) // 8) + body


def feed(session: RegistrationServerSession | RegistrationClientSession, data: bytes) -> None:
    try:
        session.receive_data(data)
    except ProtocolError:
        assert session.closed  # a protocol error always ends the session...
        assert session.data_to_send()  # ...with an Abort for the peer


@given(st.binary(max_size=2048))
def test_server_survives_raw_garbage(data: bytes) -> None:
    feed(RegistrationServerSession(), data)


@given(st.lists(st.binary(min_size=8, max_size=256), min_size=1, max_size=4))
def test_server_survives_well_framed_garbage(bodies: list[bytes]) -> None:
    feed(RegistrationServerSession(), b"".join(framed(body) for body in bodies))


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, len(CFD_STREAM) - 1), st.integers(0, 255)), max_size=6))
def test_server_survives_corrupted_cloudflared_stream(flips: list[tuple[int, int]]) -> None:
    data = bytearray(CFD_STREAM)
    for offset, value in flips:
        data[offset] = value
    server = RegistrationServerSession()
    try:
        for event in server.receive_data(bytes(data)):
            answer_id = getattr(event, "answer_id", None)
            if answer_id is not None:
                server.answer_exception(answer_id, "fuzz")
    except ProtocolError:
        assert server.closed


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, len(EDGE_STREAM) - 1), st.integers(0, 255)), max_size=6))
def test_client_survives_corrupted_edge_stream(flips: list[tuple[int, int]]) -> None:
    data = bytearray(EDGE_STREAM)
    for offset, value in flips:
        data[offset] = value
    client = RegistrationClientSession()
    client.register(
        TunnelAuth("a", b"s"),
        uuid.UUID(int=1),
        0,
        ConnectionOptions(ClientInfo(uuid.UUID(int=2), (), "", "")),
    )
    client.data_to_send()
    feed(client, bytes(data))


@given(st.binary(max_size=1024))
def test_client_survives_raw_garbage(data: bytes) -> None:
    feed(RegistrationClientSession(), data)
