"""The server side of a Cap'n Proto RPC connection that serves one bootstrap capability (§3.4).

The peer bootstraps our one capability (export id 0), then calls it, first pipelined on the
bootstrap question (``promisedAnswer`` with an empty transform) and later on the import. Calls
of the methods a session serves become events; the application answers them with ``answer_*``.
Everything else of the RPC protocol that a single-capability server needs (Finish, Release,
Unimplemented, exception Returns) is handled by :class:`CapabilityServerSession`, which every
server session here is built on:

* :class:`RegistrationServerSession` — the edge serves ``RegistrationServer`` on the control
  stream (§4.3, §5.5);
* :mod:`adit.protocol.quic_rpc_server` — the QUIC transport's short RPC streams (§5.6, §6.1).

Invariants:

* An answer id is live from the peer's question until we have returned *and* the peer has sent
  Finish; a question reusing a live id is a protocol error.
* Every Call gets exactly one Return: from ``answer_*`` for the methods served, at once (an
  exception) for anything else.
* A protocol error queues ``Abort`` (for the caller to flush) and closes the session; so does
  :meth:`CapabilityServerSession.close`. A closed session ignores input and answers.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from adit.protocol.errors import ProtocolUsageError, RpcProtocolError
from adit.protocol.framing import DEFAULT_MAX_MESSAGE_SIZE, MessageSplitter
from adit.protocol.registration import RegistrationResult
from adit.protocol.registration_codec import (
    REGISTER_CONNECTION,
    REGISTRATION_SERVER_INTERFACE_ID,
    UNREGISTER_CONNECTION,
    UPDATE_LOCAL_CONFIGURATION,
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
    build_empty,
    decode_message,
    encode_abort,
    encode_bootstrap_return,
    encode_exception_return,
    encode_results_return,
    encode_unimplemented,
    read_content,
)

__all__ = [
    "BOOTSTRAP_EXPORT_ID",
    "CapabilityServerSession",
    "MethodKey",
    "RegistrationServerSession",
    "ServedMethod",
]

BOOTSTRAP_EXPORT_ID = 0
"""The export id of the capability handed out by Bootstrap."""

MethodKey = tuple[int, int]
"""A method as a Call names it: (interface id, method ordinal)."""

E = TypeVar("E")

# What a live answer is waiting for: the bootstrap capability, a served method, or nothing more
# ("settled": the session itself returned an exception and only the peer's Finish is missing).
_AnswerKind = MethodKey | Literal["bootstrap", "settled"]


@dataclass(frozen=True, slots=True)
class ServedMethod(Generic[E]):
    """A method a session serves: how to read its params, and the event a call of it becomes.

    ``to_event(answer_id, params)`` gets the params struct reader (``None`` when
    ``params_schema`` is ``None``: the method takes no parameters) and may raise
    :class:`RpcProtocolError` for values it rejects; that fails the call, not the connection.
    ``empty_results``: the method returns nothing, so ``answer_empty`` answers it.
    """

    params_schema: Any
    to_event: Callable[[int, Any], E]
    empty_results: bool = False


@dataclass(slots=True)
class _Answer:
    kind: _AnswerKind
    returned: bool
    finished: bool = False


class CapabilityServerSession(Generic[E]):
    """The RPC server of one stream, serving one bootstrap capability.

    ``methods`` are the methods the capability has; a subclass passes them in and adds
    ``answer_*`` methods for those with results (built on :meth:`_answer_results`).
    """

    def __init__(
        self,
        methods: Mapping[MethodKey, ServedMethod[E]],
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self._methods = methods
        self._empty_results = frozenset(key for key, m in methods.items() if m.empty_results)
        self._splitter = MessageSplitter(max_message_size=max_message_size)
        self._outgoing = bytearray()
        self._answers: dict[int, _Answer] = {}
        self._export_refs: dict[int, int] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once Abort was sent or received (or a protocol error occurred)."""
        return self._closed

    def receive_data(self, data: bytes) -> list[E | RpcAborted]:
        """Feed bytes from the peer; return the events they complete.

        Raises :class:`~adit.protocol.errors.RpcProtocolError` (or its subclass
        :class:`~adit.protocol.errors.FramingError`) if the peer broke the protocol; an Abort is
        then waiting in :meth:`data_to_send` and the connection should be closed. Events completed
        earlier in the same call are dropped with it: the connection is over anyway.
        """
        events: list[E | RpcAborted] = []
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
        """Bytes to write to the peer (possibly empty); each call drains them."""
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def answer_empty(self, answer_id: int) -> None:
        """Return normally from a pending call of a method whose results are empty."""
        if self._pending(answer_id, self._empty_results):
            self._return(answer_id, encode_results_return(answer_id, build_empty()))

    def answer_exception(self, answer_id: int, reason: str) -> None:
        """Fail any pending call with an RPC exception (the peer sees an RPC error)."""
        if self._pending(answer_id, self._methods.keys()):
            self._return(answer_id, encode_exception_return(answer_id, reason))

    def close(self, reason: str = "rpc: shutdown") -> None:
        """Send ``Abort(reason)`` and stop; does nothing if already closed."""
        if not self._closed:
            self._abort(reason)

    def _answer_results(self, answer_id: int, methods: Collection[MethodKey], results: Any) -> None:
        """Return ``results`` (a struct builder) for a pending call of one of ``methods``."""
        if self._pending(answer_id, methods):
            self._return(answer_id, encode_results_return(answer_id, results))

    def _not_implemented(self, interface_id: int, method_id: int) -> tuple[str, ExceptionType]:
        """The exception a call of a method we do not serve gets: reason and type."""
        reason = f"unimplemented: method {method_id} of interface 0x{interface_id:016x}"
        return reason, "unimplemented"

    def _abort(self, reason: str, exception_type: ExceptionType = "failed") -> None:
        self._outgoing += encode_abort(reason, exception_type)
        self._closed = True

    def _pending(self, answer_id: int, methods: Collection[MethodKey]) -> bool:
        """Whether ``answer_id`` may be answered now; False (ignore) once the session closed."""
        if self._closed:
            return False
        answer = self._answers.get(answer_id)
        if answer is None or answer.returned or answer.kind not in methods:
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
        self._new_answer(question_id, "settled", returned=True)
        self._outgoing += encode_exception_return(question_id, reason, exception_type)

    def _handle(self, message: RpcMessage, events: list[E | RpcAborted]) -> None:
        if isinstance(message, BootstrapMessage):
            self._new_answer(message.question_id, "bootstrap", returned=True)
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

    def _target_is_our_capability(self, call: CallMessage) -> bool:
        target = call.target
        if isinstance(target, ImportedCapTarget):
            return self._export_refs.get(target.import_id, 0) > 0
        answer = self._answers.get(target.question_id)
        return (
            answer is not None
            and answer.kind == "bootstrap"
            and not answer.finished
            and all(op is None for op in target.transform)
        )

    def _handle_call(self, call: CallMessage, events: list[E | RpcAborted]) -> None:
        question_id = call.question_id
        if not self._target_is_our_capability(call):
            self._fail_call(question_id, f"rpc: call target {call.target} is not a capability")
            return
        if not call.results_to_caller:
            self._fail_call(question_id, "unimplemented: sendResultsTo", "unimplemented")
            return
        key = (call.interface_id, call.method_id)
        method = self._methods.get(key)
        if method is None:
            self._fail_call(question_id, *self._not_implemented(*key))
            return
        try:
            if method.params_schema is None:
                event = method.to_event(question_id, None)
            else:
                event = read_content(
                    call.raw,
                    method.params_schema,
                    lambda params: method.to_event(question_id, params),
                )
        except RpcProtocolError as exc:
            # Bad parameters fail the call, not the connection, as in any capnp implementation.
            self._fail_call(question_id, f"invalid parameters: {exc}")
            return
        self._new_answer(question_id, key, returned=False)
        events.append(event)

    def _handle_finish(self, finish: FinishMessage) -> None:
        answer = self._answers.get(finish.question_id)
        if answer is None or answer.finished:
            raise RpcProtocolError(f"Finish for unknown question {finish.question_id}")
        if finish.release_result_caps and answer.kind == "bootstrap":
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


