"""The QUIC RPC-stream sessions against the golden vectors of three RPC streams (§5.6, §6.1).

cloudflared's bytes are authoritative: the connector-side sessions must write them exactly and
the edge-side sessions must read them. The pycapnp edge's bytes are valid but not the only
encoding, so against them only the decoded meaning is compared.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adit.protocol.framing import MessageSplitter
from adit.protocol.quic_rpc import (
    CallReturned,
    CloudflaredClientSession,
    CloudflaredServerSession,
    ConfigurationUpdated,
    RegisterUdpSessionCalled,
    RpcAborted,
    SessionManagerClientSession,
    SessionManagerServerSession,
    UdpSessionRegistered,
    UnregisterUdpSessionCalled,
    UpdateConfigurationCalled,
)
from adit.protocol.quic_rpc_codec import (
    RegisterUdpSessionParams,
    RegisterUdpSessionResponse,
    UnregisterUdpSessionParams,
    UpdateConfigurationParams,
    UpdateConfigurationResponse,
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
    AbortMessage,
    BootstrapMessage,
    CallMessage,
    CapDescriptor,
    FinishMessage,
    PromisedAnswerTarget,
    ReleaseMessage,
    ReturnMessage,
    RpcMessage,
    decode_message,
    read_content,
)

CORPUS = Path(__file__).parents[2] / "corpus" / "quic_rpc"
REGISTER = CORPUS / "rpc_stream_registerUdpSession"
UPDATE = CORPUS / "rpc_stream_updateConfiguration"
UNREGISTER = CORPUS / "rpc_stream_unregisterUdpSession_from_cloudflared"

SIGNATURE = bytes.fromhex("52bb825cdb65")
SESSION_ID = uuid.UUID("0badcafe-0000-4000-8000-00000000d00d")
IDLE_MESSAGE = "session idle for 2s"
SESSION_MANAGER = 0x839445A59FB01686
CONFIGURATION_MANAGER = 0xB48EDFBDAA25DB04


def vector(folder: Path, number: int) -> bytes:
    (path,) = folder.glob(f"{number:02d}-*.bin")
    return path.read_bytes()


def stream(folder: Path, direction: str) -> bytes:
    """One direction of the stream after its RPC signature (the stream layer's business)."""
    data = (folder / f"stream_{direction}.bin").read_bytes()
    if data.startswith(SIGNATURE):
        return data[len(SIGNATURE) :]
    return data


def config_json() -> bytes:
    raw = vector(UPDATE, 3)
    start = raw.index(b'{"ingress"')
    return raw[start : raw.index(b"\0", start)]


def messages(data: bytes) -> list[RpcMessage]:
    return [decode_message(raw) for raw in MessageSplitter().feed(data)]


def every_split(data: bytes) -> list[list[bytes]]:
    """``data`` in two pieces cut at every offset, and byte by byte."""
    cuts = [[data[:cut], data[cut:]] for cut in range(len(data) + 1)]
    return [*cuts, [data[i : i + 1] for i in range(len(data))]]


def params(raw: bytes, schema: Any, decode: Callable[[Any], Any]) -> Any:
    return read_content(raw, schema, decode)


def test_the_signature_is_not_the_sessions_business() -> None:
    assert vector(REGISTER, 1) == vector(UPDATE, 1) == vector(UNREGISTER, 1) == SIGNATURE


# (a) The connector serves CloudflaredServer to the edge ---------------------------------------

REGISTER_CALLED = RegisterUdpSessionCalled(
    answer_id=1,
    session_id=SESSION_ID,
    dst_ip=ipaddress.IPv4Address("127.0.0.1"),
    dst_port=9010,
    close_after_idle=2.0,
    trace_context="",
)


def serve_edge_stream(folder: Path, answer: Callable[[CloudflaredServerSession, Any], None]) -> Any:
    """Run the edge's side of ``folder`` through a connector; return its event and its bytes."""
    server = CloudflaredServerSession()
    edge = MessageSplitter().feed(stream(folder, "edge_to_cloudflared"))
    bootstrap, call, finish = edge
    assert server.receive_data(bootstrap) == []
    (event,) = server.receive_data(call)
    answer(server, event)
    assert server.receive_data(finish) == []
    server.close()  # cloudflared's --rpc-timeout
    return event, server.data_to_send()


def test_connector_answers_registerUdpSession_exactly_as_cloudflared() -> None:
    event, sent = serve_edge_stream(REGISTER, lambda s, e: s.answer_register_udp(e.answer_id))
    assert event == REGISTER_CALLED
    assert sent == stream(REGISTER, "cloudflared_to_edge")


def test_connector_answers_updateConfiguration_exactly_as_cloudflared() -> None:
    event, sent = serve_edge_stream(
        UPDATE, lambda s, e: s.answer_update_configuration(e.answer_id, 7)
    )
    assert event == UpdateConfigurationCalled(answer_id=1, version=7, config=config_json())
    assert event.config.startswith(b'{"ingress": [{"hostname": "test.local"')
    assert sent == stream(UPDATE, "cloudflared_to_edge")


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        (REGISTER, REGISTER_CALLED),
        (UPDATE, UpdateConfigurationCalled(answer_id=1, version=7, config=config_json())),
    ],
    ids=["registerUdpSession", "updateConfiguration"],
)
def test_connector_reads_the_edge_stream_split_anywhere(folder: Path, expected: Any) -> None:
    data = stream(folder, "edge_to_cloudflared")
    for chunks in every_split(data):
        server = CloudflaredServerSession()
        events = [event for chunk in chunks for event in server.receive_data(chunk)]
        assert events == [expected]
        assert [type(m) for m in messages(server.data_to_send())] == [ReturnMessage]


