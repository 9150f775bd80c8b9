"""The connector's side of the control-stream RPC, byte-compatible with cloudflared (§3.4, §4.3).

:meth:`RegistrationClientSession.register` writes ``Bootstrap`` and the ``registerConnection``
call pipelined on it, before any answer arrives. When the bootstrap Return brings the edge's
capability, it becomes our import and later calls (``updateLocalConfiguration``,
``unregisterConnection``) address it directly. Every Return is followed by a Finish, and
:meth:`~RegistrationClientSession.close` releases the import and aborts, all exactly as
go-capnproto2 v2 does it, down to the bytes.

Question ids come from go-capnproto2's generator: a freed id goes on a stack and the most recently
freed one is reused first (so after Bootstrap q0 and the call q1 both return, the next call is
q1 again, as in the golden vectors).

Invariants: a question id is live from our message until its Return arrives; registration is
reported exactly once (:class:`RegistrationReturned` or :class:`RegistrationFailed`); a protocol
error queues Abort and closes the session, and a closed session ignores input.
"""

from __future__ import annotations

import enum
import uuid

from adit.protocol.errors import ProtocolUsageError, RpcProtocolError
from adit.protocol.framing import DEFAULT_MAX_MESSAGE_SIZE, MessageSplitter
from adit.protocol.registration import ConnectionOptions, TunnelAuth
from adit.protocol.registration_codec import (
    REGISTER_CONNECTION,
    REGISTRATION_SERVER_INTERFACE_ID,
    UNREGISTER_CONNECTION,
    UPDATE_LOCAL_CONFIGURATION,
    RegisterConnectionParams,
    build_empty,
    build_register_params,
    build_update_local_configuration_params,
    decode_register_results,
    register_results_schema,
)
from adit.protocol.rpc_events import (
    CallFailed,
    CallReturned,
    ClientEvent,
    RegistrationFailed,
    RegistrationReturned,
    RpcAborted,
)
from adit.protocol.rpc_messages import (
    AbortMessage,
    BootstrapMessage,
    CallMessage,
    FinishMessage,
    ImportedCapTarget,
    PromisedAnswerTarget,
    ReleaseMessage,
    ReturnMessage,
    RpcMessage,
    UnimplementedMessage,
    decode_message,
    encode_abort,
    encode_bootstrap,
    encode_call,
    encode_exception_return,
    encode_finish,
    encode_release,
    encode_unimplemented,
    read_content,
)

__all__ = ["SHUTDOWN_REASON", "RegistrationClientSession"]

SHUTDOWN_REASON = "rpc: shutdown"
"""The Abort reason go-capnproto2 sends when a connection is closed normally."""

_CAPABILITY_KINDS = frozenset({"senderHosted", "senderPromise"})


class _QuestionKind(enum.Enum):
    BOOTSTRAP = enum.auto()
    REGISTER = enum.auto()
    CALL = enum.auto()


class _QuestionIds:
    """go-capnproto2 v2's ``idgen``: fresh ids count up, freed ids are reused last-in first-out."""

    def __init__(self) -> None:
        self._next = 0
        self._free: list[int] = []

    def take(self) -> int:
        if self._free:
            return self._free.pop()
        question_id = self._next
        self._next += 1
        return question_id

    def give_back(self, question_id: int) -> None:
        self._free.append(question_id)


