"""Service strings of ingress rules → origin service values (cloudflared ``validateIngress``).

Checked in cloudflared's order: ``unix:``, ``unix+tls:``, ``http_status:``, ``hello_world``,
``socks-proxy``, ``bastion`` (or a rule whose resolved ``bastionMode`` is true), then a URL
with a scheme and a host and no path: ``http``/``https``/``ws``/``wss`` are HTTP origins,
any other scheme is TCP over WebSocket. URL parsing follows Go's ``net/url`` closely enough
that the same strings are accepted and rejected with the same messages.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from adit.config.origin import (
    BastionService,
    HelloWorldService,
    HttpService,
    OriginOptions,
    Service,
    SocksProxyService,
    StatusService,
    StreamService,
    UnixService,
)

__all__ = ["GoURL", "go_atoi", "parse_go_url", "parse_service", "url_service"]

DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}
STREAM_DEFAULT_PORTS: Final = {"ssh": 22, "rdp": 3389, "smb": 445, "tcp": 7864}
HTTP_SCHEMES: Final = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
_ATOI = re.compile(r"[+-]?[0-9]+")


def go_quote(text: str) -> str:
    """Go's ``strconv.Quote`` for the printable strings config files hold."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def go_atoi(text: str) -> int:
    """Go's ``strconv.Atoi``, with its error messages."""
    if not _ATOI.fullmatch(text):
        raise ValueError(f"strconv.Atoi: parsing {go_quote(text)}: invalid syntax")
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"strconv.Atoi: parsing {go_quote(text)}: value out of range")
    return value


class GoURL(msgspec.Struct, frozen=True):
    """The parts of a URL as Go's ``url.Parse`` splits them (scheme lower-cased)."""

    scheme: str
    host: str  # authority without userinfo, e.g. ``localhost:8080`` or ``[::1]:80``
    hostname: str  # without port or brackets
    port: str
    path: str
    opaque: str
    suffix: str  # ``?query`` and ``#fragment`` as written

    def text(self) -> str:
        """The URL as Go's ``URL.String`` prints it for these parts."""
        if self.opaque:
            return f"{self.scheme}:{self.opaque}{self.suffix}"
        return f"{self.scheme}://{self.host}{self.path}{self.suffix}"


def parse_go_url(raw: str) -> GoURL:
    """Split ``raw`` like Go's ``url.Parse``; ``ValueError`` with Go's message on failure."""
    rest, hash_mark, fragment = raw.partition("#")
    suffix = f"#{fragment}" if hash_mark else ""
    scheme = ""
    colon = rest.find(":")
    match = _SCHEME.match(rest)
    if colon == 0:
        raise ValueError(f"parse {go_quote(raw)}: missing protocol scheme")
    if match is not None and match.end() == colon:
        scheme, rest = rest[:colon].lower(), rest[colon + 1 :]
    rest, question, query = rest.partition("?")
    suffix = (f"?{query}" if question else "") + suffix
    if scheme and not rest.startswith("/"):
        return GoURL(scheme, "", "", "", "", rest, suffix)
    if not scheme and ":" in rest.partition("/")[0]:
        raise ValueError(f"parse {go_quote(raw)}: first path segment in URL cannot contain colon")
    if not rest.startswith("//"):
        return GoURL(scheme, "", "", "", rest, "", suffix)
    authority, slash, path = rest[2:].partition("/")
    host = authority.rpartition("@")[2]
    hostname, port = _split_host(host, raw)
    return GoURL(scheme, host, hostname, port, slash + path, "", suffix)


def _split_host(host: str, raw: str) -> tuple[str, str]:
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise ValueError(f"parse {go_quote(raw)}: missing ']' in host")
        hostname, port_part = host[1:end], host[end + 1 :]
    else:
        hostname, colon, port = host.rpartition(":")
        hostname, port_part = (hostname, colon + port) if colon else (host, "")
    if port_part and (port_part[0] != ":" or not all(c.isdigit() for c in port_part[1:])):
        raise ValueError(f"parse {go_quote(raw)}: invalid port {go_quote(port_part)} after host")
    if any(c in ' <>"{}|\\^`' for c in hostname):
        bad = next(c for c in hostname if c in ' <>"{}|\\^`')
        raise ValueError(f"parse {go_quote(raw)}: invalid character {go_quote(bad)} in host name")
    return hostname, port_part[1:]


def url_service(url: GoURL) -> HttpService | StreamService:
    """An HTTP origin for http(s)/ws(s), else TCP over WebSocket with default ports."""
    bracketed = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    if url.scheme in HTTP_SCHEMES:
        port = int(url.port) if url.port else DEFAULT_PORTS[url.scheme]
        return HttpService(HTTP_SCHEMES[url.scheme], url.hostname, port, url.text())
    host = url.host
    if url.port:
        port = int(url.port)
    elif url.scheme in STREAM_DEFAULT_PORTS:
        port = STREAM_DEFAULT_PORTS[url.scheme]
        host = f"{bracketed}:{port}"
    else:
        port = 0
    return StreamService(url.scheme, url.hostname, port, f"{url.scheme}://{host}")


def parse_service(value: str, options: OriginOptions) -> tuple[Service, OriginOptions]:
    """The service for ``value`` and the rule's options (``bastion_mode`` forced on bastions).

    Raises ``ValueError`` with cloudflared's message. A ``socks-proxy`` rule's ip rules come
    from the rule's own ``originRequest``; the caller validates and sets them.
    """
    if value.startswith("unix:"):
        path = value.removeprefix("unix:")
        return UnixService(path, False, value), options
    if value.startswith("unix+tls:"):
        path = value.removeprefix("unix+tls:")
        return UnixService(path, True, value), options
    if value.startswith("http_status:"):
        digits = value.removeprefix("http_status:")
        try:
            status = go_atoi(digits)
        except ValueError as exc:
            raise ValueError(f"invalid HTTP status code: {exc}") from None
        if not 100 <= status <= 999:
            raise ValueError(f"invalid HTTP status code: {status}")
        return StatusService(status, f"http_status:{status}"), options
    if value in ("hello_world", "hello-world"):
        return HelloWorldService(), options
    if value == "socks-proxy":
        return SocksProxyService(), options
    if value == "bastion" or options.bastion_mode:
        return BastionService(), msgspec.structs.replace(options, bastion_mode=True)
    url = parse_go_url(value)
    if not url.scheme or not url.hostname:
        raise ValueError(
            f"{value} is an invalid address, please make sure it has a scheme and a hostname"
        )
    if url.path:
        raise ValueError(
            f"{value} is an invalid address, ingress rules don't support proxying to a "
            "different path on the origin service. The path will be the same as the eyeball "
            "request's path"
        )
    return url_service(url), options
