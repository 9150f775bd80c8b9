"""The QUIC RPC-stream sessions run against each other in memory, plus the edge cases of each.

Messages the public API cannot produce (unknown methods, bad parameters) are built with our
encoders from raw builders; hostile bytes come from Hypothesis.
"""

from __future__ import annotations

import ipaddress
import itertools
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adit.protocol.errors import ProtocolError, ProtocolUsageError, RpcProtocolError
from adit.protocol.framing import MessageSplitter
from adit.protocol.quic_rpc import (
    CallFailed,
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
    UnregisterUdpSessionParams,
    build_register_udp_session_params,
    build_unregister_udp_session_params,
)
from adit.protocol.rpc_messages import (
    AbortMessage,
    CallMessage,
    ImportedCapTarget,
    PromisedAnswerTarget,
    ReturnMessage,
    RpcMessage,
    UnimplementedMessage,
    build_empty,
    decode_message,
    encode_bootstrap,
    encode_call,
    encode_exception_return,
    encode_finish,
)
from fuzz.capnp_wire import corrupted

SESSION_ID = uuid.UUID("0badcafe-0000-4000-8000-00000000d00d")
V4 = ipaddress.IPv4Address("192.0.2.10")
V6 = ipaddress.IPv6Address("2001:db8::53")
SESSION_MANAGER = 0x839445A59FB01686
CONFIGURATION_MANAGER = 0xB48EDFBDAA25DB04
REGISTRATION_SERVER = 0xF71695EC7FE85497
CORPUS = Path(__file__).parents[2] / "corpus" / "quic_rpc"

Client = TypeVar("Client", CloudflaredClientSession, SessionManagerClientSession)
Server = TypeVar("Server", CloudflaredServerSession, SessionManagerServerSession)


def messages(data: bytes) -> list[RpcMessage]:
    return [decode_message(raw) for raw in MessageSplitter().feed(data)]


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(cut % (len(data) + 1) for cut in cuts), len(data)]
    return [data[start:end] for start, end in itertools.pairwise(points)]


def answer_everything(server: Any, event: Any) -> None:
    """The application's side: answer every call the way a healthy peer would."""
    if isinstance(event, RegisterUdpSessionCalled):
        server.answer_register_udp(event.answer_id, spans=b"span:" + event.session_id.bytes)
    elif isinstance(event, UpdateConfigurationCalled):
        server.answer_update_configuration(event.answer_id, event.version)
    elif isinstance(event, UnregisterUdpSessionCalled):
        server.answer_empty(event.answer_id)


@dataclass
class Pair(Generic[Client, Server]):
    """An RPC client and server wired back to back; ``cuts`` re-chunk every transfer."""

    client: Client
    server: Server
    answer: Callable[[Any, Any], None] = answer_everything
    cuts: list[int] = field(default_factory=list)
    client_events: list[Any] = field(default_factory=list)
    server_events: list[Any] = field(default_factory=list)

    def pump(self) -> None:
        """Move bytes both ways until both sides are quiet; the server answers every call."""
        for _ in range(20):
            to_server = self.client.data_to_send()
            for chunk in chunked(to_server, self.cuts):
                for event in self.server.receive_data(chunk):
                    self.server_events.append(event)
                    self.answer(self.server, event)
            to_client = self.server.data_to_send()
            for chunk in chunked(to_client, self.cuts):
                self.client_events += self.client.receive_data(chunk)
            if not to_server and not to_client:
                return
        raise AssertionError("sessions never went quiet")


def cloudflared_pair(cuts: list[int] | None = None) -> Pair[Any, Any]:
    return Pair(CloudflaredClientSession(), CloudflaredServerSession(), cuts=cuts or [])


def session_manager_pair(cuts: list[int] | None = None) -> Pair[Any, Any]:
    return Pair(SessionManagerClientSession(), SessionManagerServerSession(), cuts=cuts or [])


# Every method, each on its own stream, as the edge and cloudflared use them -------------------

