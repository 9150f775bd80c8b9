"""HPACK (RFC 7541): an encoder that never indexes nor Huffman-codes, and a full decoder.

A tunnel's header blocks are few fields, and the long one (the serialised eyeball headers,
carrying the ray id) is new on every request: indexing it only evicts what repeats, and
hpack's pure-Python Huffman coder was the largest single cost of opening a stream. Static-table
references plus raw literals cost a few microseconds; any HPACK decoder reads them.
The decoder takes everything a peer may send (Go's encoder indexes and Huffman-codes); it is
ours rather than the ``hpack`` library's because that one cost ~25 % of a stream's protocol
work in per-field logging and objects. Huffman strings still go through ``hpack``'s table.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from hpack.exceptions import HPACKDecodingError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

from adit.protocol.errors import Http2TunnelError

__all__ = ["HpackDecoder", "HpackError", "HpackListTooLarge", "PlainHpackEncoder"]

_STATIC = HeaderTable.STATIC_TABLE
_STATIC_COUNT = len(_STATIC)
_ENTRY_OVERHEAD = 32  # RFC 7541 §4.1

_STATIC_FIELDS: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAMES: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, start=1):
    _STATIC_FIELDS.setdefault((_name, _value), _index)
    _STATIC_NAMES.setdefault(_name, _index)

_CACHED_FIELDS = 1024
_CACHED_FIELD_BYTES = 128
_encoded_fields: dict[tuple[bytes, bytes], bytes] = {}
for _field, _index in _STATIC_FIELDS.items():
    _encoded_fields[_field] = bytes((0x80 | _index,))

# A dynamic table size update to 0 (RFC 7541 §6.3): once sent, the peer's decoder holds no
# dynamic table for us whatever HEADER_TABLE_SIZE either side advertises later.
_TABLE_SIZE_ZERO = b"\x20"


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """RFC 7541 §5.1: ``value`` with an N-bit prefix, ``first`` holding the pattern bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes) -> bytes:
    length = len(data)
    if length < 127:
        return bytes((length,)) + data
    return _integer(length, 7, 0) + data