# (b) The edge calls the connector's CloudflaredServer -----------------------------------------


def assert_same_call(ours: RpcMessage, theirs: RpcMessage, schema: Any, decode: Any) -> None:
    assert isinstance(ours, CallMessage)
    assert isinstance(theirs, CallMessage)
    assert (ours.question_id, ours.target, ours.interface_id, ours.method_id) == (
        theirs.question_id,
        theirs.target,
        theirs.interface_id,
        theirs.method_id,
    )
    assert ours.results_to_caller
    assert ours.target == PromisedAnswerTarget(question_id=0, transform=())
    assert params(ours.raw, schema, decode) == params(theirs.raw, schema, decode)


def test_edge_registerUdpSession_means_what_the_capture_edge_sent() -> None:
    client = CloudflaredClientSession()
    question = client.register_udp_session(
        SESSION_ID, ipaddress.IPv4Address("127.0.0.1"), 9010, 2.0
    )
    assert question == 1
    bootstrap, call = messages(client.data_to_send())
    theirs = messages(vector(REGISTER, 2) + vector(REGISTER, 3))
    assert bootstrap == theirs[0] == BootstrapMessage(question_id=0)
    schema, decode = register_udp_session_params_schema, decode_register_udp_session_params
    assert_same_call(call, theirs[1], schema, decode)
    assert isinstance(call, CallMessage)
    assert params(call.raw, schema, decode) == RegisterUdpSessionParams(
        SESSION_ID, ipaddress.IPv4Address("127.0.0.1"), 9010, 2.0
    )


def test_edge_updateConfiguration_means_what_the_capture_edge_sent() -> None:
    client = CloudflaredClientSession()
    assert client.update_configuration(7, config_json()) == 1
    bootstrap, call = messages(client.data_to_send())
    theirs = messages(vector(UPDATE, 2) + vector(UPDATE, 3))
    assert bootstrap == theirs[0] == BootstrapMessage(question_id=0)
    schema, decode = update_configuration_params_schema, decode_update_configuration_params
    assert_same_call(call, theirs[1], schema, decode)
    assert isinstance(call, CallMessage)
    assert params(call.raw, schema, decode) == UpdateConfigurationParams(7, config_json())


@pytest.mark.parametrize(
    ("folder", "call", "answer"),
    [
        (
            REGISTER,
            lambda c: c.register_udp_session(
                SESSION_ID, ipaddress.ip_address("127.0.0.1"), 9010, 2
            ),
            UdpSessionRegistered(question_id=1, error=None, spans=b""),
        ),
        (
            UPDATE,
            lambda c: c.update_configuration(7, config_json()),
            ConfigurationUpdated(question_id=1, latest_applied_version=7, error=None),
        ),
    ],
    ids=["registerUdpSession", "updateConfiguration"],
)
def test_edge_reads_cloudflareds_answers_split_anywhere(
    folder: Path, call: Callable[[CloudflaredClientSession], int], answer: Any
) -> None:
    data = stream(folder, "cloudflared_to_edge")
    for chunks in every_split(data):
        client = CloudflaredClientSession()
        call(client)
        client.data_to_send()
        events = [event for chunk in chunks for event in client.receive_data(chunk)]
        assert events == [answer, RpcAborted(reason="rpc: shutdown")]
        # A Finish for each Return (the capture edge, pycapnp, skipped the call's).
        assert messages(client.data_to_send()) == [
            FinishMessage(question_id=0, release_result_caps=False),
            FinishMessage(question_id=1, release_result_caps=False),
        ]
        assert client.capability == 0
        assert client.closed