CALLS: list[tuple[str, Callable[[], Pair[Any, Any]], Callable[[Any], int], Any, Any]] = [
    (
        "registerUdpSession v4",
        cloudflared_pair,
        lambda c: c.register_udp_session(SESSION_ID, V4, 53, 30.0, "trace-id:1"),
        RegisterUdpSessionCalled(1, SESSION_ID, V4, 53, 30.0, "trace-id:1"),
        UdpSessionRegistered(1, None, b"span:" + SESSION_ID.bytes),
    ),
    (
        "registerUdpSession v6",
        cloudflared_pair,
        lambda c: c.register_udp_session(SESSION_ID, V6, 65535, 0.25),
        RegisterUdpSessionCalled(1, SESSION_ID, V6, 65535, 0.25, ""),
        UdpSessionRegistered(1, None, b"span:" + SESSION_ID.bytes),
    ),
    (
        "unregisterUdpSession to cloudflared",
        cloudflared_pair,
        lambda c: c.unregister_udp_session(SESSION_ID, "eyeball went away"),
        UnregisterUdpSessionCalled(1, SESSION_ID, "eyeball went away"),
        CallReturned(1),
    ),
    (
        "updateConfiguration",
        cloudflared_pair,
        lambda c: c.update_configuration(42, b'{"ingress":[{"service":"http_status:404"}]}'),
        UpdateConfigurationCalled(1, 42, b'{"ingress":[{"service":"http_status:404"}]}'),
        ConfigurationUpdated(1, 42, None),
    ),
    (
        "unregisterUdpSession to the edge",
        session_manager_pair,
        lambda c: c.unregister_udp_session(SESSION_ID, "session idle for 2s"),
        UnregisterUdpSessionCalled(1, SESSION_ID, "session idle for 2s"),
        CallReturned(1),
    ),
]
CALL_IDS = [case[0] for case in CALLS]


@pytest.mark.parametrize(("name", "make", "call", "called", "answered"), CALLS, ids=CALL_IDS)
def test_each_method_on_a_stream_of_its_own(
    name: str, make: Callable[[], Pair[Any, Any]], call: Any, called: Any, answered: Any
) -> None:
    pair = make()
    assert call(pair.client) == 1
    pair.pump()
    assert pair.server_events == [called]
    assert pair.client_events == [answered]
    pair.client.close()
    pair.pump()
    assert pair.server_events[1:] == [RpcAborted(reason="rpc: shutdown")]
    assert pair.client.closed
    assert pair.server.closed


@pytest.mark.parametrize(("name", "make", "call", "called", "answered"), CALLS, ids=CALL_IDS)
def test_each_method_with_every_byte_split(
    name: str, make: Callable[[], Pair[Any, Any]], call: Any, called: Any, answered: Any
) -> None:
    reference = make()
    call(reference.client)
    request = reference.client.data_to_send()
    (event,) = reference.server.receive_data(request)
    answer_everything(reference.server, event)
    reply = reference.server.data_to_send()
    for cut in range(len(request) + 1):
        server = make().server
        events = server.receive_data(request[:cut]) + server.receive_data(request[cut:])
        assert events == [called]
    for cut in range(len(reply) + 1):
        client = make().client
        call(client)
        events = client.receive_data(reply[:cut]) + client.receive_data(reply[cut:])
        assert events == [answered]


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_a_stream_carrying_every_call_in_any_chunking(cuts: list[int]) -> None:
    pair = cloudflared_pair(cuts)
    first = pair.client.register_udp_session(SESSION_ID, V4, 53, 1.0)
    second = pair.client.update_configuration(3, b"{}")  # also pipelined: no answer yet
    pair.pump()
    third = pair.client.unregister_udp_session(SESSION_ID, "done")  # on the import now
    pair.pump()
    assert (first, second, third) == (1, 2, 2)
    assert pair.client_events == [
        UdpSessionRegistered(1, None, b"span:" + SESSION_ID.bytes),
        ConfigurationUpdated(2, 3, None),
        CallReturned(2),
    ]
    assert [type(event) for event in pair.server_events] == [
        RegisterUdpSessionCalled,
        UpdateConfigurationCalled,
        UnregisterUdpSessionCalled,
    ]


