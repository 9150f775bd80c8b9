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

The messages of a registration (Bootstrap, the call, the two Returns and their Finishes) and
``updateLocalConfiguration`` are written and read by :mod:`adit.protocol.registration_wire`,
without pycapnp: a worker registers before it ever imports it. Everything else (other
messages, malformed ones, unregistering, closing) goes through :mod:`adit.protocol.rpc_messages`,
imported when first needed.

Invariants: a question id is live from our message until its Return arrives; registration is
reported exactly once (:class:`RegistrationReturned` or :class:`RegistrationFailed`); a protocol
error queues Abort and closes the session, and a closed session ignores input.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from adit.protocol.rpc_messages import RpcMessage, UnimplementedMessage

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
        # Checked before any question id is taken: a refused call leaves the session as it was.
        wire.check_uint8("conn_index", conn_index)
        wire.check_uint8("compression_quality", options.compression_quality)
        wire.check_uint8("num_previous_attempts", options.num_previous_attempts)
        self._registration_started = True
        bootstrap_id = self._ask(_QuestionKind.BOOTSTRAP)
        self._outgoing += wire.encode_bootstrap(bootstrap_id)
        call_id = self._ask(_QuestionKind.REGISTER)
        self._outgoing += wire.encode_register_call(
            call_id,
            bootstrap_id,
            REGISTRATION_SERVER_INTERFACE_ID,
            REGISTER_CONNECTION,
            auth,
            tunnel_id,
            conn_index,
            options,
        )

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
            from adit.protocol.rpc_messages import ImportedCapTarget, encode_call

            return encode_call(
                question_id,
                ImportedCapTarget(import_id=import_id),
                REGISTRATION_SERVER_INTERFACE_ID,
                UNREGISTER_CONNECTION,
                build_empty(),
            )

        return self._call_import(encode)

    def close(self) -> None:
        """Release the edge's capability and send ``Abort("rpc: shutdown")``; idempotent."""
        if self._closed:
            return
        from adit.protocol.rpc_messages import encode_abort, encode_release

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

    def _call_import(self, encode: Callable[[int, int], bytes]) -> int:
        """Queue the call ``encode(question_id, import_id)`` writes; its question id."""
        self._check_open()
        if self._import_id is None:
            raise ProtocolUsageError("the edge's registration capability is not known yet")
        question_id = self._ask(_QuestionKind.CALL)
        self._outgoing += encode(question_id, self._import_id)
        return question_id

    def _report_registration(
        self, event: RegistrationReturned | RegistrationFailed
    ) -> list[ClientEvent]:
        if self._registration_reported:
            return []
        self._registration_reported = True
        return [event]

    def _handle(self, message: RpcMessage, events: list[ClientEvent]) -> None:
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

    def _handle_return(
        self,
        question_id: int,
        outcome: str,
        reason: str,
        cap_table: tuple[tuple[str, int], ...],
        raw: bytes,
        events: list[ClientEvent],
    ) -> None:
        """A Return: ``outcome`` is its union member, ``cap_table`` ``(kind, id)`` pairs."""
        kind = self._questions.pop(question_id, None)
        if kind is None:
            raise RpcProtocolError(f"Return for unknown question {question_id}")
        self._ids.give_back(question_id)
        self._outgoing += wire.encode_finish(question_id)
        failure = reason if outcome == "exception" else outcome
        if kind is _QuestionKind.BOOTSTRAP:
            caps = [entry for entry in cap_table if entry[0] in _CAPABILITY_KINDS]
            if outcome == "results" and caps:
                # The content is a pointer to the one capability in the cap table.
                self._import_id = caps[0][1]
                self._import_refs += 1
            else:
                no_cap = outcome == "results"
                reason = "bootstrap returned no capability" if no_cap else failure
                events += self._report_registration(RegistrationFailed(reason=reason))
        elif kind is _QuestionKind.REGISTER:
            if outcome == "results":
                result = wire.decode_register_results(raw)
                if result is None:
                    from adit.protocol.registration_codec import (
                        decode_register_results,
                        register_results_schema,
                    )
                    from adit.protocol.rpc_messages import read_content

                    result = read_content(raw, register_results_schema, decode_register_results)
                events += self._report_registration(RegistrationReturned(result=result))
            else:
                events += self._report_registration(RegistrationFailed(reason=failure))
        elif outcome == "results":
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
