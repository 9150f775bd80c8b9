"""What the edge accepts from users as names and secrets, and which names are zones.

* Display names (tunnels, accounts, token labels) are printed by the CLIs into terminals and
  logs: no control, format or separator characters (an ``ESC [`` sequence rewrites a terminal,
  U+202E reverses the text after it), and a bounded length.
* A tunnel secret given by a client must not be guessable: at least 32 bytes, as cloudflared
  asks, and not a short repeated pattern (all zero bytes was accepted).
* A zone is a hostname with at least two labels that is no public suffix (Mozilla's list, as
  shipped by the ``publicsuffixlist`` package: nothing is fetched at run time) and not under
  ``localhost``, which the edge keeps for its own quick tunnels. A route lies inside one of its
  account's zones; a wildcard route's base does, so ``*.example.com`` never covers more than
  zone ``example.com``.
"""

from __future__ import annotations

import functools
import unicodedata

from publicsuffixlist import PublicSuffixList

from adit.edge.errors import (
    HostnameOutsideZones,
    HostnameRefused,
    InvalidName,
    WeakSecret,
    ZoneRefused,
)
from adit.protocol.hostnames import InvalidHostname, check_hostname, is_within

__all__ = [
    "MAX_COMMENT_LENGTH",
    "MAX_NAME_LENGTH",
    "MIN_SECRET_BYTES",
    "QUICK_TUNNEL_DOMAIN",
    "check_comment",
    "check_name",
    "check_route_name",
    "check_secret",
    "check_zone_name",
    "zone_for_route",
]

MAX_NAME_LENGTH = 255
#: Cloudflare's limit for the comment of an IP route or a virtual network.
MAX_COMMENT_LENGTH = 100
MIN_SECRET_BYTES = 32
#: A random 32-byte secret has about 30 distinct byte values; fewer than this is a pattern.
_MIN_DISTINCT_SECRET_BYTES = 16
#: RFC 6761 loopback names: the edge's quick tunnels live here, no account's zone does.
QUICK_TUNNEL_DOMAIN = "localhost"
# Control (Cc), format (Cf: bidi overrides, zero-width), line and paragraph separators, and
# lone surrogates (which JSON can carry and UTF-8 cannot store).
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def check_name(text: str, what: str, *, allow_empty: bool = False) -> str:
    """``text`` if it may be kept as a display name, else :class:`InvalidName`."""
    if not text and not allow_empty:
        raise InvalidName(f"{what} required")
    if len(text) > MAX_NAME_LENGTH:
        raise InvalidName(f"{what} must be at most {MAX_NAME_LENGTH} characters")
    if any(unicodedata.category(c) in _REFUSED_CATEGORIES for c in text):
        raise InvalidName(f"{what} must not contain control characters")
    return text


def check_comment(text: str) -> str:
    """``text`` if it may be kept as the comment of an IP route or a virtual network (a
    display name, empty allowed, at most :data:`MAX_COMMENT_LENGTH` characters)."""
    if len(text) > MAX_COMMENT_LENGTH:
        raise InvalidName(f"comment must be at most {MAX_COMMENT_LENGTH} characters")
    return check_name(text, "comment", allow_empty=True)


def check_secret(secret: bytes) -> bytes:
    """``secret`` if it is long and varied enough to be a tunnel secret, else
    :class:`WeakSecret`."""
    if len(secret) < MIN_SECRET_BYTES:
        raise WeakSecret(f"tunnel_secret must be at least {MIN_SECRET_BYTES} bytes long")
    if len(set(secret)) < _MIN_DISTINCT_SECRET_BYTES:
        raise WeakSecret("tunnel_secret is too weak: use random bytes (e.g. `openssl rand 32`)")
    return secret


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    # Parsing the shipped list takes ~0.1 s: done on the first zone or route write.
    return PublicSuffixList()


def _registrable(name: str) -> str:
    return _public_suffixes().privatesuffix(name) or name


def check_zone_name(name: str) -> str:
    """The normalised zone name, or :class:`ZoneRefused`."""
    try:
        zone = check_hostname(name)
    except InvalidHostname as exc:
        raise ZoneRefused(f"{name!r} is not a hostname: {exc}") from None
    if "." not in zone:
        raise ZoneRefused(f"{zone} is a single label: a zone is a domain such as example.com")
    if is_within(zone, QUICK_TUNNEL_DOMAIN):
        raise ZoneRefused(f"{zone} is under {QUICK_TUNNEL_DOMAIN}, kept for quick tunnels")
    if _public_suffixes().is_public(zone):
        raise ZoneRefused(f"{zone} is a public suffix: names below it belong to different owners")
    return zone


def check_route_name(hostname: str) -> str:
    """The normalised route name (``*.`` kept), or :class:`HostnameRefused`."""
    try:
        name = check_hostname(hostname, wildcard=True)
    except InvalidHostname as exc:
        raise HostnameRefused(f"{hostname} is not a valid hostname: {exc}") from None
    base = name.removeprefix("*.")
    if "." not in base:
        raise HostnameRefused(f"{name} is a single label: routes name hosts inside a zone")
    if _public_suffixes().is_public(base):
        raise HostnameRefused(
            f"{name} is (or covers) a public suffix: routes name hosts inside a zone"
        )
    return name


def zone_for_route(name: str, zones: list[str], account_tag: str) -> str:
    """The zone of ``zones`` (the account's) holding route ``name`` (normalised, ``*.``
    allowed), or :class:`HostnameOutsideZones` naming the zone the admin would have to add."""
    base = name.removeprefix("*.")
    inside = [zone for zone in zones if is_within(base, zone)]
    if not inside:
        raise HostnameOutsideZones(name, _registrable(base), account_tag)
    return max(inside, key=len)
