"""The client side of a Cap'n Proto RPC connection, byte-compatible with cloudflared (§3.4).

:class:`CapabilityClientSession` calls the peer's bootstrap capability the way go-capnproto2 v2
(cloudflared's RPC library) does: the first call writes ``Bootstrap`` and the call pipelined on
it (``promisedAnswer``, empty transform) before any answer arrives; once the bootstrap Return
brings the peer's capability it becomes our import and later calls address it directly. Every
Return is followed by a Finish, and :meth:`~CapabilityClientSession.close` releases the import
and aborts, all down to the bytes. Every client session here is built on it:

* :class:`RegistrationClientSession` — the connector calls the edge's ``RegistrationServer`` on
  the control stream (§4.3, §5.5);
* :mod:`adit.protocol.quic_rpc_client` — the QUIC transport's short RPC streams (§5.6, §6.1).

Question ids come from go-capnproto2's generator: a freed id goes on a stack and the most recently
freed one is reused first (so after Bootstrap q0 and the call q1 both return, the next call is
q1 again, as in the golden vectors).

The messages of a registration (Bootstrap, the call, the two Returns and their Finishes) and
``updateLocalConfiguration`` are written and read by :mod:`adit.protocol.registration_wire`,
without pycapnp: a worker registers before it ever imports it. Everything else (other
messages, malformed ones, other calls, closing) goes through :mod:`adit.protocol.rpc_messages`,
imported when first needed.

Invariants: a question id is live from our message until its Return arrives; a protocol error
queues Abort and closes the session, and a closed session ignores input.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from adit.protocol import registration_wire as wire
from adit.protocol.errors import ProtocolUsageError, RpcProtocolError
from adit.protocol.framing import DEFAULT_MAX_MESSAGE_SIZE, MessageSplitter
from adit.protocol.registration import ConnectionOptions, TunnelAuth
from adit.protocol.registration_wire import (
    REGISTER_CONNECTION,
    REGISTRATION_SERVER_INTERFACE_ID,
    UNREGISTER_CONNECTION,
    UPDATE_LOCAL_CONFIGURATION,
)
from adit.protocol.rpc_events import (
    CallFailed,
    CallReturned,
    ClientEvent,
    RegistrationFailed,
    RegistrationReturned,
    RpcAborted,
)
from adit.protocol.rpc_targets import CallTarget, ImportedCapTarget, PromisedAnswerTarget

if TYPE_CHECKING:
    from adit.protocol.rpc_messages import RpcMessage, UnimplementedMessage

__all__ = ["SHUTDOWN_REASON", "CapabilityClientSession", "RegistrationClientSession"]

SHUTDOWN_REASON = "rpc: shutdown"
"""The Abort reason go-capnproto2 sends when a connection is closed normally."""

_CAPABILITY_KINDS = frozenset({"senderHosted", "senderPromise"})

K = TypeVar("K")
E = TypeVar("E")


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


class CapabilityClientSession(Generic[K, E]):
    """The RPC client of one stream, calling the peer's bootstrap capability.

    ``K`` is what a subclass records about each call it makes (passed to :meth:`_call`), ``E``
    the events it reports. A subclass turns Returns into events in :meth:`_returned`.
    """

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._splitter = MessageSplitter(max_message_size=max_message_size)
        self._outgoing = bytearray()
        self._ids = _QuestionIds()
        self._questions: dict[int, K] = {}
        self._bootstrap_question: int | None = None
        self._bootstrap_failure: str | None = None
        self._import_id: int | None = None
        self._import_refs = 0
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once Abort was sent or received (or a protocol error occurred)."""
        return self._closed

    @property
    def capability(self) -> int | None:
        """The import id of the peer's bootstrap capability, once its bootstrap returned."""
        return self._import_id

    def close(self) -> None:
        """Release the peer's capability and send ``Abort("rpc: shutdown")``; idempotent."""
        if self._closed:
            return
        from adit.protocol.rpc_messages import encode_abort, encode_release

        # go-capnproto2 queues this Release on its send channel just before Conn.Close cancels
        # the sender (vendor/zombiezen.com/go/capnproto2/rpc/transport.go dispatchSend), so
        # cloudflared sends it on the control stream but not always on short RPC streams (the
        # unregisterUdpSession vector lacks it). Abort ends the connection either way.
        if self._import_id is not None and self._import_refs:
            self._outgoing += encode_release(self._import_id, self._import_refs)
            self._import_refs = 0
        self._outgoing += encode_abort(SHUTDOWN_REASON)
        self._closed = True

    def receive_data(self, data: bytes) -> list[E | RpcAborted]:
        """Feed bytes from the peer; return the events they complete.

        Raises :class:`~adit.protocol.errors.RpcProtocolError` if the peer broke the protocol;
        an Abort is then waiting in :meth:`data_to_send`. Events completed
        earlier in the same call are dropped with it: the connection is over anyway.
        """
        events: list[E | RpcAborted] = []
        if self._closed:
            return events
        try:
            for raw in self._splitter.feed(data):
                read = wire.decode_return(raw)
                if read is not None:
                    self._handle_return(
                        read.answer_id, read.outcome, read.reason, read.cap_table, raw, events
                    )
                else:
                    from adit.protocol.rpc_messages import decode_message

                    self._handle(decode_message(raw), events)
                if self.closed:  # an Abort ends the stream; later bytes are meaningless
                    break
        except RpcProtocolError as exc:
            from adit.protocol.rpc_messages import encode_abort

            self._outgoing += encode_abort(f"rpc: protocol error: {exc}")
            self._closed = True
            raise
        return events

    def data_to_send(self) -> bytes:
        """Bytes to write to the peer (possibly empty); each call drains them."""
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    # -- for subclasses ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ProtocolUsageError("the RPC session is closed")

    def _call(self, kind: K, encode: Callable[[int, CallTarget], bytes]) -> int:
        """Queue the call ``encode(question_id, target)`` writes; return its question id.

        The target is the import once the bootstrap has returned, else the bootstrap question,
        asked first if need be (go-capnproto2's ``Conn.Bootstrap`` and
        ``question.lockedPipelineCall``, vendor/zombiezen.com/go/capnproto2/rpc/).
        """
        self._check_open()
        if self._bootstrap_failure is not None:
            raise ProtocolUsageError(f"the peer has no capability: {self._bootstrap_failure}")
        target: CallTarget
        if self._import_id is not None:
            target = ImportedCapTarget(import_id=self._import_id)
        else:
            if self._bootstrap_question is None:
                self._bootstrap_question = self._ids.take()
                self._outgoing += wire.encode_bootstrap(self._bootstrap_question)
            target = PromisedAnswerTarget(question_id=self._bootstrap_question, transform=())
        question_id = self._ids.take()
        self._questions[question_id] = kind
        self._outgoing += encode(question_id, target)
        return question_id

    def _returned(self, question_id: int, kind: K, failure: str | None, raw: bytes) -> list[E]:
        """The events of the answer to our call ``question_id``.

        ``failure`` is ``None`` when it returned results (in the Return message ``raw``), else
        why it failed.
        """
        raise NotImplementedError

    def _bootstrap_failed(self, reason: str) -> list[E]:
        """The events of a bootstrap that brought no capability (none by default: every call
        pipelined on it fails on its own)."""
        return []

    # -- internals ---------------------------------------------------------------------------

    def _handle(self, message: RpcMessage, events: list[E | RpcAborted]) -> None:
        from adit.protocol.rpc_messages import (
            AbortMessage,
            BootstrapMessage,
            CallMessage,
            FinishMessage,
            ReleaseMessage,
            ReturnMessage,
            UnimplementedMessage,
            encode_exception_return,
            encode_unimplemented,
        )

        if isinstance(message, ReturnMessage):
            caps = tuple((entry.kind, entry.id) for entry in message.cap_table)
            self._handle_return(
                message.answer_id, message.outcome, message.reason, caps, message.raw, events
            )
        elif isinstance(message, UnimplementedMessage):
            self._handle_unimplemented(message, events)
        elif isinstance(message, AbortMessage):
            events.append(RpcAborted(reason=message.reason))
            self._closed = True
        elif isinstance(message, BootstrapMessage):
            # Like cloudflared as a client, we offer no bootstrap capability.
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

    def _handle_return(
        self,
        question_id: int,
        outcome: str,
        reason: str,
        cap_table: tuple[tuple[str, int], ...],
        raw: bytes,
        events: list[E | RpcAborted],
    ) -> None:
        """A Return: ``outcome`` is its union member, ``cap_table`` ``(kind, id)`` pairs."""
        failure = None if outcome == "results" else (reason if outcome == "exception" else outcome)
        if question_id == self._bootstrap_question:
            self._answered(question_id)
            caps = [entry for entry in cap_table if entry[0] in _CAPABILITY_KINDS]
            if failure is None and caps:
                # The content is a pointer to the one capability in the cap table.
                self._import_id = caps[0][1]
                self._import_refs += 1
            else:
                self._bootstrap_failure = failure or "bootstrap returned no capability"
                events += self._bootstrap_failed(self._bootstrap_failure)
            return
        if question_id not in self._questions:
            raise RpcProtocolError(f"Return for unknown question {question_id}")
        kind = self._questions.pop(question_id)
        self._answered(question_id)
        events += self._returned(question_id, kind, failure, raw)

    def _answered(self, question_id: int) -> None:
        self._ids.give_back(question_id)
        self._outgoing += wire.encode_finish(question_id)
        if question_id == self._bootstrap_question:
            self._bootstrap_question = None

    def _handle_unimplemented(
        self, message: UnimplementedMessage, events: list[E | RpcAborted]
    ) -> None:
        question_id = message.question_id
        if question_id is None:
            return
        reason = f"unimplemented: the peer does not understand {message.kind}"
        # The peer never saw the question, so it needs no Finish; the id is free again.
        if message.kind == "bootstrap" and question_id == self._bootstrap_question:
            self._ids.give_back(question_id)
            self._bootstrap_question = None
            self._bootstrap_failure = reason
            events += self._bootstrap_failed(reason)
        elif message.kind == "call" and question_id in self._questions:
            kind = self._questions.pop(question_id)
            self._ids.give_back(question_id)
            events += self._returned(question_id, kind, reason, b"")


