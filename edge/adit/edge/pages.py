"""Error pages the edge answers by itself, telling apart what went wrong where.

404: no route for this hostname. 530 (Cloudflare's error 1033): the hostname belongs to a
tunnel that has no live connection. 502: the connector reached no origin, or the stream broke.
524: the tunnel did not answer in time. 400, 408, 431: the visitor's request was bad or slow.

A page says what class of thing went wrong and the Ray ID, never the detail: addresses and
errors from inside the tunnel are for the operator, who finds them in the edge's log under
the same Ray ID.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class ErrorPage:
    """A status, a short title and what the visitor or owner can do about it."""

    status: int
    code: str
    title: str
    detail: str
    #: What :meth:`render` makes (a subclass may answer in JSON).
    content_type: ClassVar[str] = "text/html; charset=utf-8"

    def extra_headers(self) -> tuple[tuple[str, str], ...]:
        """Headers the answer carries besides its type and length (Access's ``Location``)."""
        return ()

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

ORIGIN_REFUSED = ErrorPage(
    502,
    "502",
    "Bad gateway: the origin could not be reached: it refused the connection",
    "The tunnel is up, but its connector could not connect to the origin service: nothing "
    "accepted the connection. The tunnel owner should check that the origin is running and "
    "that the ingress rule points at the right address and port.",
)

ORIGIN_TIMEOUT = ErrorPage(
    502,
    "502",
    "Bad gateway: the origin could not be reached: the connection timed out",
    "The tunnel is up, but the origin service did not accept the connector's connection in "
    "time. The tunnel owner should check the origin, or raise originRequest.connectTimeout.",
)

ORIGIN_TLS = ErrorPage(
    502,
    "502",
    "Bad gateway: the origin could not be reached: TLS verification failed",
    "The tunnel is up, but the origin's TLS certificate was not accepted by the connector. "
    "The tunnel owner can set originRequest.originServerName to the name in the certificate, "
    "add its CA with originRequest.caPool, or set originRequest.noTLSVerify.",
)

#: The connector's ``adit-origin-error`` values and their pages.
ORIGIN_FAILURES = {"refused": ORIGIN_REFUSED, "timeout": ORIGIN_TIMEOUT, "tls": ORIGIN_TLS}


def origin_failure_page(reason: str) -> ErrorPage:
    """The page for a connector 502 with ``reason`` (generic when absent or unknown)."""
    return ORIGIN_FAILURES.get(reason.strip().lower(), ORIGIN_FAILED)


STREAM_FAILED = ErrorPage(
    502,
    "502",
    "Bad gateway: the tunnel stream failed",
    "The tunnel connection broke while this request was in flight. Retrying usually works.",
)

BAD_RESPONSE = ErrorPage(
    502,
    "502",
    "Bad gateway: the origin's response could not be delivered",
    "The tunnel answered with a response that is not valid HTTP (a malformed header, or a "
    "body that does not match its length). The tunnel owner should check the origin.",
)

TUNNEL_TIMEOUT = ErrorPage(
    524,
    "524",
    "A timeout occurred",
    "The tunnel is up, but the origin did not answer in time. The tunnel owner should check "
    "why the origin is slow to respond.",
)

BAD_REQUEST = ErrorPage(400, "400", "Bad request", "The request could not be parsed.")

REQUEST_TIMEOUT = ErrorPage(
    408, "408", "Request timeout", "The request did not arrive in time; try again."
)

HEADERS_TOO_LARGE = ErrorPage(
    431,
    "431",
    "Request header fields too large",
    "The request's headers exceed this edge's limit.",
)
