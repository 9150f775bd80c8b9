"""Validated ingress rules as the data plane sees them: services and resolved origin options.

The config loader (``adit.config.ingress``) produces these from ``config.yml`` or remote JSON;
workers only read them. They are immutable so a config snapshot can be swapped atomically.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

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


@dataclass(frozen=True, slots=True)
class IpRule:
    """One ``ipRules`` entry: a CIDR prefix, optional ports, allow or deny."""

    prefix: str
    ports: tuple[int, ...] = ()
    allow: bool = False


@dataclass(frozen=True, slots=True)
class AccessSettings:
    """``originRequest.access``: origin-side Access JWT check."""

    required: bool = False
    team_name: str = ""
    aud_tags: tuple[str, ...] = ()
    environment: str = ""


@dataclass(frozen=True, slots=True)
class OriginOptions:
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


@dataclass(frozen=True, slots=True)
class HttpService:
    """``http://``/``https://`` (``ws``/``wss`` mapped) origin; ``url`` has no path."""

    scheme: str  # "http" or "https"
    host: str
    port: int
    url: str  # normalised, as shown by `ingress rule`, e.g. "http://localhost:8080"


@dataclass(frozen=True, slots=True)
class UnixService:
    """``unix:/path`` (HTTP) or ``unix+tls:/path`` (HTTPS) over a unix socket."""

    path: str
    tls: bool
    url: str


@dataclass(frozen=True, slots=True)
class StatusService:
    """``http_status:NNN``: a fixed status with an empty body."""

    status: int
    url: str


@dataclass(frozen=True, slots=True)
class HelloWorldService:
    """``hello_world``: the built-in test origin."""

    url: str = "hello_world"


@dataclass(frozen=True, slots=True)
class StreamService:
    """``ssh://``, ``rdp://``, ``smb://``, ``tcp://`` or any other scheme: TCP over WebSocket."""

    scheme: str
    host: str
    port: int
    url: str


@dataclass(frozen=True, slots=True)
class BastionService:
    """``bastion`` (or ``bastionMode``): destination from ``Cf-Access-Jump-Destination``."""

    url: str = "bastion"


@dataclass(frozen=True, slots=True)
class SocksProxyService:
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


@dataclass(frozen=True, slots=True)
class Rule:
    """One validated ingress rule. ``index`` is 0-based, as ``ingress rule`` prints it."""

    index: int
    hostname: str  # "" or "*" match every host; "*.example.com" matches subdomains
    punycode_hostname: str  # the IDNA form of ``hostname`` ("" when identical)
    path: re.Pattern[str] | None
    service: Service
    options: OriginOptions = field(default_factory=OriginOptions)
