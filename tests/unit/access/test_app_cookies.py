"""Applications on paths of one hostname each have their own session (the gate with a real
in-memory store): of the ``CF_Authorization`` cookies a request carries, only the one minted
for the application guarding its path counts; the flow's paths are served under a path
application's path too, where its cookie is sent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from adit.edge.access.app_cookies import (
    MAX_REMEMBERED,
    MAX_TOKENS,
    session_tokens,
    token_claims_aud,
)
from adit.edge.access.decisions import DecisionLog
from adit.edge.access.gate import ASSERTION, AccessGate, Admitted, FlowRequest
from adit.edge.access.model import Application
from adit.edge.store import Store

HOST = "app.example.test"


@pytest.fixture
def store() -> Iterator[Store]:
    opened = Store(":memory:")
    yield opened
    opened.close()


def _app(store: Store, account: str, domain: str, email_domain: str) -> Application:
    app = store.access.create_app(account, {"name": domain, "domain": domain})
    store.access.create_policy(
        account,
        app.id,
        {
            "name": "staff",
            "decision": "allow",
            "include": [{"email_domain": {"domain": email_domain}}],
        },
    )
    return app


@pytest.fixture
def apps(store: Store) -> tuple[AccessGate, Application, Application]:
    account = store.create_account("acme").tag
    store.add_zone(account, "example.test")
    root = _app(store, account, HOST, "example.com")
    admin = _app(store, account, HOST + "/admin", "admins.example.com")
    return AccessGate(store.access, DecisionLog(store.access.db)), root, admin


def _cookies(*tokens: str) -> list[tuple[bytes, bytes]]:
    jar = "; ".join(f"CF_Authorization={t}" for t in tokens)
    return [(b"cookie", f"theme=dark; {jar}".encode()), (b"accept", b"application/json")]


def test_a_root_session_is_no_session_of_the_path_application(
    apps: tuple[AccessGate, Application, Application],
) -> None:
    gate, root, admin = apps
    ann = gate.mint_session(root, email="ann@example.com", sub="ann")
    assert isinstance(gate.check(HOST, "/docs", _cookies(ann), "192.0.2.1", "r"), Admitted)
    refused = gate.check(HOST, "/admin/users", _cookies(ann), "192.0.2.1", "r")
    assert not isinstance(refused, Admitted) and refused is not None
    assert refused.status == 401  # no session for /admin: sign in there
    # The path application's token is no session of the root application either.
    boss = gate.mint_session(admin, email="boss@admins.example.com", sub="boss")
    foreign = gate.check(HOST, "/docs", _cookies(boss), "192.0.2.1", "r")
    assert foreign is not None and not isinstance(foreign, Admitted)
    assert foreign.status == 401


@pytest.mark.parametrize("order", ["admin-first", "root-first"])
def test_with_both_cookies_each_application_takes_its_own(
    apps: tuple[AccessGate, Application, Application], order: str
) -> None:
    gate, root, admin = apps
    mine = gate.mint_session(root, email="boss@example.com", sub="b")
    theirs = gate.mint_session(admin, email="boss@admins.example.com", sub="b")
    jar = _cookies(theirs, mine) if order == "admin-first" else _cookies(mine, theirs)
    at_admin = gate.check(HOST, "/admin/x", jar, "192.0.2.1", "r")
    assert isinstance(at_admin, Admitted)
    assert dict(at_admin.headers)[ASSERTION] == theirs
    at_root = gate.check(HOST, "/x", jar, "192.0.2.1", "r")
    assert isinstance(at_root, Admitted)
    assert dict(at_root.headers)[ASSERTION] == mine


def test_flow_paths_under_a_path_application_are_the_flows(
    apps: tuple[AccessGate, Application, Application],
) -> None:
    gate, _, admin = apps
    flow = gate.check(HOST, "/admin/cdn-cgi/access/logout", [], "192.0.2.1", "r")
    assert isinstance(flow, FlowRequest)
    assert (flow.mount, flow.path, flow.app) == ("/admin", "/cdn-cgi/access/logout", admin)
    root_flow = gate.check(HOST, "/cdn-cgi/access/logout", [], "192.0.2.1", "r")
    assert isinstance(root_flow, FlowRequest) and root_flow.mount == ""


def test_tokens_are_bounded_and_foreign_ones_recognised_unverified() -> None:
    many = _cookies(*(f"t{i}" for i in range(MAX_TOKENS + 5)))
    assert len(list(session_tokens(many))) == MAX_TOKENS
    header = [(b"cf-access-token", b"h")]
    assert list(session_tokens([*_cookies("c"), *header])) == ["c", "h"]
    # Only a cookie named exactly CF_Authorization with a value is a token.
    near = [
        (
            b"Cookie",
            b"XCF_Authorization=x; CF_Authorization=; cf_authorization=y;CF_Authorization=z",
        )
    ]
    assert session_tokens(near) == ["z"]
    assert token_claims_aud("not.a.jwt") == ()
    assert token_claims_aud("garbage") == ()


def test_a_connections_memo_gives_the_tokens_of_each_cookie_header_it_holds() -> None:
    """A visitor connection remembers its cookie headers' tokens (a browser repeats them): the
    same token objects come back for the same bytes, and anything else is read afresh (a
    visitor who signs in as someone else on the same connection gets the new session)."""
    memo: dict[bytes, tuple[str, ...]] = {}
    first = session_tokens([(b"Cookie", b"a=1; CF_Authorization=one")], memo)
    again = session_tokens([(b"cookie", bytes(bytearray(b"a=1; CF_Authorization=one")))], memo)
    assert first == again == ["one"] and first[0] is again[0]
    assert session_tokens([(b"Cookie", b"CF_Authorization=two")], memo) == ["two"]
    # HTTP/2 browsers split the cookie into one header per pair: each is remembered.
    crumbs = [(b"cookie", b"a=1"), (b"cookie", b"CF_Authorization=three")]
    assert session_tokens([*crumbs, (b"cf-access-token", b"h")], memo) == ["three", "h"]
    # Bounded: a connection sending ever new cookies keeps at most a few of them.
    for n in range(100):
        session_tokens([(b"Cookie", f"CF_Authorization=t{n}".encode())], memo)
        assert len(memo) <= MAX_REMEMBERED
    many = _cookies(*(f"t{i}" for i in range(MAX_TOKENS + 5)))
    assert session_tokens(many, memo) == session_tokens(many)
    assert len(session_tokens(many, memo)) == MAX_TOKENS
