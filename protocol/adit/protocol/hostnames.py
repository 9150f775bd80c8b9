"""Hostnames and ``host:port`` addresses: one idea of each, shared by the edge and the connector.

The edge routes a request by its ``Host`` and the connector picks an ingress rule by the same
``Host``: if the two read it differently, a request the edge sends to a tunnel falls through to
the connector's catch-all (``RAW.EXAMPLE.COM`` and ``raw.example.com.`` did). So both sides take
the host out of an authority with :func:`host_of_authority` and compare names only in the form
:func:`normalize_hostname` gives:

* lower case (DNS names compare case-insensitively, RFC 4343);
* no trailing dot (``example.com.`` is the same absolute name);
* non-ASCII labels as IDNA A-labels (UTS #46 mapping, as Go's ``idna.Lookup`` that cloudflared
  uses for a rule's ``punycodeHostname``), so ``bücher`` and ``xn--bcher-kva`` are one name.

cloudflared itself matches rules case-sensitively and keeps the trailing dot; we follow it in
everything else (a ``*.`` rule covers subdomains at any depth, never the apex).

:func:`check_hostname` adds RFC 1035's limits for names that come from outside (a visitor's
``Host``, an API caller's route): at most 253 bytes, labels of 1 to 63 bytes of letters, digits,
hyphens and underscores (underscores occur in real names, e.g. ``_acme-challenge``), no label
starting or ending with a hyphen (RFC 1123 §2.1). Its cost is
bounded by the input's length, which is refused before any work when it cannot be a hostname.

Address splitting follows Go's ``net.SplitHostPort`` exactly, since cloudflared's flags and
config values are parsed with it.
"""

from __future__ import annotations

import contextlib
import re

import idna

__all__ = [
    "MAX_HOSTNAME_LENGTH",
    "MAX_LABEL_LENGTH",
    "AddressError",
    "InvalidHostname",
    "check_hostname",
    "host_of_authority",
    "is_within",
    "join_host_port",
    "normalize_authority",
    "normalize_hostname",
    "split_address",
    "split_host_port",
]

#: RFC 1035 §2.3.4: 255 octets on the wire, i.e. 253 characters in dotted text.
MAX_HOSTNAME_LENGTH = 253
MAX_LABEL_LENGTH = 63
# Longer input is refused unread: a name with one trailing dot is at most 254 characters, and a
# Unicode spelling is never shorter than its A-label form but for perverse mappings (UTS #46
# drops soft hyphens and joiners), which may as well be refused.
_MAX_INPUT = MAX_HOSTNAME_LENGTH + 1
_LABEL_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")
# The common case in one match (a visitor's Host, once per request): lower-case ASCII labels
# of 1 to 63 allowed characters, no hyphen at either end. Anything else takes the long way,
# which also says what is wrong.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_VALID = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}")


class InvalidHostname(ValueError):
    """Not a hostname by RFC 1035's rules (``str()`` says why)."""