# -- RegistrationServer (the control stream) ----------------------------------------------------


class _QuestionKind(enum.Enum):
    REGISTER = enum.auto()
    CALL = enum.auto()


class RegistrationClientSession(CapabilityClientSession[_QuestionKind, ClientEvent]):
    """The RPC client of one control stream, calling the edge's ``RegistrationServer``.

    Registration is reported exactly once (:class:`RegistrationReturned` or
    :class:`RegistrationFailed`); the other calls report :class:`CallReturned` or
    :class:`CallFailed`.
    """

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        super().__init__(max_message_size=max_message_size)
        self._registration_started = False
        self._registration_reported = False

    @property
    def registration_capability(self) -> int | None:
        """The import id of the edge's ``RegistrationServer``, once its bootstrap returned."""
        return self.capability

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
        # Checked before any question id is taken: a refused call leaves the session as it was.
        wire.check_uint8("conn_index", conn_index)
        wire.check_uint8("compression_quality", options.compression_quality)
        wire.check_uint8("num_previous_attempts", options.num_previous_attempts)
        self._registration_started = True

        def encode(question_id: int, target: CallTarget) -> bytes:
            # The first call of the session: always pipelined on the bootstrap question.
            if not isinstance(target, PromisedAnswerTarget):
                raise AssertionError("registerConnection must be the session's first call")
            return wire.encode_register_call(
                question_id,
                target.question_id,
                REGISTRATION_SERVER_INTERFACE_ID,
                REGISTER_CONNECTION,
                auth,
                tunnel_id,
                conn_index,
                options,
            )

        self._call(_QuestionKind.REGISTER, encode)

    def update_local_configuration(self, config: bytes) -> int:
        """Call ``updateLocalConfiguration(config)``; return the question id of the call."""

        def encode(question_id: int, import_id: int) -> bytes:
            return wire.encode_update_local_configuration_call(
                question_id,
                import_id,
                REGISTRATION_SERVER_INTERFACE_ID,
                UPDATE_LOCAL_CONFIGURATION,
                config,
            )

        return self._call_import(encode)

    def unregister(self) -> int:
        """Call ``unregisterConnection()``; return the question id of the call."""

        def encode(question_id: int, import_id: int) -> bytes:
            from adit.protocol.registration_codec import build_empty
            from adit.protocol.rpc_messages import encode_call

            return encode_call(
                question_id,
                ImportedCapTarget(import_id=import_id),
                REGISTRATION_SERVER_INTERFACE_ID,
                UNREGISTER_CONNECTION,
                build_empty(),
            )

        return self._call_import(encode)

    def _call_import(self, encode: Callable[[int, int], bytes]) -> int:
        """Queue the call ``encode(question_id, import_id)`` writes on the edge's capability.

        Unlike cloudflared, which would pipeline it, this refuses a call before registration
        has brought the capability: the connector has nothing to say to an unregistered edge.
        """
        self._check_open()
        if self._import_id is None:
            raise ProtocolUsageError("the edge's registration capability is not known yet")

        def on_import(question_id: int, target: CallTarget) -> bytes:
            if not isinstance(target, ImportedCapTarget):
                raise AssertionError("a call after registration goes to the import")
            return encode(question_id, target.import_id)

        return self._call(_QuestionKind.CALL, on_import)

    def _report_registration(
        self, event: RegistrationReturned | RegistrationFailed
    ) -> list[ClientEvent]:
        if self._registration_reported:
            return []
        self._registration_reported = True
        return [event]

    def _bootstrap_failed(self, reason: str) -> list[ClientEvent]:
        return self._report_registration(RegistrationFailed(reason=reason))

    def _returned(
        self, question_id: int, kind: _QuestionKind, failure: str | None, raw: bytes
    ) -> list[ClientEvent]:
        if kind is _QuestionKind.CALL:
            if failure is None:
                return [CallReturned(question_id=question_id)]
            return [CallFailed(question_id=question_id, reason=failure)]
        if failure is not None:
            return self._report_registration(RegistrationFailed(reason=failure))
        result = wire.decode_register_results(raw)
        if result is None:
            from adit.protocol.registration_codec import (
                decode_register_results,
                register_results_schema,
            )
            from adit.protocol.rpc_messages import read_content

            result = read_content(raw, register_results_schema, decode_register_results)
        return self._report_registration(RegistrationReturned(result=result))
