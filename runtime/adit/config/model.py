"""The raw config file as msgspec Structs: keys and types exactly as cloudflared reads them.

Nothing here is validated beyond types; ``adit.config.ingress`` turns these into the immutable
rules of ``adit.config.origin``. ``None`` always means "not set", so that key-by-key overrides
(defaults ← top-level ``originRequest`` ← rule ``originRequest``) can tell "absent" from
"false". Durations are :class:`~adit.config.duration.Duration` (Go strings in YAML, integer
seconds in JSON); see :func:`duration_hook`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Final

import msgspec

from adit.config.duration import Duration

__all__ = [
    "GO_TYPE_NAMES",
    "AccessConfig",
    "ConfigFile",
    "IngressRuleConfig",
    "IpRuleConfig",
    "OriginRequestConfig",
    "RemoteConfig",
    "WarpRoutingConfig",
    "duration_hook",
    "to_json_object",
]

Unsigned = Annotated[int, msgspec.Meta(ge=0)]


class AccessConfig(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``originRequest.access``: require a valid Cloudflare Access JWT at the origin."""

    required: bool = False
    team_name: str = msgspec.field(default="", name="teamName")
    aud_tag: list[str] = msgspec.field(default_factory=list, name="audTag")
    environment: str = ""
    #: adit only: the Access issuer's URL (``https://host[:port]``) in place of
    #: ``https://<teamName>.cloudflareaccess.com``, e.g. a self-hosted edge's Access.
    team_domain: str = msgspec.field(default="", name="teamDomain")


