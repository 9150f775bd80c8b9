"""Validated ingress rules as the data plane sees them: services and resolved origin options.

The config loader (``adit.config.ingress``) produces these from ``config.yml`` or remote JSON;
workers only read them. They are immutable so a config snapshot can be swapped atomically.
They are frozen msgspec Structs: defining them as eleven dataclasses cost ~14 ms of the import,
on the path of both the CLI's settings and a worker's first request.
"""

from __future__ import annotations

import re

import msgspec

__all__ = [
    "AccessSettings",
    "BastionService",
    "HelloWorldService",
    "HttpService",
    "IpRule",
    "OriginOptions",
    "Rule",
    "Service",
    "SocksProxyService",
    "StatusService",
    "StreamService",
    "UnixService",
]


class IpRule(msgspec.Struct, frozen=True):
    """One ``ipRules`` entry: a CIDR prefix, optional ports, allow or deny."""

    prefix: str
    ports: tuple[int, ...] = ()
    allow: bool = False


class AccessSettings(msgspec.Struct, frozen=True):
    """``originRequest.access``: origin-side Access JWT check."""

    required: bool = False
    team_name: str = ""
    aud_tags: tuple[str, ...] = ()
    environment: str = ""
    #: The issuer URL when not Cloudflare's (``teamDomain``, adit only); "" otherwise.
    team_domain: str = ""


class OriginOptions(msgspec.Struct, frozen=True):
    """``originRequest`` with every key resolved: defaults ← top level ← rule, key by key.

    Durations are seconds (float). Defaults are cloudflared's (CLOUDFLARED_FEATURES.md §3).
    """

    connect_timeout: float = 30.0
    tls_timeout: float = 10.0
    tcp_keep_alive: float = 30.0
    no_happy_eyeballs: bool = False
    keep_alive_connections: int = 100
    keep_alive_timeout: float = 90.0
    http_host_header: str = ""
    origin_server_name: str = ""
    match_sni_to_host: bool = False
    ca_pool: str = ""
    no_tls_verify: bool = False
    disable_chunked_encoding: bool = False
    bastion_mode: bool = False
    proxy_address: str = "127.0.0.1"
    proxy_port: int = 0
    proxy_type: str = ""
    ip_rules: tuple[IpRule, ...] = ()
    http2_origin: bool = False
    access: AccessSettings | None = None


class HttpService(msgspec.Struct, frozen=True):
    """``http://``/``https://`` (``ws``/``wss`` mapped) origin; ``url`` has no path."""

    scheme: str  # "http" or "https"
    host: str
    port: int
    url: str  # normalised, as shown by `ingress rule`, e.g. "http://localhost:8080"


class UnixService(msgspec.Struct, frozen=True):
    """``unix:/path`` (HTTP) or ``unix+tls:/path`` (HTTPS) over a unix socket."""

    path: str
    tls: bool
    url: str


class StatusService(msgspec.Struct, frozen=True):
    """``http_status:NNN``: a fixed status with an empty body."""

    status: int
    url: str


class HelloWorldService(msgspec.Struct, frozen=True):
    """``hello_world``: the built-in test origin."""

    url: str = "hello_world"


class StreamService(msgspec.Struct, frozen=True):
    """``ssh://``, ``rdp://``, ``smb://``, ``tcp://`` or any other scheme: TCP over WebSocket."""

    scheme: str
    host: str
    port: int
    url: str


class BastionService(msgspec.Struct, frozen=True):
    """``bastion`` (or ``bastionMode``): destination from ``Cf-Access-Jump-Destination``."""

    url: str = "bastion"


class SocksProxyService(msgspec.Struct, frozen=True):
    """``socks-proxy``: SOCKS5 over WebSocket, filtered by the rule's ``ipRules``."""

    url: str = "socks-proxy"


Service = (
    HttpService
    | UnixService
    | StatusService
    | HelloWorldService
    | StreamService
    | BastionService
    | SocksProxyService
)


class Rule(msgspec.Struct, frozen=True):
    """One validated ingress rule. ``index`` is 0-based, as ``ingress rule`` prints it."""

    index: int
    hostname: str  # "" or "*" match every host; "*.example.com" matches subdomains
    punycode_hostname: str  # ``hostname`` normalised (lower case, A-labels; "" when identical)
    path: re.Pattern[str] | None
    service: Service
    options: OriginOptions = msgspec.field(default_factory=OriginOptions)
