"""Turning an eyeball request into the HTTP/1.1 request head sent to an origin.

Pure functions: they mirror cloudflared's ``proxy.proxyHTTPRequest`` and
``ingress.httpService.RoundTrip`` header edits (CLOUDFLARED_FEATURES.md §3) so they can be
tested without sockets. Header names keep the casing and order the tunnel delivered; the
headers cloudflared sets itself use Go's canonical casing, since that is what an origin sees
from cloudflared.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping

import msgspec

from adit.config.origin import OriginOptions
from adit.protocol.headers import is_tunnel_internal
from adit.workers.stream import IncomingRequest, StreamKind

__all__ = [
    "BodyFraming",
    "OriginRequestHead",
    "build_request_head",
    "canonical_header_name",
    "tag_headers",
]

# RFC 9110 §7.6.1 connection-specific fields; "host" and the framing fields are rebuilt here.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade"}
)
# The connector's own tags (``--tag``): its word to the origin, never a visitor's.
_TAG_PREFIX = "Cf-Warp-Tag-"
# Go's Transport probes bodies of these methods before choosing chunked framing.
_BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "DELETE", "CONNECT"})


class BodyFraming(enum.Enum):
    """How the request body is framed towards the origin."""

    NONE = "none"  # no body (websocket upgrade, or known empty)
    LENGTH = "length"  # the eyeball's Content-Length is forwarded
    CHUNKED = "chunked"  # Transfer-Encoding: chunked
    PROBE = "probe"  # bodyless-looking method, length unknown: peek before choosing
    BUFFERED = "buffered"  # disableChunkedEncoding without a length: read all, then send length


class OriginRequestHead(msgspec.Struct, frozen=True):
    """Request line and headers for the origin, plus how the body will be framed.

    ``headers`` exclude any framing header (Content-Length/Transfer-Encoding) unless
    ``framing`` is LENGTH; the sender adds it once the framing is settled.
    """

    method: str
    target: str
    host: str  # value of the Host header sent
    headers: tuple[tuple[str, str], ...]
    framing: BodyFraming
    content_length: int | None = None


def canonical_header_name(name: str) -> str:
    """Go's ``textproto.CanonicalMIMEHeaderKey``: ``cf-warp-tag-id`` -> ``Cf-Warp-Tag-Id``."""
    if not name.isascii() or " " in name:
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def tag_headers(connector_id: uuid.UUID, tags: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """``Cf-Warp-Tag-Id: <connector id>`` then one ``Cf-Warp-Tag-<K>`` per ``--tag K=V``."""
    pairs = [(f"{_TAG_PREFIX}Id", str(connector_id))]
    pairs.extend(
        (canonical_header_name(f"{_TAG_PREFIX}{name}"), value) for name, value in tags.items()
    )
    return tuple(pairs)


# Dropped from every forwarded request (the Host and framing headers are rebuilt).
_DROPPED = _HOP_BY_HOP | {"host", "content-length"}
_TAG_LOWER = _TAG_PREFIX.lower()


def _connector_owned(lowered: str) -> bool:
    """A name only the tunnel or this connector may send the origin: the eyeball's copy is
    dropped, so the tags are *set*, never appended after a forged one (cloudflared appends).
    ``_`` counts as ``-``, as CGI-style origins read them."""
    if lowered[:1] != "c":
        return False  # most names
    lowered = lowered.replace("_", "-")
    return lowered.startswith(_TAG_LOWER) or is_tunnel_internal(lowered)


def _content_length(value: str) -> int | None:
    try:
        length = int(value.strip())
    except ValueError:
        return None
    return length if length >= 0 else None


def build_request_head(
    request: IncomingRequest,
    options: OriginOptions,
    tags: tuple[tuple[str, str], ...],
) -> OriginRequestHead:
    """The origin request for ``request`` under ``options``; ``tags`` from :func:`tag_headers`."""
    websocket = request.kind is StreamKind.WEBSOCKET
    public_host = request.authority or request.host
    host = options.http_host_header or public_host
    # One lower-casing pass: it finds the Connection-named fields and the first
    # Content-Length, and the filter below reuses it.
    lowered = [name.lower() for name, _ in request.headers]
    dropped = _DROPPED
    length: int | None = None
    seen_length = False
    for lower, (_, value) in zip(lowered, request.headers, strict=True):
        if lower == "connection":
            named = {token.strip().lower() for token in value.split(",") if token.strip()}
            dropped = dropped | named
        elif lower == "content-length" and not seen_length:
            seen_length = True
            length = _content_length(value)
    if options.http_host_header:
        dropped = dropped | {"x-forwarded-host"}
    if websocket:
        dropped = dropped | {"sec-websocket-version"}

    headers: list[tuple[str, str]] = [("Host", host)]
    headers.extend(
        pair
        for lower, pair in zip(lowered, request.headers, strict=True)
        if lower not in dropped and not _connector_owned(lower)
    )
    headers.extend(tags)
    if options.http_host_header:
        headers.append(("X-Forwarded-Host", public_host))

    if websocket:
        headers.extend(
            [
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("Sec-Websocket-Version", "13"),
            ]
        )
        return OriginRequestHead(
            request.method, request.path, host, tuple(headers), BodyFraming.NONE
        )

    headers.append(("Connection", "keep-alive"))
    if length is not None:
        headers.append(("Content-Length", str(length)))
        framing = BodyFraming.LENGTH
    elif options.disable_chunked_encoding:
        framing = BodyFraming.BUFFERED
    elif request.method.upper() in _BODYLESS_METHODS:
        framing = BodyFraming.PROBE
    else:
        framing = BodyFraming.CHUNKED
    return OriginRequestHead(request.method, request.path, host, tuple(headers), framing, length)