class IpRuleConfig(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One ``originRequest.ipRules`` entry (used by ``socks-proxy`` rules)."""

    prefix: str | None = None
    ports: list[int] = msgspec.field(default_factory=list)
    allow: bool = False


class OriginRequestConfig(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``originRequest`` (top level or per rule); every key optional, ``None`` = unset."""

    connect_timeout: Duration | None = msgspec.field(default=None, name="connectTimeout")
    tls_timeout: Duration | None = msgspec.field(default=None, name="tlsTimeout")
    tcp_keep_alive: Duration | None = msgspec.field(default=None, name="tcpKeepAlive")
    no_happy_eyeballs: bool | None = msgspec.field(default=None, name="noHappyEyeballs")
    keep_alive_connections: int | None = msgspec.field(default=None, name="keepAliveConnections")
    keep_alive_timeout: Duration | None = msgspec.field(default=None, name="keepAliveTimeout")
    http_host_header: str | None = msgspec.field(default=None, name="httpHostHeader")
    origin_server_name: str | None = msgspec.field(default=None, name="originServerName")
    match_sni_to_host: bool | None = msgspec.field(default=None, name="matchSNItoHost")
    ca_pool: str | None = msgspec.field(default=None, name="caPool")
    no_tls_verify: bool | None = msgspec.field(default=None, name="noTLSVerify")
    disable_chunked_encoding: bool | None = msgspec.field(
        default=None, name="disableChunkedEncoding"
    )
    bastion_mode: bool | None = msgspec.field(default=None, name="bastionMode")
    proxy_address: str | None = msgspec.field(default=None, name="proxyAddress")
    proxy_port: Unsigned | None = msgspec.field(default=None, name="proxyPort")
    proxy_type: str | None = msgspec.field(default=None, name="proxyType")
    ip_rules: list[IpRuleConfig] | None = msgspec.field(default=None, name="ipRules")
    http2_origin: bool | None = msgspec.field(default=None, name="http2Origin")
    access: AccessConfig | None = None


class IngressRuleConfig(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One unvalidated ``ingress`` list item (cloudflared ``UnvalidatedIngressRule``)."""

    hostname: str = ""
    path: str = ""
    service: str = ""
    origin_request: OriginRequestConfig | None = msgspec.field(default=None, name="originRequest")


class WarpRoutingConfig(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``warp-routing``: private-network proxying parameters (enablement is remote)."""

    connect_timeout: Duration | None = msgspec.field(default=None, name="connectTimeout")
    tcp_keep_alive: Duration | None = msgspec.field(default=None, name="tcpKeepAlive")
    max_active_flows: Unsigned | None = msgspec.field(default=None, name="maxActiveFlows")


class RemoteConfig(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Remotely managed configuration (and ``ingress validate --json``): JSON, seconds."""

    ingress: list[IngressRuleConfig] | None = None
    origin_request: OriginRequestConfig | None = msgspec.field(default=None, name="originRequest")
    warp_routing: WarpRoutingConfig | None = msgspec.field(default=None, name="warp-routing")


class ConfigFile(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, rename="kebab"):
    """A whole ``config.yml``: the modelled keys plus every flag name usable as a key.

    Flag keys keep the flag's spelling (``grace-period``); the attribute is the snake-case
    form (``grace_period``). Keys that are neither are kept by the loader, not here.
    """

    tunnel: str | None = None
    ingress: list[IngressRuleConfig] | None = None
    origin_request: OriginRequestConfig | None = msgspec.field(default=None, name="originRequest")
    warp_routing: WarpRoutingConfig | None = None

    # Credentials and identity.
    credentials_file: str | None = None
    cred_file: str | None = None
    credentials_contents: str | None = None
    token: str | None = None
    token_file: str | None = None
    origincert: str | None = None
    # Single-origin mode (ignored when ``ingress`` is present).
    url: str | None = None
    hello_world: bool | None = None
    unix_socket: str | None = None
    bastion: bool | None = None
    socks5: bool | None = None
    proxy_connect_timeout: Duration | None = None
    proxy_tls_timeout: Duration | None = None
    proxy_tcp_keepalive: Duration | None = None
    proxy_no_happy_eyeballs: bool | None = None
    proxy_keepalive_connections: int | None = None
    proxy_keepalive_timeout: Duration | None = None
    proxy_connection_timeout: Duration | None = None
    proxy_expect_continue_timeout: Duration | None = None
    http_host_header: str | None = None
    origin_server_name: str | None = None
    origin_ca_pool: str | None = None
    no_tls_verify: bool | None = None
    no_chunked_encoding: bool | None = None
    http2_origin: bool | None = None
    proxy_address: str | None = None
    proxy_port: Unsigned | None = None
    # Observability.
    metrics: str | None = None
    pidfile: str | None = None
    loglevel: str | None = None
    transport_loglevel: str | None = None
    proto_loglevel: str | None = None
    logfile: str | None = None
    log_directory: str | None = None
    output: str | None = None
    log_format: str | None = None
    trace_output: str | None = None
    management_diagnostics: bool | None = None
    # Edge connections.
    protocol: str | None = None
    post_quantum: bool | None = None
    edge: str | list[str] | None = None
    cacert: str | None = None
    region: str | None = None
    edge_ip_version: str | None = None
    edge_bind_address: str | None = None
    ha_connections: int | None = None
    retries: int | None = None
    max_edge_addr_retries: int | None = None
    rpc_timeout: Duration | None = None
    write_stream_timeout: Duration | None = None
    grace_period: Duration | None = None
    quic_disable_pmtu_discovery: bool | None = None
    quic_connection_level_flow_control_limit: Unsigned | None = None
    quic_stream_level_flow_control_limit: Unsigned | None = None
    max_active_flows: Unsigned | None = None
    # Connector identity and behaviour.
    tag: str | list[str] | None = None
    label: str | None = None
    features: str | list[str] | None = None
    no_autoupdate: bool | None = None
    autoupdate_freq: Duration | None = None
    no_prechecks: bool | None = None
    management_hostname: str | None = None
    stdin_control: bool | None = None
    api_url: str | None = None
    quick_service: str | None = None
    # Ad-hoc named tunnels.
    hostname: str | None = None
    name: str | None = None
    lb_pool: str | None = None
    # adit only: number of worker processes.
    workers: Unsigned | None = None

    def edge_addresses(self) -> list[str]:
        """``edge`` as a list (a single string is one address)."""
        return _as_list(self.edge)

    def tags(self) -> list[str]:
        """``tag`` as a list of ``KEY=VALUE`` strings."""
        return _as_list(self.tag)


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


GO_TYPE_NAMES: Final[dict[type[msgspec.Struct], str]] = {
    OriginRequestConfig: "config.OriginRequestConfig",
    IngressRuleConfig: "config.UnvalidatedIngressRule",
    WarpRoutingConfig: "config.WarpRoutingConfig",
    AccessConfig: "config.AccessConfig",
    IpRuleConfig: "config.IngressIPRule",
}
"""cloudflared's Go type name for each modelled struct, as its "unused keys" list shows it."""


def duration_hook(*, json_seconds: bool) -> Callable[[type, Any], Any]:
    """A msgspec ``dec_hook`` building :class:`Duration` from Go strings or JSON seconds."""

    def hook(target: type, value: Any) -> Any:
        if target is not Duration:
            raise NotImplementedError(f"unsupported type {target!r}")
        if json_seconds:
            if isinstance(value, int) and not isinstance(value, bool):
                return Duration.from_seconds(value)
            raise ValueError(f"expected integer seconds, got {_kind(value)}")
        if isinstance(value, str):
            return Duration.parse(value)
        raise ValueError(f'expected a duration string like "30s" or "1m30s", got {_kind(value)}')

    return hook


def _kind(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float", list: "list", dict: "map"}.get(
        type(value), type(value).__name__
    )


def _encode_duration(value: Any) -> Any:
    if isinstance(value, Duration):
        seconds = value.seconds
        return int(seconds) if seconds.is_integer() else seconds
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


def to_json_object(value: msgspec.Struct) -> Any:
    """``value`` as JSON-ready builtins in remote-config form (durations in seconds)."""
    return msgspec.to_builtins(value, enc_hook=_encode_duration)
