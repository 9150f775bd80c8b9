"""What an eyeball's request headers become on their way into a tunnel: the edge's one policy.

An origin behind the edge believes some headers because only the edge (or the connector) can
have set them: who Access admitted, the visitor's address and country, the scheme, the Ray ID,
the connector's tags. A visitor's copy of any of them is a forgery, so the policy is:

1. Drop every header the tunnel gives meaning to
   (:func:`adit.protocol.headers.is_tunnel_internal`: ``Cf-Cloudflared-*``, ``Cf-Int-*``,
   ``Cf-Proxy-*``, ``Cf-Trace-Id``). ``send_request`` drops them again, whatever calls it.
2. Drop every header the edge or the connector asserts: the whole ``Cf-`` namespace
   (Cloudflare's: ``Cf-Access-Authenticated-User-Email``, ``Cf-Access-Jwt-Assertion``,
   ``Cf-Ipcountry``, ``Cf-Visitor``, ``Cf-Connecting-Ip``, ``Cf-Ray``, ``Cf-Warp-Tag-*``,
   ``Cf-Worker``...) but for the few a visitor sends on purpose (:data:`_VISITOR_SENT`); and
   the other client-address claims origins' "real IP" modules trust (``True-Client-Ip``,
   ``X-Real-Ip``, ``Forwarded``) and ``X-Forwarded-Proto``. ``_`` counts as ``-``: CGI-style
   origins (PHP, WSGI) read ``Cf_Connecting_Ip`` and ``Cf-Connecting-Ip`` as one variable.
3. Set the edge's own values, as Cloudflare documents its request headers ("Cloudflare HTTP
   headers"): ``Cf-Ray``, ``Cf-Connecting-Ip``, ``X-Forwarded-For`` (the visitor's chain with
   the address it connected from appended), ``X-Forwarded-Proto`` and
   ``Cf-Visitor: {"scheme":"..."}``. Not set: ``Cf-Ipcountry`` (the edge has no geolocation
   yet, and "XX" would claim a lookup), ``True-Client-Ip`` (an Enterprise-only transform at
   Cloudflare), ``X-Real-Ip`` and ``Forwarded`` (Cloudflare sends neither).

Connection-specific headers end at the edge (RFC 9110 §7.6.1, RFC 9113 §8.2.2): the
hop-by-hop set and every header the visitor's ``Connection`` names are dropped here, before the
edge adds its own, so ``Connection: Cf-Connecting-Ip`` drops nothing but the visitor's own
copy. Every other header passes, in order, with the visitor's casing.
"""

from __future__ import annotations

import json

from adit.protocol.headers import HOP_BY_HOP, is_tunnel_internal

__all__ = ["is_websocket_upgrade", "tunnel_request_headers"]

# Cf- headers that are the visitor's own words, not the edge's: each passes unchanged.
_VISITOR_SENT = frozenset(
    {
        # Access service-token credentials a client presents (`access tcp --id/--secret`,
        # scripts); Access at the edge reads them, and origins that check them themselves
        # still may. They assert nothing about the visitor that the edge vouches for.
        "cf-access-client-id",
        "cf-access-client-secret",
        # The Access client's own token (`cloudflared access` sends its JWT in it); what the
        # edge asserts after checking a token is Cf-Access-Jwt-Assertion, which is dropped.
        "cf-access-token",
        # The destination an `access tcp/ssh` client asks a bastion-mode connector for: the
        # visitor's choice by design (Access policy decides whether it may make it).
        "cf-access-jump-destination",
    }
)
# Client-address claims besides the Cf- ones, and the scheme the edge states itself.
_EDGE_ASSERTED = frozenset({"true-client-ip", "x-real-ip", "forwarded", "x-forwarded-proto"})
_XFF = "x-forwarded-for"
_CONNECTION_LENGTH = len("connection")
_VISITOR = {
    scheme: json.dumps({"scheme": scheme}, separators=(",", ":")) for scheme in ("http", "https")
}


def is_websocket_upgrade(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether an eyeball request's (raw) headers ask to switch to WebSocket: ``Upgrade:
    websocket`` and an ``upgrade`` token in ``Connection`` (RFC 6455 §4.1)."""
    upgrade = any(n.lower() == b"upgrade" and v.strip().lower() == b"websocket" for n, v in headers)
    return upgrade and "upgrade" in _connection_named(headers)


def _asserted(lowered: str) -> bool:
    """True for a (lower-case) name only the edge, the connector or the tunnel may send."""
    if "_" in lowered:
        lowered = lowered.replace("_", "-")
    if lowered.startswith("cf-"):
        return lowered not in _VISITOR_SENT
    # X_Forwarded_For too: the visitor's chain is only taken from the standard name.
    return lowered in _EDGE_ASSERTED or lowered == _XFF or is_tunnel_internal(lowered)


def _connection_named(headers: list[tuple[bytes, bytes]]) -> frozenset[str]:
    """The (lower-case) names the ``Connection`` headers list; empty without one."""
    named: set[str] = set()
    for name, value in headers:
        if len(name) == _CONNECTION_LENGTH and name.lower() == b"connection":
            tokens = value.decode("latin-1").lower().split(",")
            named.update(token.strip() for token in tokens)
    return frozenset(named)


def tunnel_request_headers(
    headers: list[tuple[bytes, bytes]], client_ip: str, scheme: str, ray: str
) -> list[tuple[str, str]]:
    """The headers to send into a tunnel for an eyeball request with ``headers`` (raw bytes)
    that came from ``client_ip`` over ``scheme``, as latin-1 text (one char a byte)."""
    dropped = _connection_named(headers) | HOP_BY_HOP
    out = []
    prior = []
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1")
        lowered = name.lower()
        if lowered in dropped:
            continue
        if lowered == _XFF:
            prior.append(raw_value.decode("latin-1"))
        elif not _asserted(lowered):
            out.append((name, raw_value.decode("latin-1")))
    chain = ", ".join([*prior, client_ip]) if client_ip else ", ".join(prior)
    out.append(("Cf-Ray", ray))
    if client_ip:
        out.append(("Cf-Connecting-Ip", client_ip))
    if chain:
        out.append(("X-Forwarded-For", chain))
    out.append(("X-Forwarded-Proto", scheme))
    out.append(("Cf-Visitor", _VISITOR.get(scheme) or json.dumps({"scheme": scheme})))
    return out
