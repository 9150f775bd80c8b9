"""Header conventions of cloudflared's HTTP/2 transport (PROTOCOL.md §4.2, §4.5, §4.7).

Header names and values are ``str`` holding latin-1 decoded bytes everywhere in adit, so any
byte an origin or an eyeball sends survives the trip unchanged (HTTP field values are bytes).

Response headers travel serialised in one HTTP/2 header because HTTP/2 would lower-case and
filter them; the real HTTP/2 headers on a response are Go artefacts and are ignored. adit's edge
also serialises *request* headers (``cf-cloudflared-request-headers``) for connectors that
announce :data:`FEATURE_SERIALIZED_REQUEST_HEADERS`, so an origin sees the eyeball's exact
header names; the unmodified cloudflared never gets that header.
"""

from __future__ import annotations

import binascii
import enum
import json
from collections.abc import Iterable, Mapping

import pybase64

from adit.protocol.errors import HeaderDecodeError

__all__ = [
    "CONTROL_STREAM",
    "FEATURE_SERIALIZED_REQUEST_HEADERS",
    "HOP_BY_HOP",
    "PROXY_CONNECTION_UPGRADE",
    "PROXY_SRC",
    "REQUEST_HEADERS",
    "RESPONSE_HEADERS",
    "RESPONSE_META",
    "UPDATE_CONFIGURATION",
    "WEBSOCKET",
    "RequestType",
    "ResponseMeta",
    "classify_request",
    "decode_serialized_headers",
    "encode_serialized_headers",
    "is_hop_by_hop",
    "is_tunnel_internal",
    "serialized_pair",
    "strip_for_tunnel",
    "strip_hop_by_hop",
    "strip_tunnel_internal",
    "wire_bytes",
]

PROXY_CONNECTION_UPGRADE = "cf-cloudflared-proxy-connection-upgrade"
PROXY_SRC = "cf-cloudflared-proxy-src"
REQUEST_HEADERS = "cf-cloudflared-request-headers"
RESPONSE_HEADERS = "cf-cloudflared-response-headers"
RESPONSE_META = "cf-cloudflared-response-meta"

CONTROL_STREAM = "control-stream"
WEBSOCKET = "websocket"
UPDATE_CONFIGURATION = "update-configuration"

#: Announced in ClientInfo.features by adit connectors that read REQUEST_HEADERS.
FEATURE_SERIALIZED_REQUEST_HEADERS = "adit_serialized_request_headers"

#: RFC 9110 §7.6.1 connection-specific fields (plus the legacy ones HTTP/2 forbids).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)


# Names never serialised into RESPONSE_HEADERS (connection/header.go).
_INTERNAL_PREFIXES = (":", "cf-int-", "cf-cloudflared-", "cf-proxy-")
_INTERNAL_INITIALS = frozenset(":cC")


# Request header names the tunnel gives meaning to: the stream kind (PROXY_CONNECTION_UPGRADE,
# PROXY_SRC), the serialised headers, whatever cloudflared reserves by prefix
# (connection/header.go), and cloudflared's tracing request (tracing.go, "cf-trace-id": it
# makes the connector trace the request and answer with its spans). Only the edge may send
# them; an eyeball's copy never enters a tunnel, and a connector never passes one to an origin.
_TUNNEL_PREFIXES = _INTERNAL_PREFIXES
_TUNNEL_NAMES = frozenset({"cf-trace-id"})


def is_tunnel_internal(name: str) -> bool:
    """True for a request header name the tunnel protocol gives meaning to.

    ``_`` counts as ``-``: CGI-style origins read ``Cf_Cloudflared_Proxy_Src`` and
    ``Cf-Cloudflared-Proxy-Src`` as one variable.
    """
    return (_fates.get(name) or _judge(name)) == _INTERNAL


