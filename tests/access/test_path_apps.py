"""Issue 18: two applications on one hostname, ``/`` (anyone at example.com) and ``/admin``
(boss@example.com only), each with its own session, through a real edge, connector and
origin, headless Chromium and one-time PINs over a real SMTP server (aiosmtpd).

A visitor allowed on ``/`` but not on ``/admin`` is sent to sign in at ``/admin`` although
their ``/`` cookie goes there too, and is denied after signing in; signing in to ``/admin``
does not sign anyone out of ``/``. Then, as an attacker with raw HTTP, the one application's
token is offered to the other in every order: never a session there. Signing out at the
host's ``/cdn-cgi/access/logout`` ends both sessions (it passes by ``/admin``'s own sign-out,
where that application's cookie is sent).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from access_support.browser import Screens, new_context
from access_support.cli_login import login_url
from access_support.smtp import Mailbox, smtp_server
from adversary import access_api as api
from harness import (
    Account,
    Edge,
    Origin,
    Processes,
    adit_command,
    create_tunnel,
    login,
    request,
    start_connector,
    start_edge,
    write_config,
)

pytestmark = [pytest.mark.process, pytest.mark.timeout(240)]

HOST = "app.example.test"


@dataclass
class Site:
    edge: Edge
    account: Account
    origin: Origin
    mailbox: Mailbox
    port: int

    def url(self, path: str) -> str:
        return f"https://{HOST}:{self.port}{path}"


def _allow(account: Account, app: dict[str, Any], rule: dict[str, Any]) -> None:
    api(
        account,
        "POST",
        f"apps/{app['id']}/policies",
        {"name": "allowed", "decision": "allow", "include": [rule]},
    )


@pytest.fixture
def site(processes: Processes, origin: Origin, tmp_path: Path) -> Iterator[Site]:
    edge = start_edge(processes, https=True)
    account = login(edge, tmp_path / "home")
    tunnel = create_tunnel(account, "web", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    start_connector(processes, tunnel, config)
    with smtp_server() as mailbox:
        api(
            account,
            "POST",
            "identity_providers",
            {
                "name": "One-time PIN",
                "type": "onetimepin",
                "config": {
                    "smtp_host": "127.0.0.1",
                    "smtp_port": mailbox.port,
                    "smtp_starttls": False,
                    "smtp_from": "access@example.test",
                },
            },
        )
        wiki = api(account, "POST", "apps", {"name": "Team Wiki", "domain": HOST})
        _allow(account, wiki, {"email_domain": {"domain": "example.com"}})
        admin = api(account, "POST", "apps", {"name": "Admin Panel", "domain": HOST + "/admin"})
        _allow(account, admin, {"email": {"email": "boss@example.com"}})
        port = int(edge.https.rsplit(":", 1)[1])
        yield Site(edge, account, origin, mailbox, port)


def _pin(mailbox: Mailbox, address: str, before: int) -> str:
    deadline = time.monotonic() + 15
    while len(mailbox.to(address)) <= before:
        assert time.monotonic() < deadline, f"no new mail to {address}"
        mailbox.wait_for(len(mailbox.messages) + 1, timeout=max(0.1, deadline - time.monotonic()))
    body = mailbox.to(address)[-1].get_body(("plain",))
    assert body is not None
    found = re.search(r"\b(\d{6})\b", str(body.get_content()))
    assert found is not None
    return found.group(1)


def _sign_in(page: Page, site: Site, path: str, email: str, screens: Screens | None) -> None:
    """From ``path`` through the login page and a mailed PIN (the page ends wherever the
    edge sends the visitor: back at ``path``, or the denial)."""
    page.goto(site.url(path))
    assert urlsplit(page.url).path == f"/cdn-cgi/access/login/{HOST}", page.url
    if screens is not None:
        screens.shot(page, f"login-for-{path}")
    before = len(site.mailbox.to(email))
    page.fill("input[name=email]", email)
    page.click("text=Send me a code")
    page.wait_for_selector("input[name=pin]")
    page.fill("input[name=pin]", _pin(site.mailbox, email, before))
    with page.expect_navigation():
        page.click("button[type=submit]")


def _body(page: Page, site: Site, path: str) -> str:
    page.goto(site.url(path))
    return page.inner_text("body")


def _sessions(context: BrowserContext) -> dict[str, str]:
    return {c["path"]: c["value"] for c in context.cookies() if c["name"] == "CF_Authorization"}


def visitor(chromium: Browser) -> BrowserContext:
    # The edge's certificate is from its own CA, which Chromium cannot be given. The
    # browser's own favicon fetches would reach the origin at any moment: not asked for.
    context = new_context(chromium, ignore_https_errors=True)
    context.route("**/favicon.ico", lambda route: route.abort())
    return context


def test_each_path_application_has_its_own_session(
    site: Site, chromium: Browser, screens: Screens
) -> None:
    # Carol may use the wiki, not the admin panel.
    carol = visitor(chromium)
    try:
        page = carol.new_page()
        _sign_in(page, site, "/docs", "carol@example.com", None)
        assert page.url == site.url("/docs")
        assert page.inner_text("body") == "hello /docs"
        seen = len(site.origin.seen_headers)
        # Her wiki cookie goes to /admin too, and is no session there: sign in first.
        _sign_in(page, site, "/admin/users", "carol@example.com", screens)
        assert "Access denied" in page.inner_text("h1")
        assert "Admin Panel" in page.inner_text("body")
        screens.shot(page, "admin-denied-for-a-wiki-user")
        assert len(site.origin.seen_headers) == seen  # nothing of /admin reached the origin
        # Her wiki session is untouched.
        assert _body(page, site, "/docs/2") == "hello /docs/2"
        carol_wiki = _sessions(carol)["/"]
        assert set(_sessions(carol)) == {"/"}
    finally:
        carol.close()

    # The boss signs in to both: signing in to one does not sign him out of the other.
    boss = visitor(chromium)
    try:
        page = boss.new_page()
        _sign_in(page, site, "/admin/users", "boss@example.com", None)
        assert page.url == site.url("/admin/users")
        assert page.inner_text("body") == "hello /admin/users"
        _sign_in(page, site, "/docs", "boss@example.com", None)
        assert page.inner_text("body") == "hello /docs"
        assert _body(page, site, "/admin/users") == "hello /admin/users"
        assert _body(page, site, "/docs") == "hello /docs"
        cookies = [c for c in boss.cookies() if c["name"] == "CF_Authorization"]
        assert {c["path"] for c in cookies} == {"/", "/admin"}
        assert all(c["httpOnly"] and c["secure"] and c["sameSite"] == "Lax" for c in cookies)
        tokens = _sessions(boss)
        # The flow's pages under /admin see the admin session.
        identity = json.loads(_body(page, site, "/admin/cdn-cgi/access/get-identity"))
        assert identity["email"] == "boss@example.com"
        screens.shot(page, "admin-identity")
        # The host's sign-out ends both sessions: it passes by /admin's own sign-out, where
        # that cookie is sent, and both cookies go.
        assert "Signed out" in _body(page, site, "/cdn-cgi/access/logout")
        assert page.url == site.url("/admin/cdn-cgi/access/logout?step=1")
        assert _sessions(boss) == {}
    finally:
        boss.close()

    # An attacker with raw HTTP: the wiki token at the admin panel, alone or with garbage
    # and in any order, is no session; the boss's revoked admin token neither.
    def status(path: str, *tokens_: str) -> int:
        jar = "; ".join(f"CF_Authorization={t}" for t in tokens_)
        reply = request(
            site.edge,
            HOST,
            "GET",
            path,
            headers=[("Cookie", jar), ("Accept", "application/json")],
        )
        return reply.status

    seen = len(site.origin.seen_headers)
    assert status("/admin/users", carol_wiki) == 401
    assert status("/admin/users", "x.y.z", carol_wiki, "garbage") == 401
    assert status("/admin/users", tokens["/admin"]) == 401  # signed out
    assert status("/docs", tokens["/"]) == 401  # signed out
    assert status("/admin/users", carol_wiki, tokens["/admin"]) == 401
    assert len(site.origin.seen_headers) == seen
    # The wiki token still works where it belongs, also next to a foreign one.
    assert status("/docs", tokens["/admin"], carol_wiki) == 200
    assert len(site.origin.seen_headers) == seen + 1


def test_cli_login_to_a_path_application(
    site: Site, chromium: Browser, screens: Screens, tmp_path: Path
) -> None:
    """``adit access login https://H/admin``: the hand-over is asked under /admin, where the
    browser sends that application's cookie; the stored token is /admin's."""
    env = {**os.environ, "HOME": str(tmp_path / "cli-home")}
    proc = subprocess.Popen(
        [
            *adit_command(),
            "access",
            "login",
            site.url("/admin"),
            "--edge",
            site.edge.https,
            "--cacert",
            str(site.edge.ca),
            "--timeout",
            "90",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        cli_url = login_url(proc)
        context = visitor(chromium)
        try:
            page = context.new_page()
            page.goto(cli_url)
            before = len(site.mailbox.to("boss@example.com"))
            page.fill("input[name=email]", "boss@example.com")
            page.click("text=Send me a code")
            page.wait_for_selector("input[name=pin]")
            page.fill("input[name=pin]", _pin(site.mailbox, "boss@example.com", before))
            page.click("button[type=submit]")
            page.wait_for_selector("text=Allow the command line")
            assert urlsplit(page.url).path == "/admin/cdn-cgi/access/cli"
            screens.shot(page, "cli-login-under-admin")
            page.click("text=Allow the command line")
            page.wait_for_selector("text=The command line now has your token")
        finally:
            context.close()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    (stored,) = (tmp_path / "cli-home" / ".adit").glob(f"{HOST}-*-token")
    token = stored.read_text().strip()
    admin_aud = stored.name.removeprefix(f"{HOST}-").removesuffix("-token")
    apps = {a["name"]: a["aud"] for a in api(site.account, "GET", "apps")}
    assert admin_aud == apps["Admin Panel"]

    def status(path: str) -> int:
        headers = [("cf-access-token", token), ("Accept", "application/json")]
        return request(site.edge, HOST, "GET", path, headers=headers).status

    assert status("/admin/users") == 200
    assert status("/docs") == 401  # /admin's token is no session of the wiki