def test_calls_pipeline_on_the_bootstrap_until_it_returns_then_use_the_import() -> None:
    client = CloudflaredClientSession()
    client.update_configuration(1, b"{}")
    client.update_configuration(2, b"{}")
    targets = [m.target for m in messages(client.data_to_send()) if isinstance(m, CallMessage)]
    assert targets == [PromisedAnswerTarget(0, ()), PromisedAnswerTarget(0, ())]
    server = CloudflaredServerSession()
    server.receive_data(encode_bootstrap(0))
    client.receive_data(server.data_to_send())
    assert client.capability == 0
    client.data_to_send()
    client.update_configuration(3, b"{}")
    (call,) = messages(client.data_to_send())
    assert isinstance(call, CallMessage)
    assert call.target == ImportedCapTarget(0)


# Answers that report failure --------------------------------------------------------------------


def test_application_errors_travel_in_the_results() -> None:
    def refuse(server: Any, event: Any) -> None:
        if isinstance(event, RegisterUdpSessionCalled):
            server.answer_register_udp(event.answer_id, error="too many flows", spans=b"lost")
        elif isinstance(event, UpdateConfigurationCalled):
            server.answer_update_configuration(event.answer_id, 6, "bad ingress")

    pair = cloudflared_pair()
    pair.answer = refuse
    pair.client.register_udp_session(SESSION_ID, V4, 53, 1.0)
    pair.client.update_configuration(7, b"{")
    pair.pump()
    assert pair.client_events == [
        UdpSessionRegistered(1, "too many flows", b""),
        ConfigurationUpdated(2, 6, "bad ingress"),
    ]


@pytest.mark.parametrize(("name", "make", "call", "called", "answered"), CALLS, ids=CALL_IDS)
def test_answer_exception_fails_the_call(
    name: str, make: Callable[[], Pair[Any, Any]], call: Any, called: Any, answered: Any
) -> None:
    pair = make()
    pair.answer = lambda server, event: server.answer_exception(event.answer_id, "broken")
    call(pair.client)
    pair.pump()
    assert pair.client_events == [CallFailed(1, "broken")]


def test_the_edge_does_not_serve_registerUdpSession() -> None:
    pair = session_manager_pair()
    pair.client.register_udp_session(SESSION_ID, V4, 53, 1.0)
    pair.pump()
    assert pair.server_events == []
    (failed,) = pair.client_events
    assert isinstance(failed, CallFailed)
    assert "unimplemented" in failed.reason


# Calls a server must refuse ---------------------------------------------------------------------


def call_on_import(question_id: int, interface_id: int, method_id: int, params: Any) -> bytes:
    return encode_call(question_id, ImportedCapTarget(0), interface_id, method_id, params)


def bootstrapped(server: Any) -> Any:
    server.receive_data(encode_bootstrap(0))
    server.data_to_send()
    return server


def only_return(data: bytes) -> ReturnMessage:
    (reply,) = messages(data)
    assert isinstance(reply, ReturnMessage)
    return reply


@pytest.mark.parametrize(
    ("interface_id", "method_id", "reason"),
    [
        (SESSION_MANAGER, 2, "@0x839445a59fb01686.@2: capnp: method not implemented"),
        (CONFIGURATION_MANAGER, 1, "@0xb48edfbdaa25db04.@1: capnp: method not implemented"),
        (REGISTRATION_SERVER, 0, "@0xf71695ec7fe85497.@0: capnp: method not implemented"),
        (0xF548CEF9DEA2A4A1, 0, "@0xf548cef9dea2a4a1.@0: capnp: method not implemented"),
    ],
)
def test_connector_refuses_unknown_methods_as_go_capnproto2_does(
    interface_id: int, method_id: int, reason: str
) -> None:
    server = bootstrapped(CloudflaredServerSession())
    assert server.receive_data(call_on_import(1, interface_id, method_id, build_empty())) == []
    reply = only_return(server.data_to_send())
    assert (reply.answer_id, reply.outcome, reply.reason) == (1, "exception", reason)
    # go-capnproto2's toException gives every Go error the type "failed" (rpc/errors.go).
    assert reply.raw == encode_exception_return(1, reason, "failed")
    assert not server.closed


