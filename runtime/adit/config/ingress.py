"""Ingress rules: validation (cloudflared's order and messages) and request matching.

Stable API:

* :func:`parse_ingress` — the ``ingress`` list of a config file (plus its top-level
  ``originRequest``) → :class:`Ingress`, or :class:`~adit.config.errors.IngressError`.
* :func:`ingress_from_cli` — the single-origin mode (``--url``, ``--hello-world``, ...) used
  when the file has no ``ingress``.
* :func:`ingress_from_json` — remotely managed config (durations in integer seconds).
* :meth:`Ingress.find_matching_rule` — first rule matching a host and path, else the last.
  Hosts compare in the one spelling the edge routes by (``adit.protocol.hostnames``): case,
  a trailing dot and IDNA spellings do not matter, unlike in cloudflared.

Per rule, validation runs: service → ``access`` → hostname (port, wildcard, catch-all
position) → path regex; the first failure is reported with 1-based ``Rule #N`` numbering.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec

from adit.config.errors import IngressError
from adit.config.model import IngressRuleConfig, OriginRequestConfig, RemoteConfig, duration_hook
from adit.config.options import build_ip_rule, resolve_options, team_domain_error
from adit.config.origin import (
    BastionService,
    HelloWorldService,
    OriginOptions,
    Rule,
    Service,
    StatusService,
    UnixService,
)
from adit.config.pathregex import compile_path
from adit.config.services import parse_go_url, parse_service, url_service
from adit.config.source import format_location, parse_location
from adit.protocol.hostnames import (
    AddressError,
    host_of_authority,
    normalize_hostname,
    split_host_port,
)

__all__ = [
    "NO_RULES_MESSAGE",
    "URL_WITH_INGRESS_MESSAGE",
    "Ingress",
    "decode_remote_config",
    "ingress_from_cli",
    "ingress_from_json",
    "parse_ingress",
]

NO_RULES_MESSAGE: Final = "The config file doesn't contain any ingress rules"
URL_WITH_INGRESS_MESSAGE: Final = (
    "You can't set the --url flag (or $TUNNEL_URL) when using multiple-origin ingress rules"
)
_LAST_RULE_MESSAGE: Final = (
    "The last ingress rule must match all URLs (i.e. it should not have a hostname or path filter)"
)
_WILDCARD_MESSAGE: Final = (
    'Hostname patterns can have at most one wildcard character ("*") and it can only be used '
    'for subdomains, e.g. "*.example.com"'
)
_PORT_MESSAGE: Final = "Hostname cannot contain a port"
_ACCESS_MESSAGE: Final = "access.TeamName cannot be blank when access.audTags are present"


class Ingress(msgspec.Struct, frozen=True):
    """A validated, immutable rule set; the last rule matches everything."""

    rules: tuple[Rule, ...]
    defaults: OriginOptions = msgspec.field(default_factory=OriginOptions)

    def find_matching_rule(self, host: str, path: str) -> Rule:
        """The first rule matching ``host`` (an authority: a port is removed) and ``path``,
        else the last rule.

        ``path`` is the request's *decoded* path, without the query: what cloudflared matches
        is Go's ``URL.Path`` (:func:`adit.protocol.request_target.decoded_path` makes it).
        """
        host = normalize_hostname(host_of_authority(host))
        for rule in self.rules:
            if _rule_matches(rule, host, path):
                return rule
        return self.rules[-1]


def _host_matches(rule_host: str, host: str) -> bool:
    if rule_host == host:
        return True
    # A leading "*." matches subdomains at any depth but not the apex.
    return rule_host.startswith("*.") and host.endswith(rule_host[1:])


def _rule_matches(rule: Rule, host: str, path: str) -> bool:
    # ``host`` is normalised; so is the rule's name, in punycode_hostname when that differs.
    host_match = rule.hostname in ("", "*") or _host_matches(
        rule.punycode_hostname or rule.hostname, host
    )
    return host_match and (rule.path is None or rule.path.search(path) is not None)


def _punycode(hostname: str) -> str:
    """The normalised form of ``hostname`` (lower case, no trailing dot, A-labels: what
    cloudflared's IDNA ``punycodeHostname`` is, and more) when it differs, else ""."""
    normal = normalize_hostname(hostname)
    return "" if normal == hostname else normal


def _has_port(hostname: str) -> bool:
    try:
        split_host_port(hostname)
    except AddressError:
        return False
    return True


def _validate_hostname(rule: IngressRuleConfig, index: int, total: int) -> None:
    where = f"ingress[{index}].hostname"
    if _has_port(rule.hostname):
        raise IngressError(_PORT_MESSAGE, where)
    if rule.hostname.rfind("*") > 0:
        raise IngressError(_WILDCARD_MESSAGE, where)
    catch_all = rule.hostname in ("", "*") and not rule.path
    last = index == total - 1
    if last and not catch_all:
        where = where if rule.hostname not in ("", "*") else f"ingress[{index}].path"
        raise IngressError(_LAST_RULE_MESSAGE, where)
    if not last and catch_all:
        raise IngressError(
            f"Rule #{index + 1} is matching the hostname '{rule.hostname}', but this will match "
            "every hostname, meaning the rules which follow it will never be triggered.",
            f"ingress[{index}]",
        )


def _socks_options(rule: IngressRuleConfig, options: OriginOptions, index: int) -> OriginOptions:
    own = rule.origin_request.ip_rules if rule.origin_request is not None else None
    built = []
    for position, config in enumerate(own or []):
        try:
            built.append(build_ip_rule(config))
        except ValueError as exc:
            raise IngressError(
                f"unable to create ip rule for socks-proxy: {exc}",
                f"ingress[{index}].originRequest.ipRules[{position}]",
            ) from None
    return msgspec.structs.replace(options, ip_rules=tuple(built))


def _parse_rule(rule: IngressRuleConfig, index: int, total: int, defaults: OriginOptions) -> Rule:
    options = resolve_options(defaults, rule.origin_request)
    try:
        service, options = parse_service(rule.service, options)
    except ValueError as exc:
        raise IngressError(str(exc), f"ingress[{index}].service") from None
    if rule.service == "socks-proxy":
        options = _socks_options(rule, options, index)
    access = options.access
    # A teamDomain (adit only) names the issuer that a teamName would otherwise.
    named = access is not None and (access.team_name or access.team_domain)
    if access is not None and access.required and not named and access.aud_tags:
        raise IngressError(_ACCESS_MESSAGE, f"ingress[{index}].originRequest.access")
    if access is not None and (problem := team_domain_error(access.team_domain)):
        raise IngressError(problem, f"ingress[{index}].originRequest.access.teamDomain")
    _validate_hostname(rule, index, total)
    catch_all = rule.hostname in ("", "*") and not rule.path
    pattern = None
    if rule.path:
        try:
            pattern = compile_path(rule.path)
        except ValueError as exc:
            raise IngressError(
                f"Rule #{index + 1} has an invalid regex: {exc}", f"ingress[{index}].path"
            ) from None
    return Rule(
        index=index,
        hostname=rule.hostname,
        punycode_hostname="" if catch_all else _punycode(rule.hostname),
        path=pattern,
        service=service,
        options=options,
    )


def parse_ingress(
    rules: Sequence[IngressRuleConfig], defaults: OriginRequestConfig | None = None
) -> Ingress:
    """Validate ``rules`` with the file's top-level ``originRequest`` as ``defaults``.

    Raises :class:`IngressError` (cloudflared's message; ``location`` such as
    ``ingress[2].service``) for the first invalid rule, or when there are no rules.
    """
    if not rules:
        raise IngressError(NO_RULES_MESSAGE, "ingress")
    base = resolve_options(OriginOptions(), defaults)
    parsed = tuple(_parse_rule(rule, index, len(rules), base) for index, rule in enumerate(rules))
    return Ingress(parsed, base)


def _single_rule(service: Service, options: OriginOptions) -> Ingress:
    rule = Rule(
        index=0, hostname="", punycode_hostname="", path=None, service=service, options=options
    )
    return Ingress((rule,), options)


def ingress_from_cli(
    url: str | None,
    hello_world: bool = False,
    unix_socket: str | None = None,
    bastion: bool = False,
    options: OriginOptions | None = None,
) -> Ingress:
    """The single-rule ingress of ``--url`` mode (used when the file has no ``ingress``).

    Precedence is cloudflared's: ``--hello-world`` > ``--bastion`` > ``--url`` >
    ``--unix-socket``; with none of them every request gets ``http_status:503``. ``options``
    are the ``--proxy-*``/``--no-tls-verify``... flag values (the file's ``originRequest`` is
    ignored in this mode). An ``--url`` without a scheme is taken as ``http://``.
    """
    options = options or OriginOptions()
    if hello_world:
        return _single_rule(HelloWorldService(), options)
    if bastion:
        return _single_rule(BastionService(), msgspec.structs.replace(options, bastion_mode=True))
    if url is not None:
        return _single_rule(_cli_url_service(url), options)
    if unix_socket is not None:
        return _single_rule(UnixService(unix_socket, False, f"unix:{unix_socket}"), options)
    return _single_rule(StatusService(503, "http_status:503"), options)


def _cli_url_service(url: str) -> Service:
    prefix = "Error validating origin URL: "
    if not url:
        raise IngressError(prefix + "URL should not be empty", "url")
    text = url if "://" in url else f"http://{url}"
    try:
        parsed = parse_go_url(text)
    except ValueError:
        raise IngressError(f"{prefix}URL {url} has invalid format", "url") from None
    if not parsed.hostname:
        raise IngressError(f"{prefix}URL {url} has invalid format", "url")
    # The origin gets the eyeball's path, so a path in --url is dropped like cloudflared does.
    return url_service(msgspec.structs.replace(parsed, path="", suffix=""))


def decode_remote_config(obj: Mapping[str, Any]) -> RemoteConfig:
    """Type-check a JSON config object; :class:`IngressError` names the bad key."""
    try:
        return msgspec.convert(obj, RemoteConfig, dec_hook=duration_hook(json_seconds=True))
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).rpartition(" - at ")
        if not message:
            raise IngressError(str(exc)) from None
        location = format_location(parse_location(where.strip("`")))
        message = message.replace(" | null`", "`")
        raise IngressError(f"{location}: {message}", location) from None


def ingress_from_json(obj: Mapping[str, Any]) -> Ingress:
    """The ingress of remotely managed config (``{"ingress": [...], "originRequest": {}}``).

    Durations are integer seconds. An empty rule list yields the ``http_status:503``
    catch-all, as cloudflared installs when the remote config has no rules.
    """
    config = decode_remote_config(obj)
    if not config.ingress:
        base = resolve_options(OriginOptions(), config.origin_request)
        return _single_rule(StatusService(503, "http_status:503"), base)
    return parse_ingress(config.ingress, config.origin_request)
