"""Client and server RPC sessions run against each other in memory, plus the edge cases of each.

Messages the public API cannot produce (Resolve, unknown methods, bad targets) are built with
pycapnp's own upstream ``rpc.capnp``, an encoder independent of ours.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import capnp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adit.protocol.errors import ProtocolUsageError, RpcProtocolError
from adit.protocol.framing import MessageSplitter
from adit.protocol.registration import (
    ClientInfo,
    ConnectionDetails,
    ConnectionOptions,
    RegistrationError,
    RegistrationResult,
    TunnelAuth,
)
from adit.protocol.registration_codec import (
    REGISTRATION_SERVER_INTERFACE_ID,
    RegisterConnectionParams,
    build_empty,
    build_register_params,
    build_update_local_configuration_params,
)
from adit.protocol.rpc import (
    CallFailed,
    CallReturned,
    ClientEvent,
    RegisterConnectionCalled,
    RegistrationClientSession,
    RegistrationFailed,
    RegistrationReturned,
    RegistrationServerSession,
    RpcAborted,
    ServerEvent,
    UnregisterConnectionCalled,
    UpdateLocalConfigurationCalled,
)
from adit.protocol.rpc_messages import (
    AbortMessage,
    ImportedCapTarget,
    PromisedAnswerTarget,
    ReturnMessage,
    RpcMessage,
    decode_message,
    encode_bootstrap,
    encode_call,
    encode_finish,
    encode_release,
    encode_results_return,
)

_CAPNP_DIR = os.path.dirname(capnp.__file__)
upstream_rpc: Any = capnp.load(
    os.path.join(_CAPNP_DIR, "rpc.capnp"), imports=[os.path.dirname(_CAPNP_DIR)]
)

AUTH = TunnelAuth(account_tag="0123456789abcdef0123456789abcdef", tunnel_secret=b"S" * 32)
TUNNEL_ID = uuid.UUID("cce48637-f5a9-4699-b732-a486cd66b001")
OPTIONS = ConnectionOptions(
    client=ClientInfo(
        client_id=uuid.UUID("5b058ccd-b896-4081-84b3-039cb5d76e9c"),
        features=("serialized_headers",),
        version="2026.1.0",
        arch="linux_arm64",
    ),
    origin_local_ip=bytes(16),
    num_previous_attempts=3,
)
DETAILS = ConnectionDetails(uuid=uuid.uuid4(), location_name="AMS", tunnel_is_remotely_managed=True)


def messages(data: bytes) -> list[RpcMessage]:
    return [decode_message(raw) for raw in MessageSplitter().feed(data)]


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(cut % (len(data) + 1) for cut in cuts), len(data)]
    return [data[start:end] for start, end in itertools.pairwise(points)]


@dataclass
class Pair:
    """A connector and an edge wired back to back; ``cuts`` re-chunk every transfer."""

    result: RegistrationResult = DETAILS
    cuts: list[int] = field(default_factory=list)
    client: RegistrationClientSession = field(default_factory=RegistrationClientSession)
    server: RegistrationServerSession = field(default_factory=RegistrationServerSession)
    client_events: list[ClientEvent] = field(default_factory=list)
    server_events: list[ServerEvent] = field(default_factory=list)

    def pump(self) -> None:
        """Move bytes both ways until both sides are quiet; the edge answers every call."""
        for _ in range(20):
            to_server = self.client.data_to_send()
            for chunk in chunked(to_server, self.cuts):
                for event in self.server.receive_data(chunk):
                    self.server_events.append(event)
                    self.answer(event)
            to_client = self.server.data_to_send()
            for chunk in chunked(to_client, self.cuts):
                self.client_events += self.client.receive_data(chunk)
            if not to_server and not to_client:
                return
        raise AssertionError("sessions never went quiet")

    def answer(self, event: ServerEvent) -> None:
        if isinstance(event, RegisterConnectionCalled):
            self.server.answer_register(event.answer_id, self.result)
        elif isinstance(event, UnregisterConnectionCalled | UpdateLocalConfigurationCalled):
            self.server.answer_empty(event.answer_id)


def run_lifecycle(pair: Pair) -> None:
    pair.client.register(AUTH, TUNNEL_ID, 2, OPTIONS)
    pair.pump()
    assert pair.client_events == [RegistrationReturned(result=pair.result)]
    assert pair.server_events == [
        RegisterConnectionCalled(
            answer_id=1, auth=AUTH, tunnel_id=TUNNEL_ID, conn_index=2, options=OPTIONS
        )
    ]
    update = pair.client.update_local_configuration(b'{"ingress":[]}')
    pair.pump()
    unregister = pair.client.unregister()
    pair.pump()
    pair.client.close()
    pair.pump()
    assert pair.client_events[1:] == [CallReturned(update), CallReturned(unregister)]
    assert pair.server_events[1:] == [
        UpdateLocalConfigurationCalled(answer_id=update, config=b'{"ingress":[]}'),
        UnregisterConnectionCalled(answer_id=unregister),
        RpcAborted(reason="rpc: shutdown"),
    ]
    assert pair.client.closed
    assert pair.server.closed


@pytest.mark.parametrize(
    "result",
    [
        DETAILS,
        RegistrationError(cause="EDUPCONN", should_retry=True),
        RegistrationError(cause="tunnel not found", retry_after_ns=5_000_000_000),
        RegistrationError(cause="Unauthorized: bad secret", should_retry=False),
    ],
)
def test_full_lifecycle(result: RegistrationResult) -> None:
    run_lifecycle(Pair(result=result))


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_full_lifecycle_in_any_chunking(cuts: list[int]) -> None:
    run_lifecycle(Pair(cuts=cuts))


def test_released_capability_can_no_longer_be_called() -> None:
    server = RegistrationServerSession()
    server.receive_data(encode_bootstrap(0) + encode_finish(0) + encode_release(0, 1))
    server.data_to_send()
    server.receive_data(call_on_import(5))
    (reply,) = messages(server.data_to_send())
    assert isinstance(reply, ReturnMessage)
    assert reply.outcome == "exception"


def call_on_import(question_id: int, method_id: int = 1, interface_id: int | None = None) -> bytes:
    return encode_call(
        question_id,
        ImportedCapTarget(import_id=0),
        REGISTRATION_SERVER_INTERFACE_ID if interface_id is None else interface_id,
        method_id,
        build_empty(),
    )


CallEvent = RegisterConnectionCalled | UnregisterConnectionCalled | UpdateLocalConfigurationCalled


def only_call(events: list[ServerEvent]) -> CallEvent:
    (event,) = events
    assert not isinstance(event, RpcAborted)
    return event


def bootstrapped_server() -> RegistrationServerSession:
    server = RegistrationServerSession()
    server.receive_data(encode_bootstrap(0))
    server.data_to_send()
    return server


# Server: calls it must refuse -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("interface_id", "method_id"),
    [(REGISTRATION_SERVER_INTERFACE_ID, 3), (0xB48EDFBDAA25DB04, 0), (0x839445A59FB01686, 1)],
)
def test_unknown_method_returns_unimplemented(interface_id: int, method_id: int) -> None:
    server = bootstrapped_server()
    assert server.receive_data(call_on_import(1, method_id, interface_id)) == []
    (reply,) = messages(server.data_to_send())
    assert isinstance(reply, ReturnMessage)
    assert reply.answer_id == 1
    assert reply.outcome == "exception"
    assert "unimplemented" in reply.reason
    with upstream_rpc.Message.from_bytes(reply.raw) as message:
        assert message.which() == "return"
        assert str(getattr(message, "return").exception.type) == "unimplemented"
    # The answer is settled; Finish frees the id for reuse.
    server.receive_data(encode_finish(1))
    assert [type(e) for e in server.receive_data(call_on_import(1))] == [UnregisterConnectionCalled]


def test_call_on_unknown_import_fails_the_call() -> None:
    server = RegistrationServerSession()
    assert server.receive_data(call_on_import(3)) == []
    (reply,) = messages(server.data_to_send())
    assert isinstance(reply, ReturnMessage)
    assert (reply.answer_id, reply.outcome) == (3, "exception")
    assert not server.closed


def test_pipelined_call_with_a_transform_fails_the_call() -> None:
    server = RegistrationServerSession()
    server.receive_data(encode_bootstrap(0))
    call = encode_call(
        1,
        PromisedAnswerTarget(question_id=0, transform=(0,)),
        REGISTRATION_SERVER_INTERFACE_ID,
        1,
        build_empty(),
    )
    assert server.receive_data(call) == []
    replies = messages(server.data_to_send())
    assert isinstance(replies[1], ReturnMessage)
    assert replies[1].outcome == "exception"


def test_pipelined_call_with_noop_transform_is_accepted() -> None:
    server = RegistrationServerSession()
    server.receive_data(encode_bootstrap(4))
    call = encode_call(
        7,
        PromisedAnswerTarget(question_id=4, transform=(None,)),
        REGISTRATION_SERVER_INTERFACE_ID,
        1,
        build_empty(),
    )
    assert server.receive_data(call) == [UnregisterConnectionCalled(answer_id=7)]


def test_invalid_params_fail_the_call_not_the_connection() -> None:
    params = build_register_params(RegisterConnectionParams(AUTH, TUNNEL_ID, 0, OPTIONS))
    params.tunnelId = b"short"
    server = bootstrapped_server()
    call = encode_call(1, ImportedCapTarget(0), REGISTRATION_SERVER_INTERFACE_ID, 0, params)
    assert server.receive_data(call) == []
    (reply,) = messages(server.data_to_send())
    assert isinstance(reply, ReturnMessage)
    assert reply.outcome == "exception"
    assert "tunnelId must be 16 bytes" in reply.reason


def test_answer_exception_reaches_the_client() -> None:
    pair = Pair()
    pair.client.register(AUTH, TUNNEL_ID, 0, OPTIONS)
    event = only_call(pair.server.receive_data(pair.client.data_to_send()))
    pair.server.answer_exception(event.answer_id, "database down")
    events = pair.client.receive_data(pair.server.data_to_send())
    assert events == [RegistrationFailed(reason="database down")]
    question = pair.client.update_local_configuration(b"{}")
    event = only_call(pair.server.receive_data(pair.client.data_to_send()))
    pair.server.answer_exception(event.answer_id, "nope")
    assert pair.client.receive_data(pair.server.data_to_send()) == [CallFailed(question, "nope")]


# (g) unknown message kinds get Unimplemented ---------------------------------------------------


def upstream_message(build: Callable[[Any], None]) -> bytes:
    message = upstream_rpc.Message.new_message()
    build(message)
    return bytes(message.to_bytes())


def resolve(message: Any) -> None:
    message.init("resolve").promiseId = 9
    message.resolve.init("cap").senderHosted = 2


def disembargo(message: Any) -> None:
    embargo = message.init("disembargo")
    embargo.init("target").importedCap = 0
    embargo.context.senderLoopback = 4


def provide(message: Any) -> None:
    message.init("provide").questionId = 6


def unknown_kind() -> bytes:
    data = bytearray(upstream_message(lambda m: setattr(m.init("release"), "id", 1)))
    data[16] = 42  # the Message union discriminant
    return bytes(data)


KINDS = {
    "resolve": upstream_message(resolve),
    "disembargo": upstream_message(disembargo),
    "provide": upstream_message(provide),
    "unknown": unknown_kind(),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("side", [RegistrationServerSession, RegistrationClientSession])
def test_unknown_message_kinds_get_unimplemented(
    kind: str, side: type[RegistrationServerSession | RegistrationClientSession]
) -> None:
    session = side()
    session.data_to_send()
    sent = KINDS[kind]
    assert session.receive_data(sent) == []
    reply = session.data_to_send()
    with upstream_rpc.Message.from_bytes(reply) as message:
        assert message.which() == "unimplemented"
        echoed = message.unimplemented
        if kind != "unknown":
            assert echoed.which() == kind
    # The echo carries the original message verbatim (the unknown discriminant too).
    assert sent[16:] in reply
    assert not session.closed


def test_unimplemented_from_the_peer_is_not_echoed() -> None:
    server = RegistrationServerSession()
    echo = upstream_message(lambda m: m.init("unimplemented").init("finish"))
    assert server.receive_data(echo) == []
    assert server.data_to_send() == b""


def test_edge_that_does_not_implement_calls() -> None:
    client = RegistrationClientSession()
    client.register(AUTH, TUNNEL_ID, 0, OPTIONS)
    sent = MessageSplitter().feed(client.data_to_send())
    reply = b""
    for raw in sent:
        with upstream_rpc.Message.from_bytes(raw) as original:
            echo = upstream_rpc.Message.new_message()
            echo.unimplemented = original
            reply += echo.to_bytes()
    events = client.receive_data(reply)
    assert len(events) == 1
    assert isinstance(events[0], RegistrationFailed)
    assert client.data_to_send() == b""  # no Finish for questions the edge never saw


# Protocol violations ------------------------------------------------------------------------


def assert_aborted(data: bytes) -> None:
    (abort,) = messages(data)
    assert isinstance(abort, AbortMessage)
    assert abort.reason.startswith("rpc: protocol error")


@pytest.mark.parametrize(
    "stream",
    [
        encode_bootstrap(0) + encode_bootstrap(0),
        encode_finish(3),
        encode_bootstrap(0) + encode_finish(0) + encode_finish(0),
        encode_release(0, 1),
        encode_bootstrap(0) + encode_release(0, 2),
        encode_results_return(
            0, build_register_params(RegisterConnectionParams(AUTH, TUNNEL_ID, 0, OPTIONS))
        ),
    ],
    ids=[
        "reused-question",
        "finish-unknown",
        "finish-twice",
        "release-unknown",
        "over-release",
        "unasked-return",
    ],
)
def test_server_protocol_violations(stream: bytes) -> None:
    server = RegistrationServerSession()
    with pytest.raises(RpcProtocolError):
        server.receive_data(stream)
    data = server.data_to_send()
    assert_aborted(MessageSplitter().feed(data)[-1])
    assert server.closed
    assert server.receive_data(encode_bootstrap(9)) == []


def test_client_rejects_a_return_for_an_unknown_question() -> None:
    client = RegistrationClientSession()
    with pytest.raises(RpcProtocolError):
        client.receive_data(encode_results_return(5, build_empty()))
    assert_aborted(client.data_to_send())
    assert client.closed


def test_server_ignores_everything_after_abort() -> None:
    server = RegistrationServerSession()
    abort = upstream_message(lambda m: setattr(m.init("abort"), "reason", "bye"))
    assert server.receive_data(abort + encode_bootstrap(0)) == [RpcAborted(reason="bye")]
    assert server.data_to_send() == b""


def test_server_close_sends_abort_once() -> None:
    server = RegistrationServerSession()
    server.close()
    server.close()
    (abort,) = messages(server.data_to_send())
    assert abort == AbortMessage(reason="rpc: shutdown", type="failed")


def test_answers_after_close_are_dropped() -> None:
    server = bootstrapped_server()
    event = only_call(server.receive_data(call_on_import(1)))
    server.close()
    server.data_to_send()
    server.answer_empty(event.answer_id)
    assert server.data_to_send() == b""


def test_cancelled_call_is_still_returned_then_freed() -> None:
    server = bootstrapped_server()
    event = only_call(server.receive_data(call_on_import(1) + encode_finish(1)))
    server.answer_empty(event.answer_id)
    assert len(messages(server.data_to_send())) == 1
    assert [type(e) for e in server.receive_data(call_on_import(1))] == [UnregisterConnectionCalled]


# API misuse --------------------------------------------------------------------------------


def test_server_answer_misuse() -> None:
    server = bootstrapped_server()
    event = only_call(server.receive_data(call_on_import(1)))
    with pytest.raises(ProtocolUsageError):
        server.answer_register(event.answer_id, DETAILS)  # it is an unregister call
    server.answer_empty(event.answer_id)
    with pytest.raises(ProtocolUsageError):
        server.answer_empty(event.answer_id)  # answered already
    with pytest.raises(ProtocolUsageError):
        server.answer_exception(42, "no such call")


def test_client_misuse() -> None:
    client = RegistrationClientSession()
    with pytest.raises(ProtocolUsageError):
        client.unregister()  # no capability yet
    client.register(AUTH, TUNNEL_ID, 0, OPTIONS)
    with pytest.raises(ProtocolUsageError):
        client.register(AUTH, TUNNEL_ID, 0, OPTIONS)
    with pytest.raises(ProtocolUsageError):
        client.update_local_configuration(b"{}")  # bootstrap has not returned
    client.close()
    with pytest.raises(ProtocolUsageError):
        client.unregister()
    with pytest.raises(ProtocolUsageError):
        RegistrationClientSession().register(AUTH, TUNNEL_ID, 256, OPTIONS)


def test_question_ids_are_reused_last_freed_first() -> None:
    pair = Pair()
    pair.client.register(AUTH, TUNNEL_ID, 0, OPTIONS)
    pair.pump()
    first = pair.client.update_local_configuration(b"{}")
    second = pair.client.unregister()
    assert (first, second) == (1, 0)
    pair.pump()
    assert pair.client_events[1:] == [CallReturned(1), CallReturned(0)]
    assert pair.client.unregister() == 0


def test_client_answers_edge_bootstrap_and_calls_with_exceptions() -> None:
    client = RegistrationClientSession()
    assert client.receive_data(encode_bootstrap(0) + call_on_import(1)) == []
    replies = messages(client.data_to_send())
    assert [(r.answer_id, r.outcome) for r in replies if isinstance(r, ReturnMessage)] == [
        (0, "exception"),
        (1, "exception"),
    ]


def test_multi_segment_messages_are_understood() -> None:
    # A tiny first segment forces pycapnp to spread the Call over many segments (far pointers).
    message = upstream_rpc.Message.new_message(num_first_segment_words=2)
    call = message.init("call")
    call.questionId = 1
    call.init("target").importedCap = 0
    call.interfaceId = REGISTRATION_SERVER_INTERFACE_ID
    call.methodId = 2
    params = call.init("params")
    params.content = build_update_local_configuration_params(b"x" * 100)
    data = bytes(message.to_bytes())
    assert int.from_bytes(data[:4], "little") >= 1
    server = bootstrapped_server()
    assert server.receive_data(data) == [
        UpdateLocalConfigurationCalled(answer_id=1, config=b"x" * 100)
    ]
