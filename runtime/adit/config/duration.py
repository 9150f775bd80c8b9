"""Go ``time.Duration`` strings (``30s``, ``1m30s``, ``1.5h``), as config.yml spells durations.

:func:`parse_go_duration` accepts exactly what Go's ``time.ParseDuration`` accepts and fails
with Go's messages; :func:`format_go_duration` renders seconds the way Go's
``Duration.String`` does.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["Duration", "format_go_duration", "parse_go_duration"]

_UNIT_NANOSECONDS: Final = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 MICRO SIGN
    "μs": 1_000,  # U+03BC GREEK SMALL LETTER MU
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_MAX_NANOSECONDS: Final = 2**63 - 1
_NUMBER = re.compile(r"([0-9]*)(?:\.([0-9]*))?")
_UNIT = re.compile(r"[^0-9.]*")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_go_duration(text: str) -> float:
    """Seconds in ``text`` (Go syntax: ``[-+]?([0-9]*(\\.[0-9]*)?[a-z]+)+`` or ``0``).

    Raises ``ValueError`` with Go's message, e.g. ``time: missing unit in duration "5"``.
    """
    invalid = ValueError(f"time: invalid duration {_quote(text)}")
    rest = text
    negative = False
    if rest[:1] in ("-", "+"):
        negative = rest[0] == "-"
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise invalid
    total = 0
    while rest:
        if not (rest[0] == "." or (rest[0].isascii() and rest[0].isdigit())):
            raise invalid
        number = _NUMBER.match(rest)
        assert number is not None  # the pattern matches the empty string
        whole, fraction = number.group(1), number.group(2)
        if not whole and not fraction:
            raise invalid
        rest = rest[number.end() :]
        unit_match = _UNIT.match(rest)
        assert unit_match is not None
        unit = unit_match.group(0)
        if not unit:
            raise ValueError(f"time: missing unit in duration {_quote(text)}")
        rest = rest[len(unit) :]
        scale = _UNIT_NANOSECONDS.get(unit)
        if scale is None:
            raise ValueError(f"time: unknown unit {_quote(unit)} in duration {_quote(text)}")
        value = int(whole or "0") * scale
        if fraction:
            value += int(fraction) * scale // 10 ** len(fraction)
        total += value
        if total > _MAX_NANOSECONDS:
            raise invalid
    return (-total if negative else total) / 1e9


def format_go_duration(seconds: float) -> str:
    """Go's ``Duration.String``: ``1h0m0s``, ``1m30s``, ``30s``, ``1.5s``, ``500ms``, ``0s``."""
    nanoseconds = round(seconds * 1e9)
    if nanoseconds == 0:
        return "0s"
    sign = "-" if nanoseconds < 0 else ""
    nanoseconds = abs(nanoseconds)
    if nanoseconds < 1_000_000_000:
        for unit, scale in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if nanoseconds >= scale:
                return sign + _decimal(nanoseconds, scale) + unit
    hours, remainder = divmod(nanoseconds, 3_600_000_000_000)
    minutes, remainder = divmod(remainder, 60_000_000_000)
    text = _decimal(remainder, 1_000_000_000) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{text}"
    if minutes:
        return f"{sign}{minutes}m{text}"
    return sign + text


def _decimal(value: int, scale: int) -> str:
    whole, fraction = divmod(value, scale)
    if not fraction:
        return str(whole)
    digits = str(fraction).rjust(len(str(scale)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}"


class Duration:
    """A duration from config: ``seconds`` plus the ``text`` it was written as.

    Built from a Go duration string (YAML, flags) with :meth:`parse`, or from integer
    seconds (JSON/remote config) with :meth:`from_seconds`.
    """

    __slots__ = ("seconds", "text")

    def __init__(self, seconds: float, text: str | None = None) -> None:
        self.seconds = float(seconds)
        self.text = format_go_duration(seconds) if text is None else text

    @classmethod
    def parse(cls, text: str) -> Duration:
        """Parse a Go duration string; ``ValueError`` with Go's message when invalid."""
        return cls(parse_go_duration(text), text)

    @classmethod
    def from_seconds(cls, seconds: int) -> Duration:
        """A duration of whole seconds, as remote (JSON) config carries it."""
        return cls(seconds)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Duration) and other.seconds == self.seconds

    def __hash__(self) -> int:
        return hash(self.seconds)

    def __repr__(self) -> str:
        return f"Duration({self.text!r})"

    def __str__(self) -> str:
        return self.text
