"""A session's allow is decided once per store version and client address, then remembered
(the bench's per-request cost): a changed policy, another address (another country) and a
logout are each decided afresh."""

from __future__ import annotations

from collections.abc import Iterator

import jwt
import pytest

from adit.edge.access.decisions import DecisionLog
from adit.edge.access.gate import AccessGate, Admitted
from adit.edge.pages import ErrorPage
from adit.edge.store import Store

HOST = "app.example.test"
DE, US = "192.0.2.1", "198.51.100.1"


@pytest.fixture
def store() -> Iterator[Store]:
    opened = Store(":memory:")
    yield opened
    opened.close()


def _cookie(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"cookie", b"CF_Authorization=" + token.encode())]


def _status(verdict: object) -> int:
    if isinstance(verdict, Admitted):
        return 200
    assert isinstance(verdict, ErrorPage)
    return verdict.status


def test_remembered_allows_follow_policy_changes_addresses_and_logout(store: Store) -> None:
    account = store.create_account("acme").tag
    store.add_zone(account, "example.test")
    app = store.access.create_app(account, {"name": "Wiki", "domain": HOST})
    store.access.create_policy(
        account,
        app.id,
        {
            "name": "staff in DE",
            "decision": "allow",
            "include": [{"email_domain": {"domain": "example.com"}}],
            "require": [{"geo": {"country_code": "DE"}}],
        },
    )
    countries = {DE: "DE", US: "US"}
    gate = AccessGate(store.access, DecisionLog(store.access.db), country_of=countries.get)
    ann = gate.mint_session(app, email="ann@example.com", sub="ann", country="DE")

    first = gate.check(HOST, "/", _cookie(ann), DE, "r1")
    assert _status(first) == 200
    assert gate.check(HOST, "/", _cookie(ann), DE, "r2") is first  # remembered
    # Another address of the same session: its own country decides.
    assert _status(gate.check(HOST, "/", _cookie(ann), US, "r3")) == 403
    assert gate.check(HOST, "/", _cookie(ann), DE, "r4") is first

    # A policy added in front: the store's new version is decided afresh.
    store.access.create_policy(
        account,
        app.id,
        {
            "name": "not ann",
            "decision": "deny",
            "precedence": 0,
            "include": [{"email": {"email": "ann@example.com"}}],
        },
    )
    assert _status(gate.check(HOST, "/", _cookie(ann), DE, "r5")) == 403

    # Logout ends what was remembered with the session.
    bob = gate.mint_session(app, email="bob@example.com", sub="bob", country="DE")
    assert _status(gate.check(HOST, "/", _cookie(bob), DE, "r6")) == 200
    gate.revoke(jwt.decode(bob, options={"verify_signature": False}))
    assert _status(gate.check(HOST, "/", _cookie(bob), DE, "r7")) == 401
