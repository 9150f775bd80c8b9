"""Ingress snapshots: the supervisor validates one, every worker rebuilds the same rules.

The snapshot carries rules in their YAML form (durations as Go duration strings), so a worker
re-runs exactly the validation the supervisor already passed.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from adit.config.errors import ConfigError
from adit.config.ingress import Ingress, ingress_from_cli, ingress_from_json, parse_ingress
from adit.config.model import IngressRuleConfig, OriginRequestConfig, duration_hook
from adit.config.options import resolve_options
from adit.config.origin import OriginOptions
from adit.ipc.messages import IngressSnapshot

__all__ = ["build_ingress"]


def _convert(value: Any, kind: type[Any]) -> Any:
    return msgspec.convert(value, kind, dec_hook=duration_hook(json_seconds=False))


def build_ingress(snapshot: IngressSnapshot) -> Ingress:
    """The validated rules of a snapshot; raises ``adit.config.errors.ConfigError``."""
    if snapshot.remote_config:
        try:
            obj = json.loads(snapshot.remote_config)
        except ValueError as exc:
            raise ConfigError(None, "", f"remote configuration is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ConfigError(None, "", "remote configuration is not a JSON object")
        return ingress_from_json(obj)
    defaults: OriginRequestConfig | None = (
        _convert(snapshot.origin_request, OriginRequestConfig) if snapshot.origin_request else None
    )
    if snapshot.rules:
        rules = [_convert(rule, IngressRuleConfig) for rule in snapshot.rules]
        return parse_ingress(rules, defaults)
    return ingress_from_cli(
        snapshot.cli_url,
        hello_world=snapshot.cli_hello_world,
        unix_socket=snapshot.cli_unix_socket,
        bastion=snapshot.cli_bastion,
        options=resolve_options(OriginOptions(), defaults),
    )
