"""The Access policy engine against a table of cases (Cloudflare's include/require/exclude
semantics and its order of enforcement)."""

from __future__ import annotations

import pytest

from adit.edge.access.engine import Subject, evaluate
from adit.edge.access.model import InvalidAccess, Policy, parse_rule, parse_rules


def policy(
    pid: str,
    decision: str,
    include: list[object],
    require: list[object] | None = None,
    exclude: list[object] | None = None,
    precedence: int = 1,
) -> Policy:
    return Policy(
        pid,
        "app",
        f"policy {pid}",
        decision,  # type: ignore[arg-type]
        precedence,
        parse_rules(include, "include"),
        parse_rules(require, "require"),
        parse_rules(exclude, "exclude"),
    )


TOKEN = "0123456789abcdef0123456789abcdef"
MISSION = policy(
    "mission",
    "allow",
    [{"email_domain": {"domain": "example.com"}}],
    require=[{"geo": {"country_code": "AT"}}, {"geo": {"country_code": "DE"}}],
)
# The mission's "country is AT or DE" is two allow policies (require is AND: one policy
# requiring both countries admits no one).
MISSION_DE = policy(
    "mission",
    "allow",
    [{"email_domain": {"domain": "example.com"}}],
    require=[{"geo": {"country_code": "DE"}}],
)
SERVICE = policy("svc", "non_identity", [{"service_token": {"token_id": TOKEN}}])
ANY_SERVICE = policy("anysvc", "non_identity", [{"any_valid_service_token": {}}])
BLOCK_BOB = policy("block", "deny", [{"email": {"email": "Bob@Example.com"}}], precedence=0)
OFFICE = policy("office", "bypass", [{"ip": {"ip": "10.1.0.0/16"}}], precedence=5)
EVERYONE_BUT_US = policy(
    "world", "allow", [{"everyone": {}}], exclude=[{"geo": {"country_code": "US"}}]
)
ADMINS = policy("admins", "allow", [{"group": {"claim": "groups", "value": "admins"}}])

CASES = [
    # (policies, subject, action, policy id)
    ([MISSION_DE], Subject(email="ann@example.com", country="DE"), "allow", "mission"),
    ([MISSION_DE], Subject(email="ann@example.com", country="US"), "deny", None),
    ([MISSION_DE], Subject(email="ann@other.org", country="DE"), "deny", None),
    ([MISSION_DE], Subject(email="ann@sub.example.com.evil", country="DE"), "deny", None),
    ([MISSION_DE], Subject(country="DE"), "login", None),
    # require is AND: two countries can never both hold.
    ([MISSION], Subject(email="ann@example.com", country="DE"), "deny", None),
    ([SERVICE], Subject(service_token_id=TOKEN), "service", "svc"),
    ([SERVICE], Subject(service_token_id="f" * 32), "login", None),
    ([SERVICE], Subject(), "login", None),
    ([ANY_SERVICE], Subject(service_token_id="f" * 32), "service", "anysvc"),
    # A service token is no identity: an allow policy naming it still needs a login.
    (
        [policy("a", "allow", [{"service_token": {"token_id": TOKEN}}])],
        Subject(service_token_id=TOKEN),
        "login",
        None,
    ),
    # Deny before allow by precedence; e-mails compare without case.
    ([EVERYONE_BUT_US, BLOCK_BOB], Subject(email="bob@example.com"), "deny", "block"),
    ([EVERYONE_BUT_US, BLOCK_BOB], Subject(email="ann@example.com"), "allow", "world"),
    ([EVERYONE_BUT_US], Subject(email="ann@example.com", country="US"), "deny", None),
    # Bypass first whatever its precedence, and without an identity.
    (
        [BLOCK_BOB, OFFICE],
        Subject(email="bob@example.com", client_ip="10.1.2.3"),
        "bypass",
        "office",
    ),
    ([OFFICE], Subject(client_ip="10.2.0.1"), "login", None),
    ([OFFICE], Subject(client_ip="not an address"), "login", None),
    ([ADMINS], Subject(email="a@x.org", claims={"groups": ("staff", "admins")}), "allow", "admins"),
    ([ADMINS], Subject(email="a@x.org", claims={"groups": ("staff",)}), "deny", None),
    ([], Subject(email="a@x.org"), "deny", None),
]


@pytest.mark.parametrize(("policies", "subject", "action", "decider"), CASES)
def test_decision(
    policies: list[Policy], subject: Subject, action: str, decider: str | None
) -> None:
    decision = evaluate(policies, subject)
    assert (decision.action, decision.policy_id) == (action, decider), decision.reason


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"email": {"email": "nobody"}}, "e-mail address"),
        ({"geo": {"country_code": "Germany"}}, "two letters"),
        ({"ip": {"ip": "10.0.0.0/40"}}, "CIDR"),
        ({"nope": {}}, "unknown rule"),
        ({"email": {}, "geo": {}}, "one key"),
        ({"group": {"claim": "groups"}}, "group.value"),
    ],
)
def test_bad_rules_are_refused_with_where_and_why(raw: object, message: str) -> None:
    with pytest.raises(InvalidAccess, match=message) as caught:
        parse_rule(raw, "policies[0].include[0]")
    assert str(caught.value).startswith("policies[0].include[0]")


def test_rules_round_trip_to_cloudflare_json() -> None:
    raw = [
        {"email": {"email": "a@example.com"}},
        {"email_domain": {"domain": "example.com"}},
        {"everyone": {}},
        {"group": {"claim": "groups", "value": "admins"}},
        {"geo": {"country_code": "DE"}},
        {"ip": {"ip": "10.0.0.0/8"}},
        {"service_token": {"token_id": TOKEN}},
        {"any_valid_service_token": {}},
    ]
    assert [r.json() for r in parse_rules(raw, "include")] == raw
