"""The edge's side of the control-stream RPC: a sans-IO ``RegistrationServer`` (PROTOCOL.md §3.4).

The connector bootstraps our one capability (export id 0), then calls it, first pipelined on the
bootstrap question (``promisedAnswer`` with an empty transform) and later on the import. Calls
become events; the edge answers them with ``answer_*``. Everything else of the RPC protocol that a
single-capability server needs (Finish, Release, Unimplemented, exception Returns) is handled here.

Invariants:

* An answer id is live from the peer's question until we have returned *and* the peer has sent
  Finish; a question reusing a live id is a protocol error.
* Every Call gets exactly one Return: from ``answer_*`` for the three registration methods, at once
  (an exception) for anything else.
* A protocol error queues ``Abort`` (for the caller to flush) and closes the session; so does
  :meth:`RegistrationServerSession.close`. A closed session ignores input and answers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from adit.protocol.errors import ProtocolUsageError, RpcProtocolError
from adit.protocol.framing import DEFAULT_MAX_MESSAGE_SIZE, MessageSplitter
from adit.protocol.registration import RegistrationResult
from adit.protocol.registration_codec import (
    REGISTER_CONNECTION,
    REGISTRATION_SERVER_INTERFACE_ID,
    UNREGISTER_CONNECTION,
    UPDATE_LOCAL_CONFIGURATION,
    build_empty,
    build_register_results,
    decode_register_params,
    decode_update_local_configuration_params,
    register_params_schema,
    update_local_configuration_params_schema,
)
from adit.protocol.rpc_events import (
    RegisterConnectionCalled,
    RpcAborted,
    ServerEvent,
    UnregisterConnectionCalled,
    UpdateLocalConfigurationCalled,
)
from adit.protocol.rpc_messages import (
    AbortMessage,
    BootstrapMessage,
    CallMessage,
    ExceptionType,
    FinishMessage,
    ImportedCapTarget,
    ReleaseMessage,
    ReturnMessage,
    RpcMessage,
    UnimplementedMessage,
    decode_message,
    encode_abort,
    encode_bootstrap_return,
    encode_exception_return,
    encode_results_return,
    encode_unimplemented,
    read_content,
)

__all__ = ["BOOTSTRAP_EXPORT_ID", "RegistrationServerSession"]

BOOTSTRAP_EXPORT_ID = 0
"""The export id of the ``RegistrationServer`` capability handed out by Bootstrap."""


class _AnswerKind(enum.Enum):
    BOOTSTRAP = enum.auto()
    REGISTER = enum.auto()
    UNREGISTER = enum.auto()
    UPDATE = enum.auto()
    SETTLED = enum.auto()  # answered by the session itself (an exception Return)


@dataclass(slots=True)
class _Answer:
    kind: _AnswerKind
    returned: bool
    finished: bool = False


class RegistrationServerSession:
    """The RPC server of one control stream, serving ``RegistrationServer`` to a connector."""

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._splitter = MessageSplitter(max_message_size=max_message_size)
        self._outgoing = bytearray()
        self._answers: dict[int, _Answer] = {}
        self._export_refs: dict[int, int] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once Abort was sent or received (or a protocol error occurred)."""
        return self._closed

    def receive_data(self, data: bytes) -> list[ServerEvent]:
        """Feed bytes from the connector; return the events they complete.

        Raises :class:`~adit.protocol.errors.RpcProtocolError` (or its subclass
        :class:`~adit.protocol.errors.FramingError`) if the peer broke the protocol; an Abort is
        then waiting in :meth:`data_to_send` and the connection should be closed. Events completed
        earlier in the same call are dropped with it: the connection is over anyway.
        """
        events: list[ServerEvent] = []
        if self._closed:
            return events
        try:
            for raw in self._splitter.feed(data):
                self._handle(decode_message(raw), events)
                if self.closed:  # an Abort ends the stream; later bytes are meaningless
                    break
        except RpcProtocolError as exc:
            self._abort(f"rpc: protocol error: {exc}")
            raise
        return events

    def data_to_send(self) -> bytes:
        """Bytes to write to the connector (possibly empty); each call drains them."""
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def answer_register(self, answer_id: int, result: RegistrationResult) -> None:
        """Return ``result`` for a :class:`RegisterConnectionCalled`."""
        if self._pending(answer_id, {_AnswerKind.REGISTER}):
            self._return(
                answer_id, encode_results_return(answer_id, build_register_results(result))
            )

    def answer_empty(self, answer_id: int) -> None:
        """Return normally from ``unregisterConnection`` or ``updateLocalConfiguration``."""
        if self._pending(answer_id, {_AnswerKind.UNREGISTER, _AnswerKind.UPDATE}):
            self._return(answer_id, encode_results_return(answer_id, build_empty()))

    def answer_exception(self, answer_id: int, reason: str) -> None:
        """Fail any pending call with an RPC exception (the connector sees an RPC error)."""
        kinds = {_AnswerKind.REGISTER, _AnswerKind.UNREGISTER, _AnswerKind.UPDATE}
        if self._pending(answer_id, kinds):
            self._return(answer_id, encode_exception_return(answer_id, reason))

    def close(self, reason: str = "rpc: shutdown") -> None:
        """Send ``Abort(reason)`` and stop; does nothing if already closed."""
        if not self._closed:
            self._abort(reason)

    def _abort(self, reason: str, exception_type: ExceptionType = "failed") -> None:
        self._outgoing += encode_abort(reason, exception_type)
        self._closed = True

    def _pending(self, answer_id: int, kinds: set[_AnswerKind]) -> bool:
        """Whether ``answer_id`` may be answered now; False (ignore) once the session closed."""
        if self._closed:
            return False
        answer = self._answers.get(answer_id)
        if answer is None or answer.returned or answer.kind not in kinds:
            raise ProtocolUsageError(f"no pending call of that kind with answer id {answer_id}")
        return True

    def _return(self, answer_id: int, message: bytes) -> None:
        self._outgoing += message
        answer = self._answers[answer_id]
        answer.returned = True
        if answer.finished:
            del self._answers[answer_id]

    def _new_answer(self, question_id: int, kind: _AnswerKind, *, returned: bool) -> None:
        if question_id in self._answers:
            raise RpcProtocolError(f"question id {question_id} is still in use")
        self._answers[question_id] = _Answer(kind=kind, returned=returned)

    def _fail_call(
        self, question_id: int, reason: str, exception_type: ExceptionType = "failed"
    ) -> None:
        self._new_answer(question_id, _AnswerKind.SETTLED, returned=True)
        self._outgoing += encode_exception_return(question_id, reason, exception_type)

    def _handle(self, message: RpcMessage, events: list[ServerEvent]) -> None:
        if isinstance(message, BootstrapMessage):
            self._new_answer(message.question_id, _AnswerKind.BOOTSTRAP, returned=True)
            self._outgoing += encode_bootstrap_return(message.question_id, BOOTSTRAP_EXPORT_ID)
            refs = self._export_refs.get(BOOTSTRAP_EXPORT_ID, 0)
            self._export_refs[BOOTSTRAP_EXPORT_ID] = refs + 1
        elif isinstance(message, CallMessage):
            self._handle_call(message, events)
        elif isinstance(message, FinishMessage):
            self._handle_finish(message)
        elif isinstance(message, ReleaseMessage):
            self._release(message.import_id, message.reference_count)
        elif isinstance(message, AbortMessage):
            events.append(RpcAborted(reason=message.reason))
            self._closed = True
        elif isinstance(message, ReturnMessage):
            raise RpcProtocolError(f"Return for question {message.answer_id}, which we never asked")
        elif isinstance(message, UnimplementedMessage):
            # We only ever send Return and Abort; a peer that cannot parse those cannot be helped,
            # and echoing Unimplemented back would loop.
            pass
        else:
            self._outgoing += encode_unimplemented(message.raw)

    def _target_is_registration_server(self, call: CallMessage) -> bool:
        target = call.target
        if isinstance(target, ImportedCapTarget):
            return self._export_refs.get(target.import_id, 0) > 0
        answer = self._answers.get(target.question_id)
        return (
            answer is not None
            and answer.kind is _AnswerKind.BOOTSTRAP
            and not answer.finished
            and all(op is None for op in target.transform)
        )

    def _handle_call(self, call: CallMessage, events: list[ServerEvent]) -> None:
        question_id = call.question_id
        if not self._target_is_registration_server(call):
            self._fail_call(question_id, f"rpc: call target {call.target} is not a capability")
            return
        if not call.results_to_caller:
            self._fail_call(question_id, "unimplemented: sendResultsTo", "unimplemented")
            return
        if call.interface_id != REGISTRATION_SERVER_INTERFACE_ID or call.method_id not in {
            REGISTER_CONNECTION,
            UNREGISTER_CONNECTION,
            UPDATE_LOCAL_CONFIGURATION,
        }:
            self._fail_call(
                question_id,
                f"unimplemented: method {call.method_id} of interface 0x{call.interface_id:016x}",
                "unimplemented",
            )
            return
        event: ServerEvent
        try:
            if call.method_id == REGISTER_CONNECTION:
                params = read_content(call.raw, register_params_schema, decode_register_params)
                kind = _AnswerKind.REGISTER
                event = RegisterConnectionCalled(
                    answer_id=question_id,
                    auth=params.auth,
                    tunnel_id=params.tunnel_id,
                    conn_index=params.conn_index,
                    options=params.options,
                )
            elif call.method_id == UPDATE_LOCAL_CONFIGURATION:
                config = read_content(
                    call.raw,
                    update_local_configuration_params_schema,
                    decode_update_local_configuration_params,
                )
                kind = _AnswerKind.UPDATE
                event = UpdateLocalConfigurationCalled(answer_id=question_id, config=config)
            else:
                kind = _AnswerKind.UNREGISTER
                event = UnregisterConnectionCalled(answer_id=question_id)
        except RpcProtocolError as exc:
            # Bad parameters fail the call, not the connection, as in any capnp implementation.
            self._fail_call(question_id, f"invalid parameters: {exc}")
            return
        self._new_answer(question_id, kind, returned=False)
        events.append(event)

    def _handle_finish(self, finish: FinishMessage) -> None:
        answer = self._answers.get(finish.question_id)
        if answer is None or answer.finished:
            raise RpcProtocolError(f"Finish for unknown question {finish.question_id}")
        if finish.release_result_caps and answer.kind is _AnswerKind.BOOTSTRAP:
            self._release(BOOTSTRAP_EXPORT_ID, 1)
        answer.finished = True
        if answer.returned:
            del self._answers[finish.question_id]

    def _release(self, export_id: int, count: int) -> None:
        refs = self._export_refs.get(export_id, 0)
        if count == 0:
            return
        if count > refs:
            raise RpcProtocolError(f"Release of {count} references to export {export_id} ({refs})")
        if refs == count:
            del self._export_refs[export_id]
        else:
            self._export_refs[export_id] = refs - count