@pytest.mark.parametrize(
    ("interface_id", "method_id"),
    [(SESSION_MANAGER, 0), (CONFIGURATION_MANAGER, 0), (REGISTRATION_SERVER, 1)],
)
def test_edge_refuses_what_its_session_manager_lacks(interface_id: int, method_id: int) -> None:
    server = bootstrapped(SessionManagerServerSession())
    assert server.receive_data(call_on_import(1, interface_id, method_id, build_empty())) == []
    reply = only_return(server.data_to_send())
    assert reply.outcome == "exception"
    assert reply.raw == encode_exception_return(1, reply.reason, "unimplemented")


def register_params(**changes: Any) -> Any:
    builder = build_register_udp_session_params(RegisterUdpSessionParams(SESSION_ID, V4, 53, 1.0))
    for name, value in changes.items():
        setattr(builder, name, value)
    return builder


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"sessionId": b"short"}, "sessionId must be 16 bytes, got 5"),
        ({"dstIp": b""}, "dstIp must be 4 or 16 bytes, got 0"),
        ({"dstIp": b"\x7f\0\0\1\0"}, "dstIp must be 4 or 16 bytes, got 5"),
    ],
)
def test_bad_parameters_fail_the_call_not_the_stream(changes: dict[str, Any], reason: str) -> None:
    server = bootstrapped(CloudflaredServerSession())
    call = call_on_import(1, SESSION_MANAGER, 0, register_params(**changes))
    assert server.receive_data(call) == []
    reply = only_return(server.data_to_send())
    assert reply.outcome == "exception"
    assert reason in reply.reason
    server.receive_data(encode_finish(1))
    good = call_on_import(1, SESSION_MANAGER, 0, register_params())
    assert [type(e) for e in server.receive_data(good)] == [RegisterUdpSessionCalled]


def test_edge_fails_an_unregister_with_a_bad_session_id() -> None:
    params = build_unregister_udp_session_params(UnregisterUdpSessionParams(SESSION_ID, "x"))
    params.sessionId = bytes(17)
    server = bootstrapped(SessionManagerServerSession())
    assert server.receive_data(call_on_import(1, SESSION_MANAGER, 1, params)) == []
    assert "sessionId must be 16 bytes" in only_return(server.data_to_send()).reason


def call_with_unknown_target() -> bytes:
    data = bytearray(call_on_import(1, SESSION_MANAGER, 1, build_empty()))
    assert data[80:88] == bytes(8)  # the MessageTarget's data word: importedCap 0
    data[84] = 2  # its union discriminant: a target kind after promisedAnswer
    return bytes(data)


@pytest.mark.parametrize(
    "make",
    [
        CloudflaredServerSession,
        SessionManagerServerSession,
        CloudflaredClientSession,
        SessionManagerClientSession,
    ],
)
def test_a_call_to_an_unknown_kind_of_target_gets_unimplemented(make: Callable[[], Any]) -> None:
    # go-capnproto2 echoes it (rpc/rpc.go handleCallMessage); it is no reason to hang up.
    session = make()
    sent = call_with_unknown_target()
    assert session.receive_data(sent) == []
    data = session.data_to_send()
    (reply,) = messages(data)
    assert isinstance(reply, UnimplementedMessage)
    assert reply.kind == "call"
    assert sent[16:] in data  # the call, echoed verbatim
    assert not session.closed


# Hostile bytes ------------------------------------------------------------------------------------

SESSIONS: list[Callable[[], Any]] = [
    CloudflaredServerSession,
    SessionManagerServerSession,
    lambda: started(CloudflaredClientSession()),
    lambda: started(SessionManagerClientSession()),
]
VECTOR_MESSAGES = [
    path.read_bytes()
    for path in sorted(CORPUS.glob("*/[0-9]*.bin"))
    if not path.name.endswith("rpc-signature.bin")
]


def started(client: Any) -> Any:
    client.unregister_udp_session(SESSION_ID, "x")
    client.data_to_send()
    return client


def feed(session: Any, data: bytes) -> None:
    try:
        session.receive_data(data)
    except ProtocolError:
        assert session.closed  # a protocol error always ends the session...
        (abort,) = [m for m in messages(session.data_to_send()) if isinstance(m, AbortMessage)]
        assert abort.reason.startswith("rpc: protocol error")  # ...with an Abort for the peer


@given(st.sampled_from(SESSIONS), st.binary(max_size=512))
def test_random_bytes_never_crash_a_session(make: Callable[[], Any], data: bytes) -> None:
    feed(make(), data)