def strip_tunnel_internal(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """``headers`` without the names :func:`is_tunnel_internal` rules out, order kept."""
    known = _fates
    return [pair for pair in headers if (known.get(pair[0]) or _judge(pair[0])) != _INTERNAL]


def strip_for_tunnel(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """What of a request's headers may enter a tunnel, in one pass: no hop-by-hop header nor
    one the ``Connection`` header names (:func:`strip_hop_by_hop`), and none the tunnel gives
    meaning to (:func:`strip_tunnel_internal`)."""
    return _strip(headers, _TUNNEL_FATES)


def _strip(headers: Iterable[tuple[str, str]], dropped: int) -> list[tuple[str, str]]:
    # One pass; the Connection-named headers are rare and filtered after.
    known = _fates
    kept: list[tuple[str, str]] = []
    named: set[str] = set()
    for pair in headers:
        fate = known.get(pair[0]) or _judge(pair[0])
        if fate == _CONNECTION:
            named.update(token.strip().lower() for token in pair[1].split(","))
        elif not fate & dropped:
            kept.append(pair)
    if named:
        kept = [pair for pair in kept if pair[0].lower() not in named]
    return kept


# What a request header name is to the tunnel, by name: every request repeats most names, so
# each is lower-cased and judged once, and the passes above cost a dict lookup a header (they
# run on every request, at the edge and at the connector). Bounded like the caches below.
_KEEP, _HOP, _CONNECTION, _INTERNAL = 1, 2, 4, 8  # bits: a pass drops a set of them
_HOP_FATES = _HOP
_TUNNEL_FATES = _HOP | _INTERNAL
_fates: dict[str, int] = {}


def _judge(name: str) -> int:
    lowered = name.lower()
    if lowered in HOP_BY_HOP:
        fate = _CONNECTION if lowered == "connection" else _HOP
    else:
        lowered = lowered.replace("_", "-")
        internal = lowered.startswith(_TUNNEL_PREFIXES) or lowered in _TUNNEL_NAMES
        fate = _INTERNAL if internal else _KEEP
    if len(name) <= _CACHE_PAIR_BYTES:
        if len(_fates) >= _CACHE_ENTRIES:
            _fates.clear()
        _fates[name] = fate
    return fate


class RequestType(enum.Enum):
    """What an edge-initiated HTTP/2 request asks the connector for (§4.2)."""

    HTTP = "http"
    WEBSOCKET = "websocket"
    TCP = "tcp"
    CONTROL_STREAM = "control-stream"
    CONFIGURATION = "configuration"


_SPECIAL_LENGTHS = frozenset((len(PROXY_CONNECTION_UPGRADE), len(PROXY_SRC)))


def classify_request(headers: Iterable[tuple[str, str]]) -> RequestType:
    """Classify a request by its special headers, in cloudflared's order of precedence."""
    upgrade = ""
    src = ""
    for name, value in headers:
        if len(name) not in _SPECIAL_LENGTHS:
            continue
        lowered = name.lower()
        if lowered == PROXY_CONNECTION_UPGRADE:
            upgrade = value
        elif lowered == PROXY_SRC:
            src = value
    if upgrade == UPDATE_CONFIGURATION:
        return RequestType.CONFIGURATION
    if upgrade == WEBSOCKET:
        return RequestType.WEBSOCKET
    if src:
        return RequestType.TCP
    if upgrade == CONTROL_STREAM:
        return RequestType.CONTROL_STREAM
    return RequestType.HTTP


def wire_bytes(text: str) -> bytes:
    """Header text to wire bytes: adit carries header bytes as latin-1 text, one char a byte.

    Text that is not latin-1 (only our own code could make it) goes out as UTF-8.
    """
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


# binascii on bytes directly: the base64 module's wrappers and str round trips were most of
# the cost of a header block. pybase64 (SIMD) for a long value: a credential header (a
# cookie, Access's assertion) is near a kilobyte of base64 each way on every request, which
# binascii's byte loop made a tenth of the edge's CPU for a request through Access. But
# pybase64 costs a fixed 0.2 µs to encode and 0.5 µs to decode with validation, more than
# binascii's whole work below about 100 bytes: most names and values are that short.
_SHORT = 96


def _b64(data: str) -> bytes:
    raw = wire_bytes(data)
    if len(raw) < _SHORT:
        return binascii.b2a_base64(raw, newline=False).rstrip(b"=")
    return pybase64.b64encode(raw).rstrip(b"=")


def _unb64(data: bytes) -> str:
    padded = data + b"=" * (-len(data) % 4)
    try:
        if len(padded) < _SHORT:
            raw = binascii.a2b_base64(padded, strict_mode=True)
        else:
            raw = pybase64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HeaderDecodeError(f"bad base64 in serialised headers: {data[:32]!r}") from exc
    return raw.decode("latin-1")


# Most headers repeat from one request or response to the next (Host, User-Agent, Accept...,
# Server, Content-Type...): like HPACK's dynamic table, each process remembers the pairs it
# coded recently, so a repeated one costs a dict lookup instead of two base64 round trips
# (they were a third of the tunnel protocol's CPU per request). The output is a pure function
# of the input, so nothing crosses from one tunnel to another; credentials are never kept
# here, so their lifetime in memory is not that of the process and no timing can tell a
# guess apart. Names whose value is new on every request are not kept either: they would
# only push out the pairs that do repeat.
_CACHE_ENTRIES = 2048
_CACHE_PAIR_BYTES = 256
_CREDENTIALS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "cf-access-client-secret",
        "cf-access-jwt-assertion",
        "cf-access-token",
        "cf-authorization",
    }
)
_NEW_EVERY_TIME = frozenset(
    {
        "cf-ray",
        "x-request-id",
        "traceparent",
        "tracestate",
        "x-amzn-trace-id",
        "x-b3-traceid",
        "x-b3-spanid",
        "sentry-trace",
        "sec-websocket-key",
        "sec-websocket-accept",
    }
)
_NEVER_CACHED = _CREDENTIALS | _NEW_EVERY_TIME
# What one visitor connection repeats and the process cache does not take: its cookie (near
# a kilobyte under Access, and on most sites), its Authorization, a long value. Kept by the
# connection (``keep``), so it lives as long as the connection that sent it and no other
# visitor's requests ever look it up. A few: a browser's connection repeats one or two.
_KEPT_PER_CONNECTION = 4
_encoded: dict[tuple[str, str], bytes] = {}
_decoded: dict[bytes, tuple[str, str]] = {}