def test_cloudflareds_results_decode_as_the_capture_says() -> None:
    register = vector(REGISTER, 5)
    assert params(
        register, register_udp_session_results_schema, decode_register_udp_session_results
    ) == RegisterUdpSessionResponse(error=None, spans=b"")
    update = vector(UPDATE, 5)
    assert params(
        update, update_configuration_results_schema, decode_update_configuration_results
    ) == UpdateConfigurationResponse(latest_applied_version=7, error=None)


# (c) The edge serves SessionManager to the connector ------------------------------------------

UNREGISTER_CALLED = UnregisterUdpSessionCalled(
    answer_id=1, session_id=SESSION_ID, message=IDLE_MESSAGE
)


def test_edge_serves_cloudflareds_unregisterUdpSession() -> None:
    server = SessionManagerServerSession()
    assert server.receive_data(vector(UNREGISTER, 2)) == []
    assert server.receive_data(vector(UNREGISTER, 3)) == [UNREGISTER_CALLED]
    server.answer_empty(1)
    ours = messages(server.data_to_send())
    theirs = messages(vector(UNREGISTER, 4) + vector(UNREGISTER, 5))
    for mine, capture in zip(ours, theirs, strict=True):
        assert isinstance(mine, ReturnMessage)
        assert isinstance(capture, ReturnMessage)
        assert (mine.answer_id, mine.outcome, mine.cap_table) == (
            capture.answer_id,
            capture.outcome,
            capture.cap_table,
        )
    assert isinstance(ours[0], ReturnMessage)
    assert ours[0].cap_table == (CapDescriptor("senderHosted", 0),)
    rest = vector(UNREGISTER, 6) + vector(UNREGISTER, 7) + vector(UNREGISTER, 8)
    assert server.receive_data(rest) == [RpcAborted(reason="rpc: shutdown")]
    assert server.closed
    assert server.data_to_send() == b""


def test_edge_reads_cloudflareds_unregister_stream_split_anywhere() -> None:
    data = stream(UNREGISTER, "cloudflared_to_edge")
    for chunks in every_split(data):
        server = SessionManagerServerSession()
        events = []
        for chunk in chunks:
            for event in server.receive_data(chunk):
                events.append(event)
                if isinstance(event, UnregisterUdpSessionCalled):
                    server.answer_empty(event.answer_id)
        assert events == [UNREGISTER_CALLED, RpcAborted(reason="rpc: shutdown")]


# (d) The connector calls the edge's SessionManager, as cloudflared does -----------------------


def test_connector_unregisters_exactly_as_cloudflared() -> None:
    client = SessionManagerClientSession()
    assert client.unregister_udp_session(SESSION_ID, IDLE_MESSAGE) == 1
    assert client.data_to_send() == vector(UNREGISTER, 2) + vector(UNREGISTER, 3)
    edge = vector(UNREGISTER, 4) + vector(UNREGISTER, 5)
    assert client.receive_data(edge) == [CallReturned(question_id=1)]
    assert client.data_to_send() == vector(UNREGISTER, 6) + vector(UNREGISTER, 7)
    client.close()
    # cloudflared's Release of the bootstrap capability lost a race with its Abort on this
    # stream (go-capnproto2 drops queued messages on Close); ours always goes out first.
    release, abort = messages(client.data_to_send())
    assert release == ReleaseMessage(import_id=0, reference_count=1)
    assert abort == decode_message(vector(UNREGISTER, 8))
    assert abort == AbortMessage(reason="rpc: shutdown", type="failed")


def test_connector_reads_the_edge_answers_split_anywhere() -> None:
    data = stream(UNREGISTER, "edge_to_cloudflared")
    for chunks in every_split(data):
        client = SessionManagerClientSession()
        client.unregister_udp_session(SESSION_ID, IDLE_MESSAGE)
        client.data_to_send()
        events = [event for chunk in chunks for event in client.receive_data(chunk)]
        assert events == [CallReturned(question_id=1)]
        assert client.data_to_send() == vector(UNREGISTER, 6) + vector(UNREGISTER, 7)


def test_cloudflareds_unregister_params_decode_as_the_capture_says() -> None:
    call = decode_message(vector(UNREGISTER, 3))
    assert isinstance(call, CallMessage)
    assert (call.interface_id, call.method_id) == (SESSION_MANAGER, 1)
    assert params(
        call.raw, unregister_udp_session_params_schema, decode_unregister_udp_session_params
    ) == UnregisterUdpSessionParams(SESSION_ID, IDLE_MESSAGE)
    update = decode_message(vector(UPDATE, 3))
    assert isinstance(update, CallMessage)
    assert (update.interface_id, update.method_id) == (CONFIGURATION_MANAGER, 0)
