"""What the management API reads from a request, and how it answers or refuses one.

Shared by the endpoint modules (:mod:`adit.edge.api`, :mod:`adit.edge.api_teamnet`): every
refusal is an :class:`ApiError` (HTTP status, Cloudflare code, message) and every parameter
is parsed here, so the same mistake reads the same on every endpoint.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import msgspec

__all__ = [
    "BAD_REQUEST",
    "DEFAULT_PER_PAGE",
    "MAX_PER_PAGE",
    "NOT_FOUND",
    "ApiError",
    "Response",
    "int_param",
    "json_object",
    "json_response",
    "page_of",
    "parse_bool",
    "parse_existed_at",
    "parse_uuid",
]

# Cloudflare's generic codes; the CLI prints them as ``code: N, reason: msg``.
BAD_REQUEST = 1001
NOT_FOUND = 1003

DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 1000

#: Status, headers, body.
Response = tuple[int, list[tuple[bytes, bytes]], bytes]

_JSON_HEADERS = [
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-store"),
]


def json_response(status: int, body: bytes) -> Response:
    """A JSON answer (never cached: it carries an account's state)."""
    return status, list(_JSON_HEADERS), body


class ApiError(Exception):
    """A request refused with an HTTP status and one envelope error."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def parse_uuid(text: str, what: str) -> uuid.UUID:
    """``text`` as a UUID, or a 400 naming ``what``."""
    try:
        return uuid.UUID(text)
    except ValueError:
        raise ApiError(400, BAD_REQUEST, f"{what} is not a valid UUID: {text}") from None


def parse_bool(text: str, what: str) -> bool:
    """``true``/``1`` or ``false``/``0`` (any case), or a 400 naming ``what``."""
    if text.lower() in ("true", "1"):
        return True
    if text.lower() in ("false", "0"):
        return False
    raise ApiError(400, BAD_REQUEST, f"{what} must be true or false")


def parse_existed_at(query: dict[str, str]) -> datetime.datetime | None:
    """The ``existed_at`` filter (RFC 3339; UTC when it names no zone), if given."""
    text = query.get("existed_at")
    if not text:
        return None
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(400, BAD_REQUEST, "existed_at must be RFC 3339") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.UTC)


def int_param(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within ``low..high`` (``default`` when absent or empty)."""
    text = query.get(name)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, BAD_REQUEST, f"{name} must be an integer") from None
    if not low <= value <= high:
        raise ApiError(400, BAD_REQUEST, f"{name} must be between {low} and {high}")
    return value


def page_of(query: dict[str, str], items: list[Any]) -> tuple[list[Any], dict[str, int]]:
    """The page ``page``/``per_page`` asks for, and its ``result_info``."""
    page = int_param(query, "page", 1, 1, 1 << 30)
    per_page = int_param(query, "per_page", DEFAULT_PER_PAGE, 1, MAX_PER_PAGE)
    chunk = items[(page - 1) * per_page : page * per_page]
    info = {
        "count": len(chunk),
        "page": page,
        "per_page": per_page,
        "total_count": len(items),
        "total_pages": max(1, -(-len(items) // per_page)),
    }
    return chunk, info


def json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object (an empty body is ``{}``), or a 400."""
    try:
        obj = msgspec.json.decode(body or b"{}")
    except msgspec.DecodeError:
        raise ApiError(400, BAD_REQUEST, "Invalid request body: not JSON") from None
    except RecursionError:
        # msgspec stops at its nesting limit (about a thousand levels) with this, at once.
        raise ApiError(400, BAD_REQUEST, "Invalid request body: nested too deeply") from None
    if not isinstance(obj, dict):
        raise ApiError(400, BAD_REQUEST, "Invalid request body: expected a JSON object")
    return obj
