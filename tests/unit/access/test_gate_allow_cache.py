"""A session's allow is decided once per store version and client address, then remembered
(the bench's per-request cost): a changed policy, another address (another country) and a
logout are each decided afresh. The same holds for what a visitor connection remembers (its
last allow, :class:`ConnectionMemo`), which a visitor keeps using on a keep-alive connection:
a sign-out, here or at another edge process, an expired session, another cookie or another
credential is never answered from it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from adit.edge.access.decisions import DecisionLog
from adit.edge.access.gate import (
    AccessGate,
    Admitted,
    ConnectionMemo,
    FlowRequest,
    _sole_cookie,
)
from adit.edge.access.model import Application
from adit.edge.access.pages import JsonAnswer
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


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


_STAFF = {"email_domain": {"domain": "example.com"}}


def _wiki(store: Store, **policy: object) -> tuple[str, Application]:
    """An account with the Wiki application on ``HOST`` and one allow ``policy``."""
    account = store.create_account("acme").tag
    store.add_zone(account, "example.test")
    app = store.access.create_app(account, {"name": "Wiki", "domain": HOST})
    store.access.create_policy(account, app.id, {"decision": "allow", **policy})
    return account, app


@pytest.mark.parametrize("one_connection", [False, True], ids=["requests", "one-connection"])
def test_remembered_allows_follow_policy_changes_addresses_and_logout(
    store: Store, one_connection: bool
) -> None:
    account, app = _wiki(
        store, name="staff in DE", include=[_STAFF], require=[{"geo": {"country_code": "DE"}}]
    )
    countries = {DE: "DE", US: "US"}
    gate = AccessGate(store.access, DecisionLog(store.access.db), country_of=countries.get)
    ann = gate.mint_session(app, email="ann@example.com", sub="ann", country="DE")
    if one_connection:
        memo = ConnectionMemo()
        plain = gate.check

        def check(*args: Any, **kwargs: Any) -> Admitted | ErrorPage | None:
            return plain(*args, memo=memo, **kwargs)

        gate.check = check  # type: ignore[method-assign]

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


def test_a_connections_remembered_allow_ends_with_its_session(store: Store) -> None:
    account, app = _wiki(store, name="staff", include=[_STAFF])
    clock = Clock()
    gate = AccessGate(store.access, DecisionLog(store.access.db), clock=clock)
    memo = ConnectionMemo()
    ann = gate.mint_session(app, email="ann@example.com", sub="ann")
    eve = gate.mint_session(app, email="eve@evil.test", sub="eve")

    def check(headers: list[tuple[bytes, bytes]], ip: str = DE) -> int:
        return _status(gate.check(HOST, "/", headers, ip, "r", memo=memo))

    assert check(_cookie(ann)) == 200
    remembered = memo.last
    assert remembered is not None and check(_cookie(ann)) == 200 and memo.last is remembered
    # Another cookie on the same connection is its own decision, not the remembered one.
    assert check(_cookie(eve)) == 403
    assert check(_cookie(ann)) == 200
    # Two cookie headers, the remembered one last: decided afresh, by the first live session
    # of the application (eve's), not by the remembered allow.
    assert check([*_cookie(eve), *_cookie(ann)]) == 403
    # Signed out at another edge process (through the store): the same connection is refused.
    nonce = jwt.decode(ann, options={"verify_signature": False})["identity_nonce"]
    store.access.revoke_session(account, nonce, clock.now + 3600)
    assert check(_cookie(ann)) == 401

    # Signed out at this process.
    bob = gate.mint_session(app, email="bob@example.com", sub="bob")
    assert check(_cookie(bob)) == 200 and check(_cookie(bob)) == 200
    gate.revoke(jwt.decode(bob, options={"verify_signature": False}))
    assert check(_cookie(bob)) == 401

    # The session's end.
    cat = gate.mint_session(app, email="cat@example.com", sub="cat")
    assert check(_cookie(cat)) == 200 and check(_cookie(cat)) == 200
    clock.now = jwt.decode(cat, options={"verify_signature": False})["exp"] + 1
    assert check(_cookie(cat)) == 401


def test_only_a_request_with_one_cookie_header_and_no_other_credential_is_remembered() -> None:
    crumb = (b"cookie", b"CF_Authorization=t")
    assert _sole_cookie([(b"accept", b"*/*"), crumb]) == b"CF_Authorization=t"
    assert _sole_cookie([(b"accept", b"*/*")]) is None
    assert _sole_cookie([crumb, (b"Cookie", b"a=1")]) is None
    assert _sole_cookie([crumb, (b"CF-Access-Token", b"t")]) is None
    assert _sole_cookie([(b"Cf-Access-Client-Id", b"x"), crumb]) is None


def test_a_connections_next_request_to_the_same_host_is_resolved_like_the_first(
    store: Store,
) -> None:
    # After an allow, the connection's next request to the same host takes the remembered
    # application without resolving it again: only while that host has that one application
    # for all its paths, and never for the flow's or the key set's paths.
    account, app = _wiki(store, name="staff", include=[_STAFF])
    other = store.access.create_app(account, {"name": "Admin", "domain": "admin.example.test"})
    store.access.create_policy(
        account, other.id, {"name": "staff", "decision": "allow", "include": [_STAFF]}
    )
    gate = AccessGate(store.access, DecisionLog(store.access.db))
    memo = ConnectionMemo()
    ann = gate.mint_session(app, email="ann@example.com", sub="ann")

    def check(path: str, host: str = HOST) -> object:
        return gate.check(host, path, _cookie(ann), DE, "r", memo=memo)

    assert _status(check("/")) == 200 and memo.last is not None and memo.last.whole_host
    assert _status(check("/any/other/path?q=1")) == 200
    # The flow's paths and the key set are the edge's own answers, never the allow.
    assert isinstance(check("/cdn-cgi/access/logout"), FlowRequest)
    certs = check("/cdn-cgi/access/certs")
    assert isinstance(certs, JsonAnswer) and b'"keys"' in certs.render(HOST, "r")
    # Another host on the same connection: its own application, whose aud ann's cookie lacks.
    assert _status(check("/", host="admin.example.test")) in (401, 403)
    assert _status(check("/")) == 200
    # A path application added on the host: resolved afresh, and it decides under its path.
    admin = store.access.create_app(account, {"name": "Wiki admin", "domain": f"{HOST}/admin"})
    store.access.create_policy(
        account, admin.id, {"name": "staff", "decision": "allow", "include": [_STAFF]}
    )
    assert _status(check("/admin/users")) in (401, 403)  # ann's cookie is the Wiki's
    assert _status(check("/")) == 200
    assert getattr(memo.last, "whole_host", None) is False
    # ...and stays the path application's, in the same table, after the Wiki's allow.
    assert _status(check("/admin/users")) in (401, 403)
