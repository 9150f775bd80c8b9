"""The policy decision: pure, no I/O, no clock (a subject and an application's policies in, a
:class:`Decision` out).

Cloudflare's semantics:

* a policy matches when at least one ``include`` rule matches (OR), every ``require`` rule
  matches (AND) and no ``exclude`` rule does (NOT any);
* Bypass and Service Auth (``non_identity``) policies are evaluated first, in precedence
  order; a match lets the request through without an identity;
* then, for a visitor with an identity (a login), Allow and Block (``deny``) policies in
  precedence order, the first match deciding;
* a visitor with no identity that no Bypass/Service Auth policy let in must log in first
  (``login``); with an identity and no matching Allow, the answer is deny.

A service token alone is no identity: it passes only a Service Auth (or Bypass) policy, as at
Cloudflare, where an Allow policy naming a service token still asks for a login.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from adit.edge.access.model import Policy, Rule, ordered

__all__ = ["Action", "Decision", "Subject", "evaluate", "matches"]

Action = Literal["allow", "deny", "bypass", "service", "login"]


@dataclass(frozen=True, slots=True)
class Subject:
    """Who asks: an identity from a login (``email``, ``claims``), where from, and a service
    token that was presented and checked (its id), each possibly absent."""

    email: str | None = None
    #: The identity provider's claims for ``group`` rules: claim → values.
    claims: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    country: str | None = None
    client_ip: str = ""
    service_token_id: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """What Access decided, the policy that decided it (None: no policy did), and why (for the
    log and the operator, never the visitor)."""

    action: Action
    policy_id: str | None
    reason: str

    @property
    def admitted(self) -> bool:
        return self.action in ("allow", "bypass", "service")


def _client(subject: Subject) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(subject.client_ip)
    except ValueError:
        return None


def _rule_matches(rule: Rule, subject: Subject) -> bool:
    kind = rule.kind
    email = subject.email
    if kind == "everyone":
        return True
    if kind == "email":
        return email is not None and email.lower() == rule.values[0]
    if kind == "email_domain":
        return email is not None and email.lower().endswith("@" + rule.values[0])
    if kind == "group":
        claim, value = rule.values
        return value in subject.claims.get(claim, ())
    if kind == "geo":
        return subject.country is not None and subject.country.upper() == rule.values[0]
    if kind == "ip":
        address = _client(subject)
        return address is not None and rule.network is not None and address in rule.network
    if kind == "service_token":
        return subject.service_token_id is not None and subject.service_token_id == rule.values[0]
    if kind == "any_valid_service_token":
        return subject.service_token_id is not None
    return False  # an unknown kind never grants anything


def matches(policy: Policy, subject: Subject) -> bool:
    """include OR, require AND, exclude NOT any."""
    return (
        any(_rule_matches(r, subject) for r in policy.include)
        and all(_rule_matches(r, subject) for r in policy.require)
        and not any(_rule_matches(r, subject) for r in policy.exclude)
    )


def evaluate(policies: Sequence[Policy], subject: Subject) -> Decision:
    """The decision for ``subject`` under an application's ``policies`` (any order)."""
    in_order = ordered(policies)
    for policy in in_order:
        if policy.decision in ("bypass", "non_identity") and matches(policy, subject):
            action: Action = "bypass" if policy.decision == "bypass" else "service"
            return Decision(action, policy.id, f"{policy.decision} policy {policy.name!r}")
    if subject.email is None:
        return Decision("login", None, "no identity, and no bypass or service auth policy matched")
    for policy in in_order:
        if policy.decision in ("allow", "deny") and matches(policy, subject):
            action = "allow" if policy.decision == "allow" else "deny"
            return Decision(action, policy.id, f"{policy.decision} policy {policy.name!r}")
    return Decision("deny", None, "no allow policy matched")
