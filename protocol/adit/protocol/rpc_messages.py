"""Cap'n Proto RPC messages as plain values, and their encoders (PROTOCOL.md §3.4).

pycapnp does the (de)serialisation against our restatement of ``rpc.capnp`` (see
``capnp_schema/rpc.capnp`` for why it is not pycapnp's own copy). Readers are only valid while
their buffer is open, so :func:`decode_message` copies everything the sessions need into frozen
values right away; call parameters and return results stay in the message bytes (``raw``) and are
read on demand with :func:`read_content`, once the session knows which struct to expect.

Builders are laid out in the order go-capnproto2 allocates objects, so the client's messages are
byte-identical to cloudflared's (the golden vectors check this).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import capnp

from adit.protocol.errors import RpcProtocolError
from adit.protocol.rpc_targets import CallTarget, ImportedCapTarget, PromisedAnswerTarget
from adit.protocol.values import Value

__all__ = [
    "AbortMessage",
    "BootstrapMessage",
    "CallMessage",
    "CallTarget",
    "CapDescriptor",
    "ExceptionType",
    "FinishMessage",
    "ImportedCapTarget",
    "OtherMessage",
    "PromisedAnswerTarget",
    "ReleaseMessage",
    "ReturnMessage",
    "RpcMessage",
    "UnimplementedMessage",
    "build_empty",
    "decode_message",
    "encode_abort",
    "encode_bootstrap",
    "encode_bootstrap_return",
    "encode_call",
    "encode_exception_return",
    "encode_finish",
    "encode_release",
    "encode_results_return",
    "encode_unimplemented",
    "read_content",
    "struct_module",
    "struct_schema",
    "tunnelrpc",
    "union_member",
    "uuid_from_data",
]

_SCHEMA_DIR = Path(__file__).with_name("capnp_schema")
# A private parser: loading our rpc.capnp into pycapnp's global parser could collide with its
# bundled rpc.capnp, which has the same file id but a different Exception layout.
_PARSER = capnp.SchemaParser()
_rpc: Any = _PARSER.load(str(_SCHEMA_DIR / "rpc.capnp"), imports=[])
tunnelrpc: Any = _PARSER.load(str(_SCHEMA_DIR / "tunnelrpc.capnp"), imports=[])
"""The loaded ``tunnelrpc.capnp`` module (cloudflared's tunnel structs and interfaces)."""

_WORD = 8
_NESTING_LIMIT = 64
# A capability pointer (kind 3) to cap-table index 0: see encode_bootstrap_return.
_CAPABILITY_POINTER_0 = struct.pack("<II", 3, 0)
_EMPTY_STRUCT_POINTER = struct.pack("<iI", -4, 0)

ExceptionType = Literal["failed", "overloaded", "disconnected", "unimplemented"]
T = TypeVar("T")


class CapDescriptor(Value, frozen=True):
    """One cap-table entry of a payload, e.g. ``("senderHosted", 0)``."""

    kind: str
    id: int


class BootstrapMessage(Value, frozen=True):
    """``Bootstrap``: the peer asks for our bootstrap capability."""

    question_id: int


class CallMessage(Value, frozen=True):
    """``Call``: a method call; the parameters stay in ``raw`` (see :func:`read_content`)."""

    question_id: int
    target: CallTarget
    interface_id: int
    method_id: int
    results_to_caller: bool
    raw: bytes

    hidden_in_repr: ClassVar[frozenset[str]] = frozenset({"raw"})


class ReturnMessage(Value, frozen=True):
    """``Return``: the answer to one of our questions.

    ``outcome`` is the union member that was set; ``reason`` is filled for exceptions and
    ``cap_table`` for results; the results content stays in ``raw``.
    """

    answer_id: int
    outcome: str
    reason: str
    cap_table: tuple[CapDescriptor, ...]
    raw: bytes

    hidden_in_repr: ClassVar[frozenset[str]] = frozenset({"raw"})


class FinishMessage(Value, frozen=True):
    """``Finish``: the peer is done with the answer to its question."""

    question_id: int
    release_result_caps: bool


class ReleaseMessage(Value, frozen=True):
    """``Release``: the peer drops ``reference_count`` references to one of our exports."""

    import_id: int
    reference_count: int


class AbortMessage(Value, frozen=True):
    """``Abort``: the peer is closing the RPC connection."""

    reason: str
    type: str


class UnimplementedMessage(Value, frozen=True):
    """``Unimplemented``: the peer did not understand a message we sent.

    ``kind`` and ``question_id`` describe the echoed message when it was a Call or Bootstrap.
    """

    kind: str | None
    question_id: int | None


class OtherMessage(Value, frozen=True):
    """Any other message kind (Resolve, Disembargo, ... or one unknown to our schema), or a Call
    whose target kind our schema does not know (``kind`` is then ``"call"``)."""

    kind: str | None
    raw: bytes

    hidden_in_repr: ClassVar[frozenset[str]] = frozenset({"raw"})


RpcMessage = (
    BootstrapMessage
    | CallMessage
    | ReturnMessage
    | FinishMessage
    | ReleaseMessage
    | AbortMessage
    | UnimplementedMessage
    | OtherMessage
)


def struct_schema(interface: Any, method: str, *, results: bool = False) -> Any:
    """The params (or results) struct schema of ``interface.method``."""
    schema = interface.schema.methods[method]
    return schema.result_type if results else schema.param_type


def _open(data: bytes) -> Any:
    # Bounding the traversal to a small multiple of the message size stops pointer-amplification
    # messages from costing more work than their size.
    limit = 4 * (len(data) // _WORD) + 1024
    return _rpc.Message.from_bytes(
        data, traversal_limit_in_words=limit, nesting_limit=_NESTING_LIMIT
    )


# What pycapnp raises for bytes it cannot read: KjException for a malformed message (bad
# pointers, limits, schema mismatches), UnicodeDecodeError for a Text field that is not UTF-8.
# Readers catch exactly these at the trust boundary; anything else escaping is a bug of ours.
_MALFORMED = (capnp.KjException, UnicodeDecodeError)


def union_member(reader: Any) -> str | None:
    """The union member set in ``reader``, or None if our schema does not know it."""
    try:
        return str(reader.which())
    except (capnp.KjException, RuntimeError):
        # pycapnp cannot name a discriminant value missing from the schema.
        return None


def _enum_name(value: Any) -> str:
    """An enum field's name; a value our schema does not know reads as ``unknown(N)``."""
    try:
        return str(value)
    except RuntimeError:
        # pycapnp's "Member was null.": the value is not in the schema's enumerants.
        return f"unknown({value.raw})"


def decode_message(data: bytes) -> RpcMessage:
    """Decode one framed RPC message; raise :class:`RpcProtocolError` if it is malformed."""
    try:
        with _open(data) as message:
            return _decode(message, data)
    except _MALFORMED as exc:
        raise RpcProtocolError(f"malformed capnp RPC message: {exc}") from exc


def _decode(message: Any, raw: bytes) -> RpcMessage:
    kind = union_member(message)
    if kind == "bootstrap":
        return BootstrapMessage(question_id=message.bootstrap.questionId)
    if kind == "call":
        call = message.call
        target = _decode_target(call.target)
        if target is None:
            # A target kind newer than our schema: go-capnproto2 echoes such a call as
            # Unimplemented (rpc/rpc.go handleCallMessage), which OtherMessage gets.
            return OtherMessage(kind=kind, raw=raw)
        return CallMessage(
            question_id=call.questionId,
            target=target,
            interface_id=call.interfaceId,
            method_id=call.methodId,
            results_to_caller=union_member(call.sendResultsTo) == "caller",
            raw=raw,
        )
    if kind == "return":
        ret = getattr(message, "return")
        outcome = union_member(ret) or "unknown"
        reason = ""
        cap_table: tuple[CapDescriptor, ...] = ()
        if outcome == "exception":
            reason = str(ret.exception.reason)
        elif outcome == "results":
            cap_table = tuple(_decode_cap(entry) for entry in ret.results.capTable)
        return ReturnMessage(
            answer_id=ret.answerId, outcome=outcome, reason=reason, cap_table=cap_table, raw=raw
        )
    if kind == "finish":
        finish = message.finish
        return FinishMessage(
            question_id=finish.questionId, release_result_caps=finish.releaseResultCaps
        )
    if kind == "release":
        release = message.release
        return ReleaseMessage(import_id=release.id, reference_count=release.referenceCount)
    if kind == "abort":
        return AbortMessage(reason=str(message.abort.reason), type=_enum_name(message.abort.type))
    if kind == "unimplemented":
        echoed = message.unimplemented
        echoed_kind = union_member(echoed)
        question_id: int | None = None
        if echoed_kind == "call":
            question_id = echoed.call.questionId
        elif echoed_kind == "bootstrap":
            question_id = echoed.bootstrap.questionId
        return UnimplementedMessage(kind=echoed_kind, question_id=question_id)
    return OtherMessage(kind=kind, raw=raw)


def _decode_target(target: Any) -> CallTarget | None:
    kind = union_member(target)
    if kind == "importedCap":
        return ImportedCapTarget(import_id=target.importedCap)
    if kind == "promisedAnswer":
        promised = target.promisedAnswer
        transform = tuple(
            op.getPointerField if union_member(op) == "getPointerField" else None
            for op in promised.transform
        )
        return PromisedAnswerTarget(question_id=promised.questionId, transform=transform)
    return None


def uuid_from_data(data: bytes, what: str) -> uuid.UUID:
    """The UUID in the Data field ``what``; :class:`RpcProtocolError` unless it is 16 bytes (Go's
    ``uuid.FromBytes``, which cloudflared uses for every id it reads, refuses the same)."""
    if len(data) != 16:
        raise RpcProtocolError(f"{what} must be 16 bytes, got {len(data)}")
    return uuid.UUID(bytes=bytes(data))


def _decode_cap(entry: Any) -> CapDescriptor:
    kind = union_member(entry) or "unknown"
    value = (
        getattr(entry, kind) if kind in {"senderHosted", "senderPromise", "receiverHosted"} else 0
    )
    return CapDescriptor(kind=kind, id=int(value))


def read_content(raw: bytes, schema: Any, decode: Callable[[Any], T]) -> T:
    """Read the params of a Call or the results of a Return in ``raw`` as ``schema``.

    ``decode`` turns the struct reader into plain values while the buffer is open, raising
    :class:`RpcProtocolError` for values it rejects. Anything the bytes cannot satisfy
    surfaces as :class:`RpcProtocolError` too.
    """
    try:
        with _open(raw) as message:
            kind = union_member(message)
            if kind == "call":
                payload = message.call.params
            elif kind == "return":
                payload = getattr(message, "return").results
            else:
                raise RpcProtocolError(f"{kind!r} message carries no payload")
            return decode(payload.content.as_struct(schema))
    except _MALFORMED as exc:
        raise RpcProtocolError(f"malformed RPC payload: {exc}") from exc


def _serialise(message: Any) -> bytes:
    return bytes(message.to_bytes())


def encode_bootstrap(question_id: int) -> bytes:
    """``Bootstrap(questionId)``."""
    message = _rpc.Message.new_message()
    message.init("bootstrap").questionId = question_id
    return _serialise(message)


def encode_call(
    question_id: int, target: CallTarget, interface_id: int, method_id: int, params: Any
) -> bytes:
    """``Call`` with ``params`` (a struct builder) as content, results sent to the caller."""
    message = _rpc.Message.new_message()
    call = message.init("call")
    call.questionId = question_id
    target_builder = call.init("target")
    if isinstance(target, ImportedCapTarget):
        target_builder.importedCap = target.import_id
    else:
        promised = target_builder.init("promisedAnswer")
        promised.questionId = target.question_id
        ops = promised.init("transform", len(target.transform))
        for op, value in zip(ops, target.transform, strict=True):
            if value is None:
                op.noop = None
            else:
                op.getPointerField = value
    call.interfaceId = interface_id
    call.methodId = method_id
    payload = call.init("params")
    payload.content = params
    payload.init("capTable", 0)
    call.sendResultsTo.caller = None
    return _serialise(message)


def encode_results_return(answer_id: int, results: Any) -> bytes:
    """``Return`` carrying ``results`` (a struct builder) and no capabilities."""
    message = _rpc.Message.new_message()
    ret = message.init("return")
    ret.answerId = answer_id
    ret.releaseParamCaps = False
    payload = ret.init("results")
    payload.content = results
    payload.init("capTable", 0)
    return _serialise(message)


def encode_bootstrap_return(answer_id: int, export_id: int) -> bytes:
    """``Return`` whose content is our bootstrap capability, exported as ``export_id``.

    pycapnp can only write capability pointers through a live RPC system with a cap table, which
    a sans-IO engine does not have. So we build the message with an empty-struct placeholder as
    content and then overwrite that one pointer word with the capability pointer (kind 3, cap
    table index 0). The layout is fixed (root, Message, Return, Payload...), and the placeholder
    is checked before it is replaced.
    """
    message = _rpc.Message.new_message()
    ret = message.init("return")
    ret.answerId = answer_id
    ret.releaseParamCaps = False
    payload = ret.init("results")
    payload.content = _EMPTY.new_message()
    entries = payload.init("capTable", 1)
    entries[0].senderHosted = export_id
    data = bytearray(_serialise(message))
    # Framing header (8) + root pointer (1 word) + Message (2) + Return (2 data + 1 pointer).
    content_offset = _WORD + _WORD * 6
    if data[:4] != b"\x00\x00\x00\x00" or (
        data[content_offset : content_offset + _WORD] != _EMPTY_STRUCT_POINTER
    ):
        raise AssertionError("unexpected layout of the bootstrap Return")
    data[content_offset : content_offset + _WORD] = _CAPABILITY_POINTER_0
    return bytes(data)


def encode_exception_return(
    answer_id: int, reason: str, exception_type: ExceptionType = "failed"
) -> bytes:
    """``Return`` carrying an exception."""
    message = _rpc.Message.new_message()
    ret = message.init("return")
    ret.answerId = answer_id
    ret.releaseParamCaps = False
    exception = ret.init("exception")
    exception.reason = reason
    exception.type = exception_type
    return _serialise(message)


def encode_finish(question_id: int) -> bytes:
    """``Finish(questionId)`` keeping result caps, as cloudflared sends it."""
    message = _rpc.Message.new_message()
    finish = message.init("finish")
    finish.questionId = question_id
    finish.releaseResultCaps = False
    return _serialise(message)


def encode_release(import_id: int, reference_count: int) -> bytes:
    """``Release(id, referenceCount)``."""
    message = _rpc.Message.new_message()
    release = message.init("release")
    release.id = import_id
    release.referenceCount = reference_count
    return _serialise(message)


def encode_abort(reason: str, exception_type: ExceptionType = "failed") -> bytes:
    """``Abort(reason, type)``: the last message before closing the RPC connection."""
    message = _rpc.Message.new_message()
    abort = message.init("abort")
    abort.reason = reason
    abort.type = exception_type
    return _serialise(message)


def encode_unimplemented(raw: bytes) -> bytes:
    """``Unimplemented`` echoing the framed message ``raw`` (copied verbatim, unknown parts too)."""
    try:
        with _open(raw) as original:
            message = _rpc.Message.new_message()
            message.unimplemented = original
            return _serialise(message)
    except _MALFORMED as exc:
        # The echoed message came from the peer.
        raise RpcProtocolError(f"cannot echo malformed message: {exc}") from exc


def struct_module(schema: Any, name: str) -> Any:
    """A pycapnp struct module (``new_message`` and friends) for a bare struct schema.

    Method parameter and result structs have no module attribute in pycapnp, and the only way to
    build one is this (underscored but stable since pycapnp 1.0) constructor.
    """
    return capnp.lib.capnp._StructModule(schema, name)


_EMPTY: Any = struct_module(
    struct_schema(tunnelrpc.RegistrationServer, "unregisterConnection"), "Empty"
)


def build_empty() -> Any:
    """An empty struct builder: the params or results of any method that has none (struct ids
    never reach the wire, so one empty struct serves them all)."""
    return _EMPTY.new_message()