class RegistrationClientSession:
    """The RPC client of one control stream, calling the edge's ``RegistrationServer``."""

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._splitter = MessageSplitter(max_message_size=max_message_size)
        self._outgoing = bytearray()
        self._ids = _QuestionIds()
        self._questions: dict[int, _QuestionKind] = {}
        self._import_id: int | None = None
        self._import_refs = 0
        self._registration_started = False
        self._registration_reported = False
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once Abort was sent or received (or a protocol error occurred)."""
        return self._closed

    @property
    def registration_capability(self) -> int | None:
        """The import id of the edge's ``RegistrationServer``, once its bootstrap returned."""
        return self._import_id

    def register(
        self,
        auth: TunnelAuth,
        tunnel_id: uuid.UUID,
        conn_index: int,
        options: ConnectionOptions,
    ) -> None:
        """Queue Bootstrap and the pipelined ``registerConnection`` call.

        The answer arrives as :class:`RegistrationReturned` or :class:`RegistrationFailed`.
        """
        self._check_open()
        if self._registration_started:
            raise ProtocolUsageError("registerConnection was already called on this session")
        params = build_register_params(
            RegisterConnectionParams(
                auth=auth, tunnel_id=tunnel_id, conn_index=conn_index, options=options
            )
        )
        self._registration_started = True
        bootstrap_id = self._ask(_QuestionKind.BOOTSTRAP)
        self._outgoing += encode_bootstrap(bootstrap_id)
        call_id = self._ask(_QuestionKind.REGISTER)
        self._outgoing += encode_call(
            call_id,
            PromisedAnswerTarget(question_id=bootstrap_id, transform=()),
            REGISTRATION_SERVER_INTERFACE_ID,
            REGISTER_CONNECTION,
            params,
        )

    def update_local_configuration(self, config: bytes) -> int:
        """Call ``updateLocalConfiguration(config)``; return the question id of the call."""
        params = build_update_local_configuration_params(config)
        return self._call_import(UPDATE_LOCAL_CONFIGURATION, params)

    def unregister(self) -> int:
        """Call ``unregisterConnection()``; return the question id of the call."""
        return self._call_import(UNREGISTER_CONNECTION, build_empty())

    def close(self) -> None:
        """Release the edge's capability and send ``Abort("rpc: shutdown")``; idempotent."""
        if self._closed:
            return
        if self._import_id is not None and self._import_refs:
            self._outgoing += encode_release(self._import_id, self._import_refs)
            self._import_refs = 0
        self._outgoing += encode_abort(SHUTDOWN_REASON)
        self._closed = True

    def receive_data(self, data: bytes) -> list[ClientEvent]:
        """Feed bytes from the edge; return the events they complete.

        Raises :class:`~adit.protocol.errors.RpcProtocolError` if the edge broke the protocol;
        an Abort is then waiting in :meth:`data_to_send`. Events completed
        earlier in the same call are dropped with it: the connection is over anyway.
        """
        events: list[ClientEvent] = []
        if self._closed:
            return events
        try:
            for raw in self._splitter.feed(data):
                self._handle(decode_message(raw), events)
                if self.closed:  # an Abort ends the stream; later bytes are meaningless
                    break
        except RpcProtocolError as exc:
            self._outgoing += encode_abort(f"rpc: protocol error: {exc}")
            self._closed = True
            raise
        return events

    def data_to_send(self) -> bytes:
        """Bytes to write to the edge (possibly empty); each call drains them."""
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def _check_open(self) -> None:
        if self._closed:
            raise ProtocolUsageError("the RPC session is closed")

    def _ask(self, kind: _QuestionKind) -> int:
        question_id = self._ids.take()
        self._questions[question_id] = kind
        return question_id

    def _call_import(self, method_id: int, params: object) -> int:
        self._check_open()
        if self._import_id is None:
            raise ProtocolUsageError("the edge's registration capability is not known yet")
        question_id = self._ask(_QuestionKind.CALL)
        self._outgoing += encode_call(
            question_id,
            ImportedCapTarget(import_id=self._import_id),
            REGISTRATION_SERVER_INTERFACE_ID,
            method_id,
            params,
        )
        return question_id

    def _report_registration(
        self, event: RegistrationReturned | RegistrationFailed
    ) -> list[ClientEvent]:
        if self._registration_reported:
            return []
        self._registration_reported = True
        return [event]

    def _handle(self, message: RpcMessage, events: list[ClientEvent]) -> None:
        if isinstance(message, ReturnMessage):
            self._handle_return(message, events)
        elif isinstance(message, UnimplementedMessage):
            self._handle_unimplemented(message, events)
        elif isinstance(message, AbortMessage):
            events.append(RpcAborted(reason=message.reason))
            self._closed = True
        elif isinstance(message, BootstrapMessage):
            # Like cloudflared on the control stream, we offer no bootstrap capability.
            self._outgoing += encode_exception_return(
                message.question_id, "rpc: no bootstrap interface"
            )
        elif isinstance(message, CallMessage):
            self._outgoing += encode_exception_return(
                message.question_id, "unimplemented: no capabilities exported", "unimplemented"
            )
        elif isinstance(message, FinishMessage | ReleaseMessage):
            # They can only concern the exception Returns above; there is nothing to free.
            pass
        else:
            self._outgoing += encode_unimplemented(message.raw)

    def _handle_return(self, message: ReturnMessage, events: list[ClientEvent]) -> None:
        question_id = message.answer_id
        kind = self._questions.pop(question_id, None)
        if kind is None:
            raise RpcProtocolError(f"Return for unknown question {question_id}")
        self._ids.give_back(question_id)
        self._outgoing += encode_finish(question_id)
        failure = message.reason if message.outcome == "exception" else message.outcome
        if kind is _QuestionKind.BOOTSTRAP:
            caps = [entry for entry in message.cap_table if entry.kind in _CAPABILITY_KINDS]
            if message.outcome == "results" and caps:
                # The content is a pointer to the one capability in the cap table.
                self._import_id = caps[0].id
                self._import_refs += 1
            else:
                no_cap = message.outcome == "results"
                reason = "bootstrap returned no capability" if no_cap else failure
                events += self._report_registration(RegistrationFailed(reason=reason))
        elif kind is _QuestionKind.REGISTER:
            if message.outcome == "results":
                result = read_content(message.raw, register_results_schema, decode_register_results)
                events += self._report_registration(RegistrationReturned(result=result))
            else:
                events += self._report_registration(RegistrationFailed(reason=failure))
        elif message.outcome == "results":
            events.append(CallReturned(question_id=question_id))
        else:
            events.append(CallFailed(question_id=question_id, reason=failure))

    def _handle_unimplemented(
        self, message: UnimplementedMessage, events: list[ClientEvent]
    ) -> None:
        question_id = message.question_id
        if question_id is None or message.kind not in {"bootstrap", "call"}:
            return
        kind = self._questions.pop(question_id, None)
        if kind is None:
            return
        # The edge never saw the question, so it needs no Finish; the id is free again.
        self._ids.give_back(question_id)
        reason = f"unimplemented: the edge does not understand {message.kind}"
        if kind is _QuestionKind.CALL:
            events.append(CallFailed(question_id=question_id, reason=reason))
        else:
            events += self._report_registration(RegistrationFailed(reason=reason))
