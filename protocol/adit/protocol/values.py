"""The base of the RPC layer's frozen values: msgspec Structs instead of dataclasses.

A frozen dataclass costs ~0.9 ms to define (its methods are generated as source and
compiled); the worker imports two dozen of them on its way to the first registration. A
Struct class costs ~35 µs and behaves the same for these values: positional or keyword
construction, immutable, compared and hashed by fields, ``__match_args__``.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

__all__ = ["Value"]


class Value(msgspec.Struct, frozen=True):
    """A frozen value; fields named in ``hidden_in_repr`` (secrets, raw bytes) stay out of
    its ``repr``, as ``dataclasses.field(repr=False)`` kept them out."""

    hidden_in_repr: ClassVar[frozenset[str]] = frozenset()

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in self.__struct_fields__
            if name not in self.hidden_in_repr
        )
        return f"{type(self).__qualname__}({shown})"