def _cacheable(name: str, size: int) -> bool:
    return size <= _CACHE_PAIR_BYTES and name.lower() not in _NEVER_CACHED


def _encode_pair(pair: tuple[str, str], keep: dict[tuple[str, str], bytes] | None) -> bytes:
    """``b64(name):b64(value)``, or ``b""`` for an internal name (left out); remembered in the
    process's cache, or else in ``keep`` (a connection's), as the comment above says."""
    name, value = pair
    piece = serialized_pair(name, value)
    lowered = name.lower()
    if lowered in _NEW_EVERY_TIME:
        return piece
    if _cacheable(lowered, len(name) + len(value)):
        if len(_encoded) >= _CACHE_ENTRIES:
            _encoded.clear()
        _encoded[pair] = piece
    elif keep is not None:
        if len(keep) >= _KEPT_PER_CONNECTION:
            keep.clear()
        keep[pair] = piece
    return piece


def _decode_pair(piece: bytes) -> tuple[str, str]:
    name, sep, value = piece.partition(b":")
    if not sep:
        raise HeaderDecodeError(f"serialised header without ':': {piece[:32]!r}")
    pair = (_unb64(name), _unb64(value))
    if _cacheable(pair[0], len(piece)):
        if len(_decoded) >= _CACHE_ENTRIES:
            _decoded.clear()
        _decoded[piece] = pair
    return pair


def encode_serialized_headers(
    headers: Iterable[tuple[str, str]],
    encoded: Mapping[tuple[str, str], bytes] | None = None,
    keep: dict[tuple[str, str], bytes] | None = None,
) -> bytes:
    """``b64(name):b64(value)`` pairs joined by ``;`` (unpadded standard base64).

    Internal names (``:…``, ``cf-int-…``, ``cf-cloudflared-…``, ``cf-proxy-…``) are left out,
    exactly as cloudflared does; repeated names stay repeated and in order. ``encoded``:
    pairs the caller coded already (:func:`serialized_pair`), such as a credential it keeps
    for a session anyway, which this module's cache never holds. ``keep``: the sending
    connection's own memo of the pairs it repeats that this module's cache does not hold (a
    few, bounded here; the caller keeps it as long as the connection).
    """
    known = _encoded
    pieces = []
    for pair in headers:
        piece = known.get(pair)
        if (
            piece is None
            and (encoded is None or (piece := encoded.get(pair)) is None)
            and (keep is None or (piece := keep.get(pair)) is None)
        ):
            piece = _encode_pair(tuple(pair), keep)  # type: ignore[arg-type]
        if piece:
            pieces.append(piece)
    return b";".join(pieces)


def serialized_pair(name: str, value: str) -> bytes:
    """One pair as :func:`encode_serialized_headers` codes it (not remembered here)."""
    if name[:1] in _INTERNAL_INITIALS and name.lower().startswith(_INTERNAL_PREFIXES):
        return b""
    return _b64(name) + b":" + _b64(value)


def decode_serialized_headers(value: bytes | str) -> list[tuple[str, str]]:
    """Inverse of :func:`encode_serialized_headers`; tolerates padding and empty input."""
    if isinstance(value, str):
        value = wire_bytes(value)
    known = _decoded
    out: list[tuple[str, str]] = []
    for piece in value.split(b";"):
        pair = known.get(piece)
        if pair is None:
            if not piece:
                continue
            pair = _decode_pair(piece)
        out.append(pair)
    return out


def is_hop_by_hop(name: str) -> bool:
    """True for a connection-specific header name (case-insensitive)."""
    return name.lower() in HOP_BY_HOP


def strip_hop_by_hop(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop hop-by-hop headers and every header the ``Connection`` header names."""
    return _strip(headers, _HOP_FATES)


class ResponseMeta(enum.Enum):
    """``cf-cloudflared-response-meta``: did the origin or the connector answer?"""

    ORIGIN = '{"src":"origin"}'
    CONNECTOR = '{"src":"cloudflared"}'
    FLOW_RATE_LIMITED = '{"src":"cloudflared","flow_rate_limited":true}'

    @classmethod
    def parse(cls, value: str | None) -> ResponseMeta:
        """Parse the header; anything unreadable counts as a connector-side answer."""
        if value is None:
            return cls.CONNECTOR
        member = _META_BY_VALUE.get(value)
        if member is not None:
            return member
        if len(value) > _META_MAX_LENGTH:
            # Bounds json's recursion (RecursionError on "[[[[..."), not just its time.
            return cls.CONNECTOR
        try:
            data = json.loads(value)
        except ValueError:
            return cls.CONNECTOR
        if not isinstance(data, dict):
            return cls.CONNECTOR
        if data.get("src") == "origin":
            return cls.ORIGIN
        if data.get("flow_rate_limited"):
            return cls.FLOW_RATE_LIMITED
        return cls.CONNECTOR


_META_BY_VALUE = {member.value: member for member in ResponseMeta}
# cloudflared's longest meta is under 64 characters.
_META_MAX_LENGTH = 128
