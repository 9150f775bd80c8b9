"""Ingress ``path`` regexes: Python ``re`` syntax, Go RE2-shaped error messages.

cloudflared compiles paths with Go's RE2; adit uses ``re`` (a superset for the patterns
people write). Errors are translated into RE2's wording where the cause is the same, so
``Rule #1 has an invalid regex: error parsing regexp: missing closing ]: `[``` reads as it
does with cloudflared.
"""

from __future__ import annotations

import re

__all__ = ["compile_path"]


def compile_path(pattern: str) -> re.Pattern[str]:
    """Compile ``pattern``; ``ValueError("error parsing regexp: ...")`` when invalid."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"error parsing regexp: {_re2_message(exc, pattern)}") from None


def _re2_message(exc: re.error, pattern: str) -> str:
    message = exc.msg
    position = exc.pos if exc.pos is not None else 0
    if message == "unterminated character set":
        return f"missing closing ]: `{pattern[position:]}`"
    if message.startswith("missing ), unterminated subpattern"):
        return f"missing closing ): `{pattern}`"
    if message == "unbalanced parenthesis":
        return f"unexpected ): `{pattern}`"
    if message == "nothing to repeat":
        return f"missing argument to repetition operator: `{pattern[position : position + 1]}`"
    if message == "multiple repeat":
        operators = pattern[max(position - 1, 0) : position + 1]
        return f"invalid nested repetition operator: `{operators}`"
    if message.startswith("bad escape"):
        return f"invalid escape sequence: `{pattern[position : position + 2]}`"
    if message.startswith("bad character range"):
        return f"invalid character class range: `{message.removeprefix('bad character range ')}`"
    return f"{message}: `{pattern}`"