class AddressError(ValueError):
    """A ``host:port`` that Go's ``net.SplitHostPort`` would refuse; ``str()`` is Go's text."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"address {address}: {reason}")
        self.address = address
        self.reason = reason


# -- hostnames --------------------------------------------------------------------------------


def _normalize_label(label: str) -> str:
    # Lower-cased and mapped before encoding, so that a label that cannot be encoded comes out
    # as what the next pass would see too (normalising twice changes nothing).
    label = label.lower()
    if label.isascii():
        return label
    with contextlib.suppress(idna.IDNAError, UnicodeError, ValueError):
        label = idna.uts46_remap(label, std3_rules=False, transitional=False)
    try:
        return idna.alabel(label).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        # Not encodable: still one spelling for it (and nothing a valid name can equal).
        return label


def normalize_hostname(name: str) -> str:
    """The one spelling of ``name`` the edge and the connector compare: lower case, no
    trailing dot, non-ASCII labels as A-labels. Total (never raises) and idempotent; a ``*``
    label or any other text that is no hostname passes through lower-cased."""
    if not name.isascii():
        # UTS #46 first, on the whole name: it also maps the ideographic full stops to ".".
        with contextlib.suppress(idna.IDNAError, UnicodeError, ValueError):
            name = idna.uts46_remap(name, std3_rules=False, transitional=False)
    name = name.rstrip(".")
    if name.isascii():
        return name.lower()
    return ".".join(_normalize_label(label) for label in name.split("."))


def check_hostname(name: str, *, wildcard: bool = False) -> str:
    """``name`` normalised, or :class:`InvalidHostname` when it breaks RFC 1035's limits.

    With ``wildcard``, a leading ``*.`` label is allowed (a route pattern such as
    ``*.example.com``); it is kept in the result.
    """
    if len(name) > _MAX_INPUT:
        raise InvalidHostname(f"hostname longer than {MAX_HOSTNAME_LENGTH} characters")
    if name.isascii():
        normal = name.rstrip(".").lower()
        if len(normal) <= MAX_HOSTNAME_LENGTH and _VALID.fullmatch(normal):
            return normal
    normal = normalize_hostname(name)
    if not normal:
        raise InvalidHostname("empty hostname")
    if len(normal) > MAX_HOSTNAME_LENGTH:
        raise InvalidHostname(f"hostname longer than {MAX_HOSTNAME_LENGTH} characters")
    labels = normal.split(".")
    if wildcard and labels[0] == "*" and len(labels) > 1:
        labels = labels[1:]
    for label in labels:
        if not label:
            raise InvalidHostname("empty label in hostname")
        if len(label) > MAX_LABEL_LENGTH:
            raise InvalidHostname(f"label longer than {MAX_LABEL_LENGTH} characters")
        if not _LABEL_CHARACTERS.issuperset(label):
            raise InvalidHostname(
                "a hostname has only letters, digits, hyphens and underscores between dots"
            )
        if label[0] == "-" or label[-1] == "-":
            raise InvalidHostname("a label neither starts nor ends with a hyphen")
    return normal


def is_within(name: str, zone: str) -> bool:
    """Whether normalised ``name`` is ``zone`` or a name below it (``a.b.example.com`` is
    within ``example.com``; ``badexample.com`` is not)."""
    return name == zone or name.endswith("." + zone)


# -- addresses --------------------------------------------------------------------------------


def split_host_port(address: str) -> tuple[str, str]:
    """Go's ``net.SplitHostPort``: ``host:port`` or ``[v6]:port`` → ``(host, port)``.

    The port may be empty (``example.com:``); brackets are removed from the host. Raises
    :class:`AddressError` with Go's wording otherwise.
    """
    colon = address.rfind(":")
    if colon < 0:
        raise AddressError(address, "missing port in address")
    open_at, close_at = 0, 0  # no '[' before open_at, no ']' before close_at
    if address.startswith("["):
        end = address.find("]")
        if end < 0:
            raise AddressError(address, "missing ']' in address")
        if end + 1 == len(address):
            raise AddressError(address, "missing port in address")
        if end + 1 != colon:
            if address[end + 1] == ":":
                raise AddressError(address, "too many colons in address")
            raise AddressError(address, "missing port in address")
        host = address[1:end]
        open_at, close_at = 1, end + 1
    else:
        host = address[:colon]
        if ":" in host:
            raise AddressError(address, "too many colons in address")
    if "[" in address[open_at:]:
        raise AddressError(address, "unexpected '[' in address")
    if "]" in address[close_at:]:
        raise AddressError(address, "unexpected ']' in address")
    return host, address[colon + 1 :]


def host_of_authority(authority: str) -> str:
    """The host of an HTTP authority (``Host`` header, ``:authority``), port removed.

    As cloudflared's ``FindMatchingRule``: whatever ``net.SplitHostPort`` cannot split is the
    host as it stands, but for a bare ``[v6]`` literal, whose brackets are removed too.
    """
    if ":" not in authority:  # the usual Host: no port, nothing to split (or to raise)
        return authority
    try:
        return split_host_port(authority)[0]
    except AddressError:
        if authority.startswith("[") and authority.endswith("]"):
            return authority[1:-1]
        return authority


def normalize_authority(authority: str) -> str:
    """``authority`` with its host in the one spelling (:func:`normalize_hostname`), the port
    as it was: what the edge forwards, so that every connector, cloudflared included (whose
    rules compare names as given), and the origin see the name the edge routed."""
    host = host_of_authority(authority)
    normal = normalize_hostname(host)
    if normal == host or ":" in normal:
        # (A host that only normalises to something with a colon, U+FE13 "︓" to ":", is no
        # hostname: it is refused before routing, and respelling it would change the host.)
        return authority
    if ":" not in authority or ":" in host:
        return normal  # no port (an IPv6 literal is no hostname: nothing is routed to it)
    return join_host_port(normal, split_host_port(authority)[1])


def split_address(address: str, *, default_host: str = "") -> tuple[str, int]:
    """A listen or dial address ``host:port`` → ``(host, port)``; an empty host is
    ``default_host``. :class:`AddressError` unless the port is a number from 0 to 65535."""
    host, port = split_host_port(address)
    if not port.isdigit() or not port.isascii() or int(port) > 65535:
        raise AddressError(address, "invalid port")
    return host or default_host, int(port)


def join_host_port(host: str, port: int | str) -> str:
    """Go's ``net.JoinHostPort``: brackets around an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