# -- RegistrationServer (the control stream) ----------------------------------------------------

_REGISTER = (REGISTRATION_SERVER_INTERFACE_ID, REGISTER_CONNECTION)
_UNREGISTER = (REGISTRATION_SERVER_INTERFACE_ID, UNREGISTER_CONNECTION)
_UPDATE = (REGISTRATION_SERVER_INTERFACE_ID, UPDATE_LOCAL_CONFIGURATION)


def _register_called(answer_id: int, reader: Any) -> RegisterConnectionCalled:
    params = decode_register_params(reader)
    return RegisterConnectionCalled(
        answer_id=answer_id,
        auth=params.auth,
        tunnel_id=params.tunnel_id,
        conn_index=params.conn_index,
        options=params.options,
    )


def _update_called(answer_id: int, reader: Any) -> UpdateLocalConfigurationCalled:
    return UpdateLocalConfigurationCalled(
        answer_id=answer_id, config=decode_update_local_configuration_params(reader)
    )


_REGISTRATION_METHODS: Mapping[MethodKey, ServedMethod[ServerEvent]] = {
    _REGISTER: ServedMethod(register_params_schema, _register_called),
    _UNREGISTER: ServedMethod(
        None,
        lambda answer_id, _: UnregisterConnectionCalled(answer_id=answer_id),
        empty_results=True,
    ),
    _UPDATE: ServedMethod(
        update_local_configuration_params_schema, _update_called, empty_results=True
    ),
}


class RegistrationServerSession(CapabilityServerSession[ServerEvent]):
    """The RPC server of one control stream, serving ``RegistrationServer`` to a connector.

    Answer :class:`RegisterConnectionCalled` with :meth:`answer_register`, and
    ``unregisterConnection`` / ``updateLocalConfiguration`` with :meth:`answer_empty`.
    """

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        super().__init__(_REGISTRATION_METHODS, max_message_size=max_message_size)

    def answer_register(self, answer_id: int, result: RegistrationResult) -> None:
        """Return ``result`` for a :class:`RegisterConnectionCalled`."""
        self._answer_results(answer_id, {_REGISTER}, build_register_results(result))
