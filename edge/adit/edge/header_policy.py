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
            named.update(_tokens(value))
    return frozenset(named)


def _tokens(value: bytes) -> list[str]:
    return [token.strip() for token in value.decode("latin-1").lower().split(",")]


# What to do with a header name, by its raw bytes: every request repeats most names (Host,
# User-Agent, Accept...), so each is decoded, lower-cased and judged once, not per request
# (the policy runs on every request's hot path). Bounded like the serialised-header caches.
_PASS, _DROP, _CHAIN, _CONNECTION = range(4)
_CACHE_ENTRIES = 1024
_CACHE_NAME_BYTES = 64
_verdicts: dict[bytes, tuple[int, str, str]] = {}


def _verdict(raw_name: bytes) -> tuple[int, str, str]:
    """``(what to do, name as text, lower-cased name)`` for a header name."""
    name = raw_name.decode("latin-1")
    lowered = name.lower()
    if lowered == "connection":
        verdict = _CONNECTION
    elif lowered == _XFF:
        verdict = _CHAIN
    elif lowered in HOP_BY_HOP or _asserted(lowered):
        verdict = _DROP
    else:
        verdict = _PASS
    entry = (verdict, name, lowered)
    if len(raw_name) <= _CACHE_NAME_BYTES:
        if len(_verdicts) >= _CACHE_ENTRIES:
            _verdicts.clear()
        _verdicts[raw_name] = entry
    return entry


def tunnel_request_headers(
    headers: list[tuple[bytes, bytes]], client_ip: str, scheme: str, ray: str
) -> list[tuple[str, str]]:
    """The headers to send into a tunnel for an eyeball request with ``headers`` (raw bytes)
    that came from ``client_ip`` over ``scheme``, as latin-1 text (one char a byte)."""
    known = _verdicts
    out = []
    prior = []
    named: list[str] = []
    for raw_name, raw_value in headers:
        entry = known.get(raw_name) or _verdict(raw_name)
        verdict = entry[0]
        if verdict == _PASS:
            out.append((entry[1], raw_value.decode("latin-1")))
        elif verdict == _CHAIN:
            prior.append(raw_value.decode("latin-1"))
        elif verdict == _CONNECTION:
            named += _tokens(raw_value)
    if named:
        # Rare beyond "keep-alive"/"close"/"upgrade": the visitor's own headers it names go.
        gone = frozenset(named) - HOP_BY_HOP
        if gone:
            out = [pair for pair in out if pair[0].lower() not in gone]
            if _XFF in gone:
                prior = []
    chain = ", ".join([*prior, client_ip]) if client_ip else ", ".join(prior)
    out.append(("Cf-Ray", ray))
    if client_ip:
        out.append(("Cf-Connecting-Ip", client_ip))
    if chain:
        out.append(("X-Forwarded-For", chain))
    out.append(("X-Forwarded-Proto", scheme))
    out.append(("Cf-Visitor", _VISITOR.get(scheme) or json.dumps({"scheme": scheme})))
    return out