@given(st.sampled_from(SESSIONS), st.lists(corrupted(VECTOR_MESSAGES), min_size=1, max_size=4))
def test_corrupted_vector_messages_never_crash_a_session(
    make: Callable[[], Any], stream: list[bytes]
) -> None:
    feed(make(), b"".join(stream))


@pytest.mark.parametrize("make", SESSIONS)
def test_a_malformed_message_aborts_with_rpc_protocol_error(make: Callable[[], Any]) -> None:
    session = make()
    header = (0).to_bytes(4, "little") + (2).to_bytes(4, "little")
    bad_root = (0x7FFFFFFC).to_bytes(4, "little") + (0x00010001).to_bytes(4, "little")
    with pytest.raises(RpcProtocolError):
        session.receive_data(header + bad_root + bytes(8))
    assert session.closed
    assert isinstance(messages(session.data_to_send())[-1], AbortMessage)
    assert session.receive_data(encode_bootstrap(5)) == []


def test_client_rejects_malformed_results() -> None:
    client = CloudflaredClientSession()
    client.update_configuration(1, b"{}")
    client.data_to_send()
    server = CloudflaredServerSession()
    server.receive_data(encode_bootstrap(0))
    bootstrap_return = server.data_to_send()
    # Results whose content is a capability pointer, not an UpdateConfiguration result.
    bogus = bytearray(bootstrap_return)
    bogus[32:36] = (1).to_bytes(4, "little")  # answerId 1: the call
    decoded = decode_message(bytes(bogus))
    assert isinstance(decoded, ReturnMessage)
    assert (decoded.answer_id, decoded.outcome) == (1, "results")
    with pytest.raises(RpcProtocolError, match="non-struct pointer"):
        client.receive_data(bootstrap_return + bytes(bogus))
    assert client.closed


# API misuse ---------------------------------------------------------------------------------------


def test_server_answer_misuse() -> None:
    server = bootstrapped(CloudflaredServerSession())
    call = call_on_import(1, SESSION_MANAGER, 0, register_params())
    (event,) = server.receive_data(call)
    with pytest.raises(ProtocolUsageError):
        server.answer_empty(event.answer_id)  # registerUdpSession has results
    with pytest.raises(ProtocolUsageError):
        server.answer_update_configuration(event.answer_id, 1)
    server.answer_register_udp(event.answer_id)
    with pytest.raises(ProtocolUsageError):
        server.answer_register_udp(event.answer_id)  # answered already
    with pytest.raises(ProtocolUsageError):
        server.answer_exception(9, "no such call")
    server.close()
    server.data_to_send()
    server.answer_exception(event.answer_id, "ignored once closed")
    assert server.data_to_send() == b""


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.register_udp_session(SESSION_ID, V4, 70000, 1.0),
        lambda c: c.register_udp_session(SESSION_ID, V4, 53, float("nan")),
        lambda c: c.update_configuration(2**31, b"{}"),
    ],
)
def test_refused_arguments_leave_the_client_as_it_was(call: Callable[[Any], int]) -> None:
    client = CloudflaredClientSession()
    with pytest.raises(ProtocolUsageError):
        call(client)
    assert client.data_to_send() == b""
    assert client.update_configuration(1, b"{}") == 1  # q0 is still the bootstrap's


def test_calls_after_close_are_refused() -> None:
    client = SessionManagerClientSession()
    client.close()
    assert messages(client.data_to_send()) == [AbortMessage("rpc: shutdown", "failed")]
    with pytest.raises(ProtocolUsageError):
        client.unregister_udp_session(SESSION_ID, "late")


def test_a_failed_bootstrap_fails_its_calls_and_refuses_later_ones() -> None:
    client = CloudflaredClientSession()
    client.update_configuration(1, b"{}")
    client.data_to_send()
    events = client.receive_data(
        encode_exception_return(0, "rpc: no bootstrap interface")
        + encode_exception_return(1, "rpc: no bootstrap interface")
    )
    assert events == [CallFailed(1, "rpc: no bootstrap interface")]
    with pytest.raises(ProtocolUsageError, match="no capability"):
        client.update_configuration(2, b"{}")