class PlainHpackEncoder:
    """Encodes header lists; ``sensitive`` names go as never-indexed literals."""

    def __init__(self, sensitive: Iterable[bytes] = ()) -> None:
        self._sensitive = frozenset(sensitive)
        self._first = True

    def encode(self, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        """One header block fragment for ``headers`` (names already lower-case)."""
        parts: list[bytes] = []
        if self._first:
            parts.append(_TABLE_SIZE_ZERO)
            self._first = False
        known = _encoded_fields
        sensitive = self._sensitive
        for field in headers:
            # The cache is shared by every encoder: never consulted for a name that is
            # sensitive to this one (another may have cached it as an ordinary literal).
            coded = known.get(field) if field[0] not in sensitive else None
            if coded is None:
                if len(field[1]) > _CACHED_FIELD_BYTES:
                    # A long value (the serialised request headers: kilobytes under Access)
                    # is copied once, by the join, not into its field first.
                    parts += self._long_field(field)
                    continue
                coded = self._field(field)
            parts.append(coded)
        return b"".join(parts)

    def _long_field(self, field: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
        """A literal field too long to be cached, as (its start, its value)."""
        name, value = field
        return self._literal_start(name) + _integer(len(value), 7, 0), value

    def _literal_start(self, name: bytes) -> bytes:
        """A literal field's bytes before its value's length: the name, by index or as a string
        (never indexed when ``name`` is sensitive)."""
        sensitive = name in self._sensitive
        name_index = _STATIC_NAMES.get(name)
        if name_index is not None:
            return _integer(name_index, 4, 0x10 if sensitive else 0x00)
        return (b"\x10" if sensitive else b"\x00") + _string(name)

    def _field(self, field: tuple[bytes, bytes]) -> bytes:
        name, value = field
        index = _STATIC_FIELDS.get(field)
        if index is not None:
            return bytes((0x80 | index,))  # the static table has 61 entries: one byte
        sensitive = name in self._sensitive
        coded = self._literal_start(name) + _string(value)
        # The same few fields (a status, the response meta, a length) recur on every stream;
        # the serialised eyeball headers do not, and are sensitive anyway.
        if not sensitive and len(coded) <= _CACHED_FIELD_BYTES:
            if len(_encoded_fields) >= _CACHED_FIELDS:
                _encoded_fields.clear()
            _encoded_fields[field] = coded
        return coded


class HpackError(Http2TunnelError):
    """A header block that cannot be decoded: a connection error (COMPRESSION_ERROR)."""


class HpackListTooLarge(HpackError):
    """A header list beyond our MAX_HEADER_LIST_SIZE (an HPACK bomb, or a peer that ignores
    the setting)."""


class HpackDecoder:
    """Decodes header blocks in order, keeping the peer's dynamic table (RFC 7541 §2.3)."""

    def __init__(self, *, max_table_size: int = 4096, max_header_list_size: int = 1 << 20) -> None:
        self._allowed_table_size = max_table_size  # our SETTINGS_HEADER_TABLE_SIZE
        self._table_size = max_table_size  # the peer's current choice, at most the above
        self._max_list = max_header_list_size
        self._dynamic: deque[tuple[bytes, bytes]] = deque()
        self._dynamic_size = 0

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """The header list of one complete header block (names and values as bytes).

        Every malformed block raises :class:`HpackError`; each bound is checked before the
        byte it guards is read, so nothing else escapes.
        """
        headers: list[tuple[bytes, bytes]] = []
        size = 0
        pos = 0
        end = len(block)
        static = _STATIC
        while pos < end:
            first = block[pos]
            if first & 0x80:  # indexed field
                index = first & 0x7F
                if 0 < index <= _STATIC_COUNT:  # the usual case, inline
                    pos += 1
                    field = static[index - 1]
                else:
                    index, pos = _read_integer(block, pos, 7)
                    field = self._entry(index)
            elif not first & 0xE0:
                # A literal not indexed (0x00) or never indexed (0x10): ours, and most of
                # Go's. Inline for static names and raw values (the usual case).
                index = first & 0x0F
                if 0 < index < 0x0F:  # a static name (0x0F: the index goes on)
                    pos += 1
                    name = static[index - 1][0]
                else:
                    index, pos = _read_integer(block, pos, 4)
                    if index:
                        name = self._entry(index)[0]
                    else:
                        name, pos = _read_string(block, pos)
                if pos >= end:
                    raise HpackError("header block ends before a string")
                length = block[pos]
                if length & 0x80 or length == 0x7F:
                    value, pos = _read_string(block, pos)
                else:
                    pos += 1
                    stop = pos + length
                    if stop > end:
                        raise HpackError("HPACK string runs past the header block")
                    value = block[pos:stop]
                    pos = stop
                field = (name, value)
            elif first & 0x40:  # literal, add to the table
                field, pos = self._literal(block, pos, 6)
                self._add(field)
            else:  # 0x20: dynamic table size update
                if headers:
                    # RFC 7541 §4.2: only at the start of a block.
                    raise HpackError("dynamic table size update after a header field")
                new_size, pos = _read_integer(block, pos, 5)
                if new_size > self._allowed_table_size:
                    raise HpackError(f"table size update to {new_size} beyond our limit")
                self._table_size = new_size
                self._evict()
                continue
            headers.append(field)
            size += len(field[0]) + len(field[1]) + _ENTRY_OVERHEAD
            if size > self._max_list:
                raise HpackListTooLarge("header list exceeds our MAX_HEADER_LIST_SIZE")
        return headers

    @property
    def max_header_list_size(self) -> int:
        """The largest header list :meth:`decode` returns (our MAX_HEADER_LIST_SIZE)."""
        return self._max_list

    @max_header_list_size.setter
    def max_header_list_size(self, value: int) -> None:
        self._max_list = value

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= len(_STATIC):
            return _STATIC[index - 1]
        dynamic = index - len(_STATIC) - 1
        if 0 <= dynamic < len(self._dynamic):
            return self._dynamic[dynamic]
        raise HpackError(f"header table index {index} out of range")

    def _literal(self, block: bytes, pos: int, prefix: int) -> tuple[tuple[bytes, bytes], int]:
        index, pos = _read_integer(block, pos, prefix)
        if index:
            name = self._entry(index)[0]
        else:
            name, pos = _read_string(block, pos)
        value, pos = _read_string(block, pos)
        return (name, value), pos

    def _add(self, field: tuple[bytes, bytes]) -> None:
        self._dynamic.appendleft(field)
        self._dynamic_size += len(field[0]) + len(field[1]) + _ENTRY_OVERHEAD
        self._evict()

    def _evict(self) -> None:
        while self._dynamic_size > self._table_size and self._dynamic:
            name, value = self._dynamic.pop()
            self._dynamic_size -= len(name) + len(value) + _ENTRY_OVERHEAD


def _read_integer(block: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """RFC 7541 §5.1: the integer at ``pos`` and the position after it."""
    end = len(block)
    if pos >= end:
        raise HpackError("header block ends before an integer")
    limit = (1 << prefix_bits) - 1
    value = block[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    shift = 0
    while pos < end:
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise HpackError("HPACK integer too large")
    raise HpackError("header block ends inside an integer")


def _read_string(block: bytes, pos: int) -> tuple[bytes, int]:
    """RFC 7541 §5.2: the string at ``pos``, Huffman-decoded, and the position after it."""
    if pos >= len(block):
        raise HpackError("header block ends before a string")
    huffman = block[pos] & 0x80
    length, pos = _read_integer(block, pos, 7)
    stop = pos + length
    if stop > len(block):
        raise HpackError("HPACK string runs past the header block")
    data = block[pos:stop]
    if huffman:
        try:
            data = decode_huffman(data)
        except HPACKDecodingError as exc:
            raise HpackError(f"bad Huffman string: {exc}") from exc
    return data, stop
