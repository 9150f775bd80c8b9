"""Resolving ``originRequest``: built-in defaults ← top level ← rule, key by key.

Only keys present (not ``None``) override; ``ipRules`` overrides only when non-empty, and
entries that are not valid CIDR/port rules are dropped silently there (cloudflared only
rejects them on ``socks-proxy`` rules, see :func:`build_ip_rule`); ``access`` replaces as a
whole.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from typing import Any

import msgspec

from adit.config.duration import Duration
from adit.config.model import AccessConfig, IpRuleConfig, OriginRequestConfig
from adit.config.origin import AccessSettings, IpRule, OriginOptions

__all__ = ["access_settings", "build_ip_rule", "resolve_options", "team_domain_error"]


def build_ip_rule(config: IpRuleConfig) -> IpRule:
    """Validate one ``ipRules`` entry; ``ValueError`` carries cloudflared's message."""
    prefix = config.prefix
    if not prefix:
        raise ValueError("no prefix provided")
    address, slash, mask = prefix.partition("/")
    try:
        if not slash or not mask.isascii() or not mask.isdigit():
            raise ValueError(prefix)
        network = ipaddress.ip_network(f"{address}/{int(mask)}", strict=False)
    except ValueError:
        raise ValueError(f"unable to parse cidr: {prefix}") from None
    for port in config.ports:
        if not 1 <= port <= 65535:
            raise ValueError(f"invalid port {port}, needs to be between 1 and 65535")
    return IpRule(prefix=str(network), ports=tuple(sorted(config.ports)), allow=config.allow)


def access_settings(config: AccessConfig) -> AccessSettings:
    """``access`` as the frozen settings the workers use."""
    return AccessSettings(
        required=config.required,
        team_name=config.team_name,
        aud_tags=tuple(config.aud_tag),
        environment=config.environment,
        team_domain=config.team_domain.rstrip("/"),
    )


def team_domain_error(url: str) -> str | None:
    """Why ``access.teamDomain`` is unusable (``None``: it is fine or unset).

    It names the token issuer and, under ``/cdn-cgi/access/certs``, its signing keys: HTTPS
    only, since keys fetched in clear could be anyone's.
    """
    if not url:
        return None
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "https" or not parsed.hostname:
        return f"access.teamDomain {url} must be an https:// URL"
    if parsed.path.strip("/") or parsed.query or parsed.fragment or parsed.username:
        return f"access.teamDomain {url} must be a bare origin such as https://access.example.com"
    return None


def _valid_ip_rules(configs: list[IpRuleConfig]) -> tuple[IpRule, ...]:
    rules = []
    for config in configs:
        try:
            rules.append(build_ip_rule(config))
        except ValueError:
            continue
    return tuple(rules)


def resolve_options(base: OriginOptions, config: OriginRequestConfig | None) -> OriginOptions:
    """``base`` with every key that ``config`` sets replaced (durations become seconds)."""
    if config is None:
        return base
    changes: dict[str, Any] = {}
    # The names only: msgspec.structs.fields() would resolve every type hint on each call.
    for name in OriginRequestConfig.__struct_fields__:
        value = getattr(config, name)
        if value is None:
            continue
        if isinstance(value, Duration):
            value = value.seconds
        elif name == "ip_rules":
            if not value:
                continue
            value = _valid_ip_rules(value)
        elif name == "access":
            value = access_settings(value)
        changes[name] = value
    return msgspec.structs.replace(base, **changes) if changes else base
