"""A real OpenID Provider for tests: npm ``oidc-provider`` under Node on 127.0.0.1.

``start_oidc_provider`` runs ``oidc_provider.js`` (this folder) with one confidential client
whose redirect URIs the test gives, and the users of :data:`USERS` (two e-mail domains, a
``groups`` claim). PKCE is required; login and consent are the provider's own HTML forms.
Without ``node`` the tests that use it skip; without ``node_modules`` (``./run test`` runs
``npm ci``) they fail saying so.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Page

from access_support.browser import Screens
from access_support.pki import ServiceCa
from harness import Processes

HERE = Path(__file__).parent


@dataclass(frozen=True)
class User:
    email: str
    password: str
    groups: tuple[str, ...]


#: The provider's users: two in example.com, two in other.test.
USERS = (
    User("alice@example.com", "alice-password", ("engineering", "admins")),
    User("carol@example.com", "carol-password", ("sales",)),
    User("bob@other.test", "bob-password", ("engineering",)),
    User("dave@other.test", "dave-password", ()),
)


@dataclass(frozen=True)
class OidcProvider:
    issuer: str
    client_id: str
    client_secret: str
    log: Path

    @property
    def discovery_url(self) -> str:
        return self.issuer + "/.well-known/openid-configuration"


def need_node() -> str:
    """The node binary; skips the test without one, fails if ``npm ci`` was not run."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (tests/debian-packages.txt: nodejs)")
    if not (HERE / "node_modules" / "oidc-provider").is_dir():
        pytest.fail("tests/access_support/node_modules is missing: ./run test runs npm ci there")
    return node


@contextmanager
def start_oidc_provider(
    tmp: Path,
    redirect_uris: Sequence[str],
    *,
    client_id: str = "adit-edge",
    tls: ServiceCa | None = None,
) -> Iterator[OidcProvider]:
    """The provider running (stopped on exit), once it listens; waits are bounded. With
    ``tls`` it serves HTTPS with that CA's leaf (the issuer is then https://127.0.0.1:PORT)."""
    node = need_node()
    secret = secrets.token_urlsafe(24)
    config = tmp / "oidc-provider.json"
    config.write_text(
        json.dumps(
            {
                "clients": [
                    {
                        "client_id": client_id,
                        "client_secret": secret,
                        "redirect_uris": list(redirect_uris),
                    }
                ],
                "tls": {"cert": str(tls.cert), "key": str(tls.key)} if tls else None,
                "users": [
                    {"email": u.email, "password": u.password, "groups": list(u.groups)}
                    for u in USERS
                ],
            }
        )
    )
    config.chmod(0o600)
    processes = Processes(tmp)
    try:
        proc = processes.start(
            "oidc-provider", [node, str(HERE / "oidc_provider.js"), str(config)], cwd=HERE
        )
        text = proc.wait_for_log(r"oidc-provider listening (\S+)\n", timeout=30)
        match = re.search(r"oidc-provider listening (\S+)\n", text)
        assert match is not None
        yield OidcProvider(match.group(1), client_id, secret, proc.log)
    finally:
        processes.cleanup()


def sign_in_at_provider(page: Page, email: str, password: str, screens: Screens | None) -> None:
    """Fill the provider's own login form and allow the consent, as a person would."""
    page.wait_for_selector("input[name=email]")
    if screens:
        screens.shot(page, "provider-login")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    if page.locator("text=Allow access").count():
        page.click("button[type=submit]")
