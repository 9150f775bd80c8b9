"""Error pages the edge answers by itself, telling apart what went wrong where.

404: no route for this hostname. 530 (Cloudflare's error 1033): the hostname belongs to a
tunnel that has no live connection. 502: the connector reached no origin, or the stream broke.
"""

from __future__ import annotations

import html
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ErrorPage:
    """A status, a short title and what the visitor or owner can do about it."""

    status: int
    code: str
    title: str
    detail: str

    def render(self, host: str, ray: str) -> bytes:
        """The HTML body."""
        return (
            '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)} | {html.escape(host)}</title></head>\n"
            f"<body><h1>Error {html.escape(self.code)}: {html.escape(self.title)}</h1>\n"
            f"<p>{html.escape(self.detail)}</p>\n"
            f"<p><small>host: {html.escape(host)} &middot; ray id: {html.escape(ray)} &middot; "
            "adit edge</small></p></body></html>\n"
        ).encode()


UNKNOWN_HOST = ErrorPage(
    404,
    "404",
    "No tunnel serves this hostname",
    "This edge has no route for the requested hostname. The tunnel owner can add one with "
    "`adit tunnel route dns <tunnel> <hostname>`.",
)

TUNNEL_DOWN = ErrorPage(
    530,
    "1033",
    "Tunnel error: the tunnel has no live connection",
    "The hostname is routed to a tunnel, but no connector is connected to it right now. The "
    "tunnel owner should check that `adit tunnel run` (or cloudflared) is running and can reach "
    "this edge.",
)

ORIGIN_FAILED = ErrorPage(
    502,
    "502",
    "Bad gateway: the origin could not be reached",
    "The tunnel is up, but its connector could not reach the origin service behind it (it "
    "refused, timed out or failed TLS verification). The tunnel owner should check the origin "
    "and the connector's log.",
)

STREAM_FAILED = ErrorPage(
    502,
    "502",
    "Bad gateway: the tunnel stream failed",
    "The tunnel connection broke while this request was in flight. Retrying usually works.",
)

BAD_REQUEST = ErrorPage(400, "400", "Bad request", "The request could not be parsed.")

HEADERS_TOO_LARGE = ErrorPage(
    431,
    "431",
    "Request header fields too large",
    "The request's headers exceed this edge's limit.",
)
