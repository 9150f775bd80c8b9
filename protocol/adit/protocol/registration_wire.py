"""The connector's own registration messages, written and read without pycapnp.

A worker's first registration needs four messages: Bootstrap and the pipelined
``registerConnection`` Call out, two Returns in (then a Finish for each). Importing pycapnp and
parsing the schemas costs ~15 ms of the worker's start, all of it before the first dial; these
few fixed layouts do not need it. Messages are laid out exactly as pycapnp lays them out (depth
first, in field order: go-capnproto2's order, see :mod:`adit.protocol.registration_codec`); the
tests check byte equality with the pycapnp encoders.

The readers only accept what they fully understand: one segment, struct and list pointers
within it, known union members, valid UTF-8. Anything else makes them return ``None`` and the
caller decodes with pycapnp (:mod:`adit.protocol.rpc_messages`), which reports malformed input.
"""

from __future__ import annotations

import struct
import uuid

from adit.protocol.errors import ProtocolUsageError
from adit.protocol.registration import (
    ConnectionDetails,
    ConnectionOptions,
    RegistrationError,
    RegistrationResult,
    TunnelAuth,
)

__all__ = [
    "REGISTER_CONNECTION",
    "REGISTRATION_SERVER_INTERFACE_ID",
    "UNREGISTER_CONNECTION",
    "UPDATE_LOCAL_CONFIGURATION",
    "ReadReturn",
    "check_fits",
    "check_uint8",
    "decode_register_results",
    "decode_return",
    "encode_bootstrap",
    "encode_finish",
    "encode_register_call",
    "encode_update_local_configuration_call",
]

REGISTRATION_SERVER_INTERFACE_ID = 0xF71695EC7FE85497
REGISTER_CONNECTION = 0
UNREGISTER_CONNECTION = 1
UPDATE_LOCAL_CONFIGURATION = 2

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_U8_RANGE = range(256)

# Message union members and Return union members (rpc.capnp).
_MESSAGE_CALL = 2
_MESSAGE_RETURN = 3
_MESSAGE_FINISH = 4
_MESSAGE_BOOTSTRAP = 8
_RETURN_KINDS = {0: "results", 1: "exception"}
_CAP_KINDS = {
    0: "none",
    1: "senderHosted",
    2: "senderPromise",
    3: "receiverHosted",
    4: "receiverAnswer",
    5: "thirdPartyHosted",
}
_WITH_ID = frozenset({"senderHosted", "senderPromise", "receiverHosted"})
# List element sizes.
_BYTE = 2
_POINTER = 6
_COMPOSITE = 7


def check_fits(name: str, value: int, allowed: range, type_name: str) -> None:
    """Raise :class:`ProtocolUsageError` unless ``value`` is in ``allowed``, the values of the
    capnp integer type ``type_name`` (e.g. ``"a UInt8"``) of the field ``name``."""
    if value not in allowed:
        raise ProtocolUsageError(f"{name} must fit in {type_name}, got {value}")


def check_uint8(name: str, value: int) -> None:
    """Raise :class:`ProtocolUsageError` unless ``value`` fits in a UInt8 field."""
    check_fits(name, value, _U8_RANGE, "a UInt8")


# -- writing ------------------------------------------------------------------------------------


