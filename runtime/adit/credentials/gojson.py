"""Decode JSON objects the way Go's ``encoding/json`` fills a struct.

cloudflared reads credentials, tokens and cert.pem into Go structs, so keys match field names
case-insensitively, later keys overwrite earlier ones, ``null`` leaves a field untouched and
unknown keys are ignored. Matching that keeps every file cloudflared accepts acceptable here.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Iterable
from typing import Any

__all__ = [
    "GoJsonError",
    "decode_b64_bytes",
    "decode_uuid",
    "expect_str",
    "fill_fields",
    "go_json_dumps",
]


class GoJsonError(ValueError):
    """A value does not fit the Go type of its field."""


def fill_fields(raw: bytes | str, fields: Iterable[str]) -> dict[str, Any]:
    """Parse a JSON object and return ``{field: value}`` for the fields present (not null).

    Raises ``GoJsonError`` when the text is not a JSON object.
    """
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise GoJsonError(str(exc)) from exc
    if not isinstance(obj, dict):
        raise GoJsonError(f"cannot unmarshal {type(obj).__name__} into a struct")
    names = list(fields)
    folded = {name.lower(): name for name in names}
    found: dict[str, Any] = {}
    for key, value in obj.items():
        name = key if key in names else folded.get(key.lower())
        if name is None or value is None:
            continue
        found[name] = value
    return found


def expect_str(value: Any, field: str) -> str:
    """``value`` as a Go string field."""
    if not isinstance(value, str):
        raise GoJsonError(f"cannot unmarshal into field {field} of type string")
    return value


def decode_b64_bytes(value: Any, field: str) -> bytes:
    """A Go ``[]byte`` field: standard base64 with padding."""
    text = expect_str(value, field)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise GoJsonError(f"illegal base64 data in field {field}") from exc


def decode_uuid(value: Any, field: str) -> uuid.UUID:
    """A ``uuid.UUID`` field (google/uuid accepts the usual textual forms)."""
    text = expect_str(value, field)
    try:
        return uuid.UUID(text)
    except ValueError as exc:
        raise GoJsonError(f"invalid UUID in field {field}") from exc


def go_json_dumps(obj: object) -> str:
    """Compact JSON with Go's HTML-safe escaping of ``<``, ``>`` and ``&``."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
