"""What an account's Access setup is made of, in Cloudflare's API shapes.

An application guards one hostname (optionally a path under it); its policies are ordered by
``precedence`` and each has a decision and three rule lists. A rule is one of Cloudflare's
single-key objects (``{"email": {"email": "a@example.com"}}``); :func:`parse_rule` turns the
JSON into a :class:`Rule` and :meth:`Rule.json` gives the same JSON back, so the API, the store
and ``access apply`` all speak one shape.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = [
    "DECISIONS",
    "RULE_KINDS",
    "Application",
    "IdentityProvider",
    "InvalidAccess",
    "Policy",
    "Rule",
    "ServiceToken",
    "parse_rule",
    "parse_rules",
]

Decision = Literal["allow", "deny", "bypass", "non_identity"]
#: Cloudflare's policy decisions; ``non_identity`` is the dashboard's "Service Auth".
DECISIONS: Final = ("allow", "deny", "bypass", "non_identity")

#: Rule kind → the key of its inner object (None: the inner object is empty).
RULE_KINDS: Final[Mapping[str, tuple[str, ...]]] = {
    "email": ("email",),
    "email_domain": ("domain",),
    "everyone": (),
    # adit's generic OIDC group: one claim of the identity provider's ID token has this value
    # (the claim is a string or a list of strings).
    "group": ("claim", "value"),
    "geo": ("country_code",),
    "ip": ("ip",),
    "service_token": ("token_id",),
    "any_valid_service_token": (),
}

_COUNTRY = re.compile(r"[A-Z]{2}")
_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?")


class InvalidAccess(ValueError):
    """An application, policy, rule, provider or token that cannot be stored; ``str()`` says
    what is wrong and where."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One include/require/exclude rule: ``kind`` and its normalised value(s)."""

    kind: str
    values: tuple[str, ...] = ()
    #: For ``ip``: the network, parsed once.
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None

    def json(self) -> dict[str, dict[str, str]]:
        """Cloudflare's single-key object."""
        keys = RULE_KINDS[self.kind]
        return {self.kind: dict(zip(keys, self.values, strict=True))}


def parse_rule(raw: object, where: str) -> Rule:
    """A rule from its JSON; :class:`InvalidAccess` naming ``where`` when it is not one."""
    if not isinstance(raw, dict) or len(raw) != 1:
        raise InvalidAccess(f"{where}: a rule is an object with one key, one of {_kinds()}")
    ((kind, inner),) = raw.items()
    keys = RULE_KINDS.get(kind)
    if keys is None:
        raise InvalidAccess(f"{where}: unknown rule {kind!r}; use one of {_kinds()}")
    if not isinstance(inner, dict):
        raise InvalidAccess(f"{where}: {kind} takes an object")
    values = []
    for key in keys:
        value = inner.get(key)
        if not isinstance(value, str) or not value.strip():
            raise InvalidAccess(f"{where}: {kind}.{key} must be a non-empty string")
        values.append(value.strip())
    network = None
    if kind == "email":
        values[0] = values[0].lower()
        if "@" not in values[0]:
            raise InvalidAccess(f"{where}: email.email must be an e-mail address")
    elif kind == "email_domain":
        values[0] = values[0].lower().removeprefix("@")
        if not _DOMAIN.fullmatch(values[0]):
            raise InvalidAccess(f"{where}: email_domain.domain must be a domain (example.com)")
    elif kind == "geo":
        values[0] = values[0].upper()
        if not _COUNTRY.fullmatch(values[0]):
            raise InvalidAccess(f"{where}: geo.country_code must be two letters (DE)")
    elif kind == "ip":
        try:
            network = ipaddress.ip_network(values[0], strict=False)
        except ValueError:
            raise InvalidAccess(f"{where}: ip.ip must be an address or CIDR range") from None
        values[0] = str(network)
    elif kind == "service_token":
        values[0] = values[0].lower()
    return Rule(kind, tuple(values), network)


def parse_rules(raw: object, where: str) -> tuple[Rule, ...]:
    """A list of rules (None: none)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidAccess(f"{where}: must be a list of rules")
    return tuple(parse_rule(item, f"{where}[{i}]") for i, item in enumerate(raw))


def _kinds() -> str:
    return ", ".join(RULE_KINDS)


@dataclass(frozen=True, slots=True)
class Policy:
    """One of an application's policies."""

    id: str
    app_id: str
    name: str
    decision: Decision
    precedence: int
    include: tuple[Rule, ...]
    require: tuple[Rule, ...] = ()
    exclude: tuple[Rule, ...] = ()

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "decision": self.decision,
            "precedence": self.precedence,
            "include": [r.json() for r in self.include],
            "require": [r.json() for r in self.require],
            "exclude": [r.json() for r in self.exclude],
        }


@dataclass(frozen=True, slots=True)
class Application:
    """A self-hosted application: what it guards and how long a session lasts."""

    id: str
    account: str
    name: str
    domain: str  # hostname, lower case
    path: str  # "" or "/path" (a prefix on segment boundaries)
    aud: str  # 64 hex
    session_duration: int  # seconds
    allowed_idps: tuple[str, ...] = ()

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "uid": self.id,
            "type": "self_hosted",
            "name": self.name,
            "domain": self.domain + self.path,
            "aud": self.aud,
            "session_duration": _duration_text(self.session_duration),
            "allowed_idps": list(self.allowed_idps),
        }

    def covers(self, path: str) -> bool:
        """Whether a request path lies under this application's path."""
        prefix = self.path
        if not prefix:
            return True
        return path == prefix or path.startswith((prefix + "/", prefix + "?"))


@dataclass(frozen=True, slots=True)
class IdentityProvider:
    """A login method of an account (``oidc`` or ``onetimepin``). ``secrets`` hold the client
    secret / SMTP password: stored, never answered by the API."""

    id: str
    account: str
    name: str
    type: Literal["oidc", "onetimepin"]
    config: Mapping[str, Any] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        # Secret fields are named, never shown (Cloudflare answers the client_secret masked).
        shown = dict(self.config)
        for key in self.secrets:
            shown[key] = "*****"
        return {"id": self.id, "name": self.name, "type": self.type, "config": shown}


@dataclass(frozen=True, slots=True)
class ServiceToken:
    """A machine credential; the secret's SHA-256 only."""

    id: str
    account: str
    name: str
    client_id: str
    secret_sha256: bytes
    created_at: str
    expires_at: str  # ISO 8601 UTC
    duration: str = "8760h"

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "client_id": self.client_id,
            "created_at": self.created_at,
            "updated_at": self.created_at,
            "expires_at": self.expires_at,
            "duration": self.duration,
        }


_UNITS: Final = {"h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"(\d+)([hms])")


def parse_duration(text: object, where: str) -> int:
    """Cloudflare's Go-style durations (``24h``, ``30m``, ``1h30m``) in seconds."""
    if isinstance(text, int) and text > 0:
        return text
    if not isinstance(text, str) or not text:
        raise InvalidAccess(f"{where}: a duration like 24h, 30m or 1h30m")
    pos = 0
    total = 0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += int(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or total <= 0:
        raise InvalidAccess(f"{where}: {text!r} is no duration; write it like 24h, 30m or 1h30m")
    return total


def _duration_text(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    return text + (f"{secs}s" if secs or not text else "")


def ordered(policies: Sequence[Policy]) -> list[Policy]:
    """Policies by precedence (ties by id: a stable order)."""
    return sorted(policies, key=lambda p: (p.precedence, p.id))
