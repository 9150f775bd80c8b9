"""An HPACK encoder (RFC 7541) that never uses the dynamic table and never Huffman-codes.

A tunnel's header blocks are few fields, and the long one (the serialised eyeball headers,
carrying the ray id) is new on every request: indexing it only evicts what repeats, and
hpack's pure-Python Huffman coder was the largest single cost of opening a stream. Static-table
references plus raw literals cost a few microseconds; any HPACK decoder reads them.
Decoding stays with the ``hpack`` library (peers such as Go's encoder do use the dynamic
table and Huffman codes).
"""

from __future__ import annotations

from collections.abc import Iterable

from hpack.table import HeaderTable

__all__ = ["PlainHpackEncoder"]

_STATIC_FIELDS: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAMES: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, start=1):
    _STATIC_FIELDS.setdefault((_name, _value), _index)
    _STATIC_NAMES.setdefault(_name, _index)

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
        fields = _STATIC_FIELDS
        names = _STATIC_NAMES
        for name, value in headers:
            index = fields.get((name, value))
            if index is not None:
                parts.append(bytes((0x80 | index,)) if index < 127 else _integer(index, 7, 0x80))
                continue
            pattern = 0x10 if name in self._sensitive else 0x00
            name_index = names.get(name)
            if name_index is not None:
                if name_index < 15:
                    parts.append(bytes((pattern | name_index,)))
                else:
                    parts.append(_integer(name_index, 4, pattern))
            else:
                parts.append(bytes((pattern,)))
                parts.append(_string(name))
            parts.append(_string(value))
        return b"".join(parts)
