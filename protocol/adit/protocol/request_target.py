"""The request target: one path for the ingress rule that matches it and the origin that serves it.

A path rule is only a boundary if every spelling of a path reaches the rule the normal spelling
reaches. The edge therefore rewrites each eyeball target to one normal form *before* routing,
and forwards that form, so the connector matches and the origin serves the same path:

* The absolute form (``GET http://host/p``) becomes the origin form (``/p``). RFC 9112 §3.2.2
  makes the absolute form's authority win over ``Host``; the edge routes by ``Host``, so the
  two must name the same host and port, else the request is refused (400) rather than guessed.
* The path is normalised as Cloudflare's edge does by default (its "URL normalization" type
  *Cloudflare*): ``\\`` becomes ``/``; runs of ``/`` merge into one; then RFC 3986 §6.2.2:
  percent-encoded unreserved characters are decoded (``/%6fther`` is ``/other``), other
  percent-encodings are upper-cased, characters a path may not hold are percent-encoded, and
  dot segments are removed (§5.2.4). Cloudflare applies this to what its rules see and, by
  default, forwards the original; here the origin gets the normal form too, since the rule
  and the origin must see one path.
* Reserved characters stay as sent: ``%2F`` is data, not a separator, so ``/a%2Fb`` is
  forwarded as it is. The connector matches ingress rules on the *decoded* path, as cloudflared
  matches Go's ``URL.Path`` (:func:`decoded_path`). A decoded path with an empty or dot segment
  (``/x/..%2Fadmin`` decodes to ``/x/../admin``) would be one path to the rule and another to
  an origin that decodes ``%2F`` before resolving dots (nginx does): such targets are refused.
* The query is forwarded exactly as sent; a fragment, ``CONNECT`` (authority form), ``*``
  (asterisk form) and anything else that is not a path of the routed host are refused.

Pure functions over latin-1 text (one char per byte, as adit carries all header bytes).
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

import msgspec

from adit.protocol.errors import BadRequestTarget

__all__ = ["RequestTarget", "decoded_path", "normalize_path", "normalize_target"]

_UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
#: RFC 3986 ``pchar`` without ``pct-encoded``, and ``/``: a path holds these as they are.
_PATH_CHARS = _UNRESERVED + "!$&'()*+,;=:@/"
# Every escape's two hex digits (any case) → its normal form: the character itself when
# unreserved, else the escape in upper case. A lookup, not a call per escape: a 64 KB target
# of escapes must cost a few milliseconds, not a blocked event loop.
_ESCAPES = {
    f"{high}{low}": chr(value) if chr(value) in _UNRESERVED else f"%{value:02X}"
    for value in range(256)
    for high in {f"{value:02x}"[0], f"{value:02X}"[0]}
    for low in {f"{value:02x}"[1], f"{value:02X}"[1]}
}
# Characters a path may not hold, percent-encoded ("%" is left: it starts the escapes).
_ENCODE = {code: f"%{code:02X}" for code in range(256) if chr(code) not in _PATH_CHARS + "%"}
_PATH_SET = frozenset(_PATH_CHARS)
_SLASHES = re.compile(r"/{2,}")
_ABSOLUTE = re.compile(r"(https?)://([^/?#]*)(.*)", re.IGNORECASE | re.DOTALL)
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


class RequestTarget(msgspec.Struct, frozen=True):
    """A request target in normal origin form, and the authority to route it by."""

    #: The normalised path, then ``?query`` exactly as sent.
    path: str
    #: ``Host`` (or the absolute form's authority when a HTTP/1.0 request has no ``Host``).
    authority: str


def normalize_target(method: str, target: str, host: str) -> RequestTarget:
    """The origin-form target the edge forwards for ``method target`` with ``Host: host``.

    Raises :class:`BadRequestTarget` (the edge answers 400) for a target that is not a path
    of the host being routed, or whose path cannot be made one unambiguous path.
    """
    if method == "CONNECT":
        raise BadRequestTarget("CONNECT: the edge is not a forward proxy")
    if target[:1] != "/":
        if target == "*":
            raise BadRequestTarget("the asterisk form asks about the edge itself, not an origin")
        target, host = _origin_form(target, host)
    if "#" in target:
        raise BadRequestTarget("a request target holds no fragment")
    query = target.find("?")
    path = target if query < 0 else target[:query]
    # Most targets are already normal: no copy of them then (this runs on every request).
    normal = normalize_path(path)
    if normal is not path:
        target = normal if query < 0 else normal + target[query:]
    return RequestTarget(target, host)


def _origin_form(target: str, host: str) -> tuple[str, str]:
    """``(origin-form target, authority)`` for an absolute-form ``target``."""
    absolute = _ABSOLUTE.fullmatch(target)
    if absolute is None:
        raise BadRequestTarget("the request target is neither a path nor an http(s) URL")
    scheme, authority, rest = absolute.groups()
    if not authority or "@" in authority:
        raise BadRequestTarget("the URL's authority is empty or holds user information")
    if host and _canonical(authority, scheme) != _canonical(host, scheme):
        raise BadRequestTarget("the URL names another host than the Host header")
    return ("/" + rest if rest[:1] != "/" else rest), host or authority


def _canonical(authority: str, scheme: str) -> str:
    """An authority for comparison: case folded, the scheme's default port and a final dot
    dropped (``EXAMPLE.com.:80`` and ``example.com`` name the same host over http)."""
    folded = authority.lower().removesuffix(_DEFAULT_PORTS[scheme.lower()])
    return folded.removesuffix(".")


def normalize_path(path: str) -> str:
    """``path`` (starting with ``/``) in Cloudflare's normal form; see the module docstring.

    Idempotent; the result starts with ``/`` and has no empty or dot segment (a final ``/``
    aside). Raises :class:`BadRequestTarget` for a broken percent-encoding, or when decoding
    the result's ``%2F`` / ``%5C`` would give a path with an empty or dot segment.
    """
    # Most paths are normal already: only path characters (no "%", no backslash), no empty
    # segment, no segment that starts with "." (a cheap superset of the dot segments).
    if _PATH_SET.issuperset(path) and "//" not in path and "/." not in path:
        return path
    path = _SLASHES.sub("/", path.replace("\\", "/"))
    path = _remove_dot_segments(_recode(path))
    if "%2F" in path or "%5C" in path:
        _refuse_hidden_segments(path)
    return path


def _recode(path: str) -> str:
    """Decode percent-encoded unreserved characters, upper-case the other percent-encodings,
    percent-encode characters a path may not hold (RFC 3986 §6.2.2.1-2)."""
    first, *escaped = path.split("%")
    try:
        path = first + "".join([_ESCAPES[piece[:2]] + piece[2:] for piece in escaped])
    except KeyError:
        raise BadRequestTarget("a '%' in the path starts no percent-encoding") from None
    encoded = path.translate(_ENCODE)
    if not encoded.isascii():
        # Wider than latin-1 (only our own code makes such text): its UTF-8 bytes, encoded.
        encoded = "".join(c if c.isascii() else _utf8_escapes(c) for c in encoded)
    return encoded


def _utf8_escapes(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8"))


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 for an absolute path without empty segments."""
    segments = path.split("/")[1:]
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment != ".":
            kept.append(segment)
    # "/a/b/.." is "/a/": a dot segment at the end leaves the directory it names.
    if segments[-1] in (".", "..") and kept:
        kept.append("")
    return "/" + "/".join(kept)


def _refuse_hidden_segments(path: str) -> None:
    # The unreserved escapes are decoded already (%2E is "."): only %2F and %5C turn into
    # separators when the path is decoded, so this is the decoded path's segment structure.
    seen = path.replace("%2F", "/").replace("%5C", "/")
    inner = seen.split("/")[1:-1]
    if "" in inner or "." in inner or ".." in inner or seen.endswith(("/.", "/..")):
        raise BadRequestTarget("an encoded '/' or '\\' in the path hides an empty or dot segment")


def decoded_path(target: str) -> str:
    """The path an ingress rule matches for ``target``: the part before ``?``, every
    percent-encoding decoded and the bytes read as UTF-8 (cloudflared matches Go's
    ``URL.Path``, whose bytes Go's regexp reads as UTF-8, U+FFFD for a bad sequence)."""
    path = target.partition("?")[0]
    if "%" not in path and path.isascii():
        return path
    return unquote_to_bytes(_latin1(path)).decode("utf-8", "replace")


def _latin1(text: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")