class _Builder:
    """One segment, allocated front to back."""

    def __init__(self) -> None:
        self.buf = bytearray(8)  # the root pointer

    def alloc(self, words: int) -> int:
        at = len(self.buf) // 8
        self.buf += bytes(8 * words)
        return at

    def struct_pointer(self, at: int, target: int, data: int, pointers: int) -> None:
        offset = (target - at - 1) << 2
        self.buf[8 * at : 8 * at + 8] = struct.pack("<iHH", offset, data, pointers)

    def list_pointer(self, at: int, target: int, size: int, count: int) -> None:
        offset = ((target - at - 1) << 2) | 1
        self.buf[8 * at : 8 * at + 8] = struct.pack("<iI", offset, size | (count << 3))

    def new_struct(self, at: int, data: int, pointers: int) -> int:
        """Allocate a struct pointed to from word ``at``; returns its first word."""
        target = self.alloc(data + pointers)
        self.struct_pointer(at, target, data, pointers)
        return target

    def bytes_(self, at: int, value: bytes) -> None:
        target = self.alloc((len(value) + 7) // 8)
        self.buf[8 * target : 8 * target + len(value)] = value
        self.list_pointer(at, target, _BYTE, len(value))

    def text(self, at: int, value: str) -> None:
        self.bytes_(at, value.encode() + b"\x00")

    def empty_composite(self, at: int, data: int, pointers: int) -> None:
        tag = self.alloc(1)
        self.buf[8 * tag : 8 * tag + 8] = struct.pack("<iHH", 0, data, pointers)
        self.list_pointer(at, tag, _COMPOSITE, 0)

    def put(self, word: int, offset: int, packer: struct.Struct, value: int) -> None:
        packer.pack_into(self.buf, 8 * word + offset, value)

    def framed(self) -> bytes:
        words = len(self.buf) // 8
        return _U32.pack(0) + _U32.pack(words) + bytes(self.buf)


def _message(kind: int) -> tuple[_Builder, int]:
    """A builder holding the root Message of union member ``kind``; returns it and the word
    of the Message's pointer."""
    builder = _Builder()
    message = builder.new_struct(0, 1, 1)
    builder.put(message, 0, _U16, kind)
    return builder, message + 1


def encode_bootstrap(question_id: int) -> bytes:
    """``Bootstrap(questionId)``: as ``rpc_messages.encode_bootstrap``."""
    builder, pointer = _message(_MESSAGE_BOOTSTRAP)
    bootstrap = builder.new_struct(pointer, 1, 1)
    builder.put(bootstrap, 0, _U32, question_id)
    return builder.framed()


def encode_finish(question_id: int) -> bytes:
    """``Finish(questionId)`` keeping result caps: as ``rpc_messages.encode_finish``."""
    builder, pointer = _message(_MESSAGE_FINISH)
    finish = builder.new_struct(pointer, 1, 0)
    builder.put(finish, 0, _U32, question_id)
    builder.buf[8 * finish + 4] = 1  # releaseResultCaps = false (stored XOR its default, true)
    return builder.framed()


def _call(question_id: int, interface_id: int, method_id: int) -> tuple[_Builder, int, int, int]:
    """A Call message up to its params; returns the builder, the target's pointer word, the
    params' pointer word."""
    builder, pointer = _message(_MESSAGE_CALL)
    call = builder.new_struct(pointer, 3, 3)
    builder.put(call, 0, _U32, question_id)
    builder.put(call, 4, _U16, method_id)
    builder.put(call + 1, 0, _U64, interface_id)
    return builder, call, call + 3, call + 4


def _params(builder: _Builder, params_pointer: int, data: int, pointers: int) -> tuple[int, int]:
    """The Payload and its content struct; returns the content's first word and the Payload's
    capTable pointer word (filled last: go-capnproto2 allocates it after the content)."""
    payload = builder.new_struct(params_pointer, 0, 2)
    content = builder.new_struct(payload, data, pointers)
    return content, payload + 1


def encode_register_call(
    question_id: int,
    bootstrap_question_id: int,
    interface_id: int,
    method_id: int,
    auth: TunnelAuth,
    tunnel_id: uuid.UUID,
    conn_index: int,
    options: ConnectionOptions,
) -> bytes:
    """``registerConnection`` pipelined on the Bootstrap answer: as ``rpc_messages.encode_call``
    with ``registration_codec.build_register_params``."""
    check_uint8("conn_index", conn_index)
    check_uint8("compression_quality", options.compression_quality)
    check_uint8("num_previous_attempts", options.num_previous_attempts)
    builder, _, target_pointer, params_pointer = _call(question_id, interface_id, method_id)
    target = builder.new_struct(target_pointer, 1, 1)
    builder.put(target, 4, _U16, 1)  # promisedAnswer
    promised = builder.new_struct(target + 1, 1, 1)
    builder.put(promised, 0, _U32, bootstrap_question_id)
    builder.empty_composite(promised + 1, 1, 0)  # transform: no ops
    params, cap_table = _params(builder, params_pointer, 1, 3)
    builder.buf[8 * params] = conn_index
    tunnel_auth = builder.new_struct(params + 1, 0, 2)
    builder.text(tunnel_auth, auth.account_tag)
    builder.bytes_(tunnel_auth + 1, auth.tunnel_secret)
    builder.bytes_(params + 2, tunnel_id.bytes)
    connection = builder.new_struct(params + 3, 1, 2)
    flags = 8 * connection
    builder.buf[flags] = 1 if options.replace_existing else 0
    builder.buf[flags + 1] = options.compression_quality
    builder.buf[flags + 2] = options.num_previous_attempts
    client = builder.new_struct(connection + 1, 0, 4)
    info = options.client
    builder.bytes_(client, info.client_id.bytes)
    features = builder.alloc(len(info.features))
    builder.list_pointer(client + 1, features, _POINTER, len(info.features))
    for index, feature in enumerate(info.features):
        builder.text(features + index, feature)
    builder.text(client + 2, info.version)
    builder.text(client + 3, info.arch)
    builder.bytes_(connection + 2, options.origin_local_ip)
    builder.empty_composite(cap_table, 1, 1)
    return builder.framed()


def encode_update_local_configuration_call(
    question_id: int, import_id: int, interface_id: int, method_id: int, config: bytes
) -> bytes:
    """``updateLocalConfiguration(config)`` on the imported capability: as
    ``rpc_messages.encode_call`` with ``build_update_local_configuration_params``."""
    builder, _, target_pointer, params_pointer = _call(question_id, interface_id, method_id)
    target = builder.new_struct(target_pointer, 1, 1)
    builder.put(target, 0, _U32, import_id)  # importedCap (union member 0)
    params, cap_table = _params(builder, params_pointer, 0, 1)
    builder.bytes_(params, config)
    builder.empty_composite(cap_table, 1, 1)
    return builder.framed()


# -- reading ------------------------------------------------------------------------------------


class _Unreadable(Exception):
    """Not a layout these readers handle: the caller falls back to pycapnp."""


class _Struct:
    """A struct in the segment: its data section and pointer section (word indexes)."""

    __slots__ = ("_data", "_data_words", "_pointer_count", "_pointers", "_segment")

    def __init__(self, segment: bytes, pointer_word: int) -> None:
        self._segment = segment
        lower, data_words, pointer_count = struct.unpack_from("<iHH", segment, 8 * pointer_word)
        if lower == 0 and data_words == 0 and pointer_count == 0:
            # A null pointer reads as the default struct: every field zero.
            self._data = self._pointers = 0
            self._data_words = self._pointer_count = 0
            return
        if lower & 3 != 0:
            raise _Unreadable("not a struct pointer")
        self._data = pointer_word + 1 + (lower >> 2)
        self._data_words = data_words
        self._pointers = self._data + data_words
        self._pointer_count = pointer_count
        if self._data < 0 or 8 * (self._pointers + pointer_count) > len(segment):
            raise _Unreadable("struct outside the segment")

    def uint(self, byte_offset: int, packer: struct.Struct) -> int:
        if byte_offset + packer.size > 8 * self._data_words:
            return 0
        value: int = packer.unpack_from(self._segment, 8 * self._data + byte_offset)[0]
        return value

    def bit(self, bit_offset: int) -> bool:
        if bit_offset >= 64 * self._data_words:
            return False
        return bool(self._segment[8 * self._data + bit_offset // 8] >> (bit_offset % 8) & 1)

    def pointer(self, index: int) -> int | None:
        """The word of pointer ``index``, ``None`` beyond the pointer section."""
        return self._pointers + index if index < self._pointer_count else None

    def child(self, index: int) -> _Struct:
        word = self.pointer(index)
        if word is None:
            return _Struct(_NULL_WORD, 0)
        return _Struct(self._segment, word)

    def data(self, index: int) -> bytes:
        word = self.pointer(index)
        if word is None:
            return b""
        return _byte_list(self._segment, word)

    def text(self, index: int) -> str:
        raw = self.data(index)
        if not raw:
            word = self.pointer(index)
            if word is not None and self._segment[8 * word : 8 * word + 8] != _NULL_WORD:
                # A Text of no bytes at all (not even its NUL): capnp refuses it, and so do we
                # (found by Hypothesis; a null pointer is the empty text).
                raise _Unreadable("text without its NUL")
            return ""
        if raw[-1] != 0:
            raise _Unreadable("text without its NUL")
        try:
            return raw[:-1].decode()
        except UnicodeDecodeError as exc:
            raise _Unreadable("text is not UTF-8") from exc

    def structs(self, index: int) -> list[_Struct]:
        """The elements of a composite list."""
        word = self.pointer(index)
        if word is None:
            return []
        lower, upper = struct.unpack_from("<iI", self._segment, 8 * word)
        if lower == 0 and upper == 0:
            return []
        if lower & 3 != 1 or upper & 7 != _COMPOSITE:
            raise _Unreadable("not a composite list")
        tag = word + 1 + (lower >> 2)
        if tag < 0 or 8 * (tag + 1 + (upper >> 3)) > len(self._segment):
            raise _Unreadable("list outside the segment")
        # The tag is laid out as a struct pointer whose offset is the element count.
        tag_lower, data_words, pointer_count = struct.unpack_from("<iHH", self._segment, 8 * tag)
        count = tag_lower >> 2
        size = data_words + pointer_count
        if tag_lower & 3 != 0 or count < 0 or count * size > upper >> 3:
            raise _Unreadable("list elements overrun the list")
        if count and not size:
            # Zero-sized elements take no words: a 96-byte message could claim 2^29 of them
            # and each costs us an object. None of ours is empty; pycapnp charges them to its
            # traversal limit.
            raise _Unreadable("a list of empty structs")
        elements = []
        for element in range(count):
            first = tag + 1 + element * size
            # An element read through a synthetic pointer word placed just before it.
            elements.append(_Struct.at(self._segment, first, data_words, pointer_count))
        return elements

    @classmethod
    def at(cls, segment: bytes, first: int, data_words: int, pointer_count: int) -> _Struct:
        value = cls.__new__(cls)
        value._segment = segment
        value._data = first
        value._data_words = data_words
        value._pointers = first + data_words
        value._pointer_count = pointer_count
        return value


_NULL_WORD = bytes(8)


def _byte_list(segment: bytes, word: int) -> bytes:
    lower, upper = struct.unpack_from("<iI", segment, 8 * word)
    if lower == 0 and upper == 0:
        return b""
    if lower & 3 != 1 or upper & 7 != _BYTE:
        raise _Unreadable("not a byte list")
    start = 8 * (word + 1 + (lower >> 2))
    end = start + (upper >> 3)
    if start < 0 or end > len(segment):
        raise _Unreadable("list outside the segment")
    return bytes(segment[start:end])


def _root(data: bytes) -> _Struct:
    if len(data) < 16 or _U32.unpack_from(data, 0)[0] != 0:
        raise _Unreadable("not a one-segment message")
    words = _U32.unpack_from(data, 4)[0]
    segment = data[8:]
    if len(segment) != 8 * words:
        raise _Unreadable("segment size mismatch")
    return _Struct(segment, 0)


class ReadReturn:
    """What :func:`decode_return` read: ``rpc_messages.ReturnMessage``'s fields but ``raw``."""

    __slots__ = ("answer_id", "cap_table", "outcome", "reason")

    def __init__(
        self, answer_id: int, outcome: str, reason: str, cap_table: tuple[tuple[str, int], ...]
    ) -> None:
        self.answer_id = answer_id
        self.outcome = outcome
        self.reason = reason
        self.cap_table = cap_table


def decode_return(data: bytes) -> ReadReturn | None:
    """A Return carrying results or an exception, else ``None`` (not a Return, or not a
    layout read here: decode it with ``rpc_messages.decode_message``)."""
    try:
        message = _root(data)
        if message.uint(0, _U16) != _MESSAGE_RETURN:
            return None
        ret = message.child(0)
        outcome = _RETURN_KINDS.get(ret.uint(6, _U16))
        if outcome is None:
            return None
        answer_id = ret.uint(0, _U32)
        if outcome == "exception":
            return ReadReturn(answer_id, outcome, ret.child(0).text(0), ())
        caps = []
        for entry in ret.child(0).structs(1):
            kind = _CAP_KINDS.get(entry.uint(0, _U16))
            if kind is None:
                return None
            caps.append((kind, entry.uint(4, _U32) if kind in _WITH_ID else 0))
        return ReadReturn(answer_id, outcome, "", tuple(caps))
    except _Unreadable:
        return None


def decode_register_results(data: bytes) -> RegistrationResult | None:
    """The ``registerConnection`` result in the Return ``data``, else ``None`` (read it with
    ``rpc_messages.read_content``, which reports what is wrong)."""
    try:
        message = _root(data)
        if message.uint(0, _U16) != _MESSAGE_RETURN:
            return None
        ret = message.child(0)
        if ret.uint(6, _U16) != 0:  # not results
            return None
        payload = ret.child(0)
        response = payload.child(0).child(0)
        kind = response.uint(0, _U16)
        value = response.child(0)
        if kind == 1:
            connection_id = value.data(0)
            if len(connection_id) != 16:
                return None
            return ConnectionDetails(
                uuid=uuid.UUID(bytes=connection_id),
                location_name=value.text(1),
                tunnel_is_remotely_managed=value.bit(0),
            )
        if kind == 0:
            return RegistrationError(
                cause=value.text(0),
                retry_after_ns=value.uint(0, _I64),
                should_retry=value.bit(64),
            )
        return None
    except _Unreadable:
        return None
