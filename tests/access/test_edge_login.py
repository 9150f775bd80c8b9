"""Issue 18: the Access browser login served by the edge itself, through a real edge, a real
adit connector and a real origin, with headless Chromium, npm ``oidc-provider`` (over TLS with
the test's own CA, which the edge trusts through ``SSL_CERT_FILE``), aiosmtpd for one-time
PINs and a country database written by the test (``--geoip-db``).

The mission's policy: e-mails ending in @example.com, country AT or DE (two Allow policies,
each requiring one country). The browser's country is chosen by the address the edge is told
through ``X-Forwarded-For``, which it believes only because 127.0.0.1 is a trusted proxy here
(``--trusted-proxies``); the database maps 127.0.0.2 to DE, 127.0.0.3 to US, 127.0.0.4 to AT.

One provider per module (its redirect URIs name the edge's HTTPS port, fixed for the module);
one edge, connector and origin per test (each test's decisions are its own).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import jwt
import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from access_support.browser import Screens, new_context
from access_support.cli_login import allow_cli_login, login_url
from access_support.geoip import write_country_db
from access_support.oidc import USERS, OidcProvider, sign_in_at_provider, start_oidc_provider
from access_support.pki import ServiceCa, write_service_ca
from access_support.smtp import Mailbox, smtp_server
from adversary import access_api as api
from harness import (
    Account,
    Edge,
    Origin,
    Processes,
    add_zone,
    adit_command,
    create_tunnel,
    login,
    request,
    start_connector,
    start_edge,
    write_config,
)
from ports import free_port

pytestmark = [pytest.mark.process, pytest.mark.timeout(240)]

HOST = "app.example.test"
OTHER_HOST = "other.example.test"
CALLBACK = "/cdn-cgi/access/callback"
DE, US, AT = "127.0.0.2", "127.0.0.3", "127.0.0.4"


@dataclass(frozen=True)
class Provider:
    oidc: OidcProvider
    ca: ServiceCa
    https_port: int


@dataclass
class Site:
    edge: Edge
    account: Account
    origin: Origin
    app: dict[str, Any]
    other_app: dict[str, Any]
    port: int

    def url(self, path: str, host: str = HOST) -> str:
        return f"https://{host}:{self.port}{path}"


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    tmp = tmp_path_factory.mktemp("provider")
    ca = write_service_ca(tmp / "pki")
    port = free_port()
    redirects = [f"https://{h}:{port}{CALLBACK}" for h in (HOST, OTHER_HOST)]
    with start_oidc_provider(tmp, redirects, tls=ca) as oidc:
        yield Provider(oidc, ca, port)


def _policy(country: str) -> dict[str, Any]:
    return {
        "name": f"example.com in {country}",
        "decision": "allow",
        "include": [{"email_domain": {"domain": "example.com"}}],
        "require": [{"geo": {"country_code": country}}],
    }


def _start_edge(provider: Provider, processes: Processes, countries: Path) -> Edge:
    return start_edge(
        processes,
        https=True,
        https_listen=f"127.0.0.1:{provider.https_port}",
        env={"SSL_CERT_FILE": str(provider.ca.ca)},
        extra=["--geoip-db", str(countries), "--trusted-proxies", "127.0.0.1/32"],
    )


@pytest.fixture
def site(provider: Provider, processes: Processes, origin: Origin, tmp_path: Path) -> Site:
    edge = _start_edge(provider, processes, write_country_db(tmp_path / "countries.mmdb"))
    account = login(edge, tmp_path / "home")
    tunnel = create_tunnel(account, "web", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    start_connector(processes, tunnel, config)
    oidc = provider.oidc
    idp = api(
        account,
        "POST",
        "identity_providers",
        {
            "name": "Test IdP",
            "type": "oidc",
            "config": {
                "discovery_url": oidc.issuer,
                "client_id": oidc.client_id,
                "client_secret": oidc.client_secret,
                "scopes": ["openid", "email", "groups"],
            },
        },
    )
    app = api(
        account, "POST", "apps", {"name": "Team Wiki", "domain": HOST, "allowed_idps": [idp["id"]]}
    )
    for country in ("AT", "DE"):
        api(account, "POST", f"apps/{app['id']}/policies", _policy(country))
    add_zone(account, OTHER_HOST)
    other = api(account, "POST", "apps", {"name": "Payroll", "domain": OTHER_HOST})
    api(
        account,
        "POST",
        f"apps/{other['id']}/policies",
        {"name": "everyone", "decision": "allow", "include": [{"everyone": {}}]},
    )
    return Site(edge, account, origin, app, other, provider.https_port)


def visitor(chromium: Browser, address: str) -> BrowserContext:
    """A fresh browser whose requests reach the edge as if from ``address`` (through the
    trusted proxy). The edge's certificate comes from its own CA, which Chromium cannot be
    given: only the browser ignores certificate errors."""
    context = new_context(chromium, ignore_https_errors=True)
    context.set_extra_http_headers({"X-Forwarded-For": address})
    return context


def _assertion(origin: Origin) -> str:
    values = [v for n, v in origin.seen_headers[-1] if n.lower() == "cf-access-jwt-assertion"]
    assert len(values) == 1
    return values[0]


def _verify(site: Site, token: str) -> dict[str, Any]:
    certs = request(site.edge, HOST, "GET", "/cdn-cgi/access/certs")
    assert certs.status == 200
    keys = jwt.PyJWKSet.from_dict(json.loads(certs.body))
    kid = jwt.get_unverified_header(token)["kid"]
    claims: dict[str, Any] = jwt.decode(
        token, keys[kid].key, algorithms=["RS256"], audience=site.app["aud"]
    )
    return claims


def _session_cookie(context: BrowserContext) -> dict[str, Any]:
    cookies = [c for c in context.cookies() if c["name"] == "CF_Authorization"]
    assert len(cookies) == 1, cookies
    return dict(cookies[0])


def _sign_in(page: Page, site: Site, user_index: int, path: str, screens: Screens | None) -> None:
    page.goto(site.url(path))
    assert urlsplit(page.url).path == f"/cdn-cgi/access/login/{HOST}"
    if screens is not None:
        screens.shot(page, "access-login-page")
    page.click("text=Sign in with Test IdP")
    user = USERS[user_index]
    sign_in_at_provider(page, user.email, user.password, None)


def test_de_user_of_example_com_signs_in_and_the_origin_gets_a_verifiable_assertion(
    site: Site,
    chromium: Browser,
    screens: Screens,
    provider: Provider,
    processes: Processes,
    tmp_path: Path,
) -> None:
    context = visitor(chromium, DE)
    try:
        page = context.new_page()
        _sign_in(page, site, 0, "/private/report?q=1", screens)
        page.wait_for_url(site.url("/private/report?q=1"))
        assert site.origin.seen_headers, "the origin saw no request"
        claims = _verify(site, _assertion(site.origin))
        assert claims["email"] == "alice@example.com"
        assert claims["aud"] == [site.app["aud"]]
        assert claims["country"] == "DE"
        assert claims["custom"] == {"groups": ["engineering", "admins"]}
        seen = {n.lower(): v for n, v in site.origin.seen_headers[-1]}
        assert seen["cf-access-authenticated-user-email"] == "alice@example.com"

        cookie = _session_cookie(context)
        assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Lax"
        assert cookie["domain"] == HOST  # host-only: no Domain attribute
        # The login cookies of the flow are gone or never left /cdn-cgi/access.
        assert all(
            c["path"].startswith("/cdn-cgi/access")
            for c in context.cookies()
            if c["name"] != "CF_Authorization" and c["domain"] == HOST
        )

        # get-identity, as Cloudflare's.
        page.goto(site.url("/cdn-cgi/access/get-identity"))
        identity = json.loads(page.inner_text("body"))
        assert identity["email"] == "alice@example.com"
        assert identity["geo"] == {"country": "DE"}
        assert identity["idp"]["type"] == "oidc"
        assert {g["name"] for g in identity["groups"]} == {"engineering", "admins"}

        # Signed in already: the login page sends the visitor straight on.
        page.goto(site.url(f"/cdn-cgi/access/login/{HOST}?redirect_url=%2Fagain"))
        assert page.url == site.url("/again")

        # A copy of the cookie in use on a keep-alive connection (what the edge remembers for
        # a connection must end with the session too).
        address, port = site.edge.http.rsplit(":", 1)
        kept = http.client.HTTPConnection(address, int(port), timeout=30)
        stolen = [
            ("Host", HOST),
            ("X-Forwarded-For", DE),
            ("Cookie", f"CF_Authorization={cookie['value']}"),
        ]
        assert _get(kept, "/private", stolen) == 200
        assert _get(kept, "/private", stolen) == 200

        # Logout ends the session: the old cookie, copied into a new browser, is refused.
        page.goto(site.url("/cdn-cgi/access/logout"))
        assert "Signed out" in page.inner_text("body")
        assert not [c for c in context.cookies() if c["name"] == "CF_Authorization"]
        # And on the connection that used it a moment ago.
        seen_kept = len(site.origin.seen_headers)
        assert _get(kept, "/private", stolen) == 401
        assert len(site.origin.seen_headers) == seen_kept
        kept.close()
    finally:
        context.close()
    seen_before = len(site.origin.seen_headers)
    copied = visitor(chromium, DE)
    try:
        copied.add_cookies([cookie])  # type: ignore[list-item]
        page = copied.new_page()
        page.goto(site.url("/private/report?q=1"))
        assert urlsplit(page.url).path == f"/cdn-cgi/access/login/{HOST}"
    finally:
        copied.close()
    reply = request(
        site.edge,
        HOST,
        "GET",
        "/private",
        headers=[("Cookie", f"CF_Authorization={cookie['value']}")],
    )
    assert reply.status == 401, reply.body
    assert len(site.origin.seen_headers) == seen_before
    assert [p.name for p in screens.saved] == ["00-access-login-page.png"]
    # The session's end is in the store: a restarted edge refuses the cookie too.
    site.edge.proc.stop()
    (processes.tmp / "edge-ready.json").unlink()
    edge = _start_edge(provider, processes, tmp_path / "countries.mmdb")
    reply = request(
        edge, HOST, "GET", "/private", headers=[("Cookie", f"CF_Authorization={cookie['value']}")]
    )
    assert reply.status == 401, reply.body


def test_us_user_and_a_user_of_another_domain_are_denied(
    site: Site, chromium: Browser, screens: Screens
) -> None:
    for address, user, name in ((US, 0, "us-user"), (DE, 2, "other-domain")):
        context = visitor(chromium, address)
        try:
            page = context.new_page()
            _sign_in(page, site, user, "/private", None)
            page.wait_for_selector("text=Access denied")
            body = page.inner_text("body")
            assert "Team Wiki" in body and USERS[user].email in body
            screens.shot(page, f"access-denied-{name}")
            assert urlsplit(page.url).path == CALLBACK
            assert not [c for c in context.cookies() if c["name"] == "CF_Authorization"]
        finally:
            context.close()
    assert site.origin.seen_headers == []
    assert all(p.stat().st_size > 1000 for p in screens.saved)
    # Both decisions are in the access log, with who, from where and through which provider.
    denials = _logged(site, "deny", 2)
    seen = {(e["user_email"], e["country"], e["ip_address"]) for e in denials}
    assert seen == {("alice@example.com", "US", US), ("bob@other.test", "DE", DE)}
    assert {(e["identity_provider"], e["app_domain"], e["allowed"]) for e in denials} == {
        ("oidc", HOST, False)
    }


def _logged(site: Site, action: str, count: int) -> list[dict[str, Any]]:
    """The access log's entries of ``action`` once there are ``count`` (the edge writes its
    decisions a moment later; bounded wait)."""
    deadline = time.monotonic() + 15
    while True:
        entries: list[dict[str, Any]] = api(
            site.account, "GET", f"logs/access_requests?action={action}"
        )
        if len(entries) >= count or time.monotonic() > deadline:
            assert len(entries) == count, entries
            return entries
        time.sleep(0.2)


def test_pin_login_through_a_real_mail_server(
    site: Site, chromium: Browser, tmp_path: Path
) -> None:
    with smtp_server() as mailbox:
        pin_idp = api(
            site.account,
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
        app = site.app
        api(
            site.account,
            "PUT",
            f"apps/{app['id']}",
            {
                "name": app["name"],
                "domain": HOST,
                "allowed_idps": [*app["allowed_idps"], pin_idp["id"]],
            },
        )
        context = visitor(chromium, DE)
        try:
            page = context.new_page()
            page.goto(site.url("/pin-door"))
            page.fill("input[name=email]", "carol@example.com")
            page.click("text=Send me a code")
            page.wait_for_selector("input[name=pin]")
            mail = _pin_mail(mailbox)
            pin = re.search(r"\b(\d{6})\b", mail)
            assert pin is not None, mail
            page.fill("input[name=pin]", pin.group(1))
            page.click("button[type=submit]")
            page.wait_for_url(site.url("/pin-door"))
            claims = _verify(site, _assertion(site.origin))
            assert claims["email"] == "carol@example.com"
            assert claims["idp"]["type"] == "onetimepin"

            # Guessing: five wrong codes lock the address; then even the right one fails.
            page.context.clear_cookies()
            page.goto(site.url("/pin-door/again"))
            page.fill("input[name=email]", "alice@example.com")
            page.click("text=Send me a code")
            page.wait_for_selector("input[name=pin]")
            right = re.search(r"\b(\d{6})\b", _mail_to(mailbox, "alice@example.com"))
            assert right is not None
            wrong = f"{(int(right.group(1)) + 1) % 1_000_000:06d}"
            for attempt in range(5):
                page.fill("input[name=pin]", wrong)
                with page.expect_navigation():
                    page.click("button[type=submit]")
                expected = "Too many wrong codes" if attempt == 4 else "That code is not right"
                assert expected in page.inner_text("body")
            page.fill("input[name=pin]", right.group(1))
            with page.expect_navigation() as navigation:
                page.click("button[type=submit]")
            assert navigation.value is not None and navigation.value.status == 403
            assert "Too many wrong codes" in page.inner_text("body")
            assert not [c for c in context.cookies() if c["name"] == "CF_Authorization"]
        finally:
            context.close()


def _pin_mail(mailbox: Mailbox) -> str:
    return _mail_to(mailbox, "carol@example.com")


def _mail_to(mailbox: Mailbox, address: str) -> str:
    deadline = time.monotonic() + 15
    while not mailbox.to(address):
        assert time.monotonic() < deadline, f"no mail to {address}"
        mailbox.wait_for(len(mailbox.messages) + 1, timeout=max(0.1, deadline - time.monotonic()))
    body = mailbox.to(address)[-1].get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def test_attacks_forged_state_replayed_code_other_apps_cookie_foreign_redirect_csrf(
    site: Site, chromium: Browser
) -> None:
    context = visitor(chromium, DE)
    try:
        page = context.new_page()
        # A forged state: a login begun in this browser (its flow cookie set, the visitor
        # at the provider's form), answered with a state of the attacker's choosing.
        page.goto(site.url("/private"))
        page.click("text=Sign in with Test IdP")
        page.wait_for_selector("input[name=email]")
        forged = f"{CALLBACK}?code=attacker-code&state=forged-{'a' * 40}"
        response = page.goto(site.url(forged))
        assert response is not None and response.status == 403
        assert "state" in page.inner_text("body")
        assert not [c for c in context.cookies() if c["name"] == "CF_Authorization"]

        # A redirect to another host after login: the visitor stays on this one.
        evil = quote("https://evil.example.test/steal", safe="")
        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url))
        page.goto(site.url(f"/cdn-cgi/access/login/{HOST}?redirect_url={evil}"))
        page.click("text=Sign in with Test IdP")
        sign_in_at_provider(page, USERS[0].email, USERS[0].password, None)
        page.wait_for_url(re.compile(rf"https://{re.escape(HOST)}:\d+/$"))
        assert urlsplit(page.url).hostname == HOST
        token = _session_cookie(context)["value"]

        # A replayed callback (the same code and state again): its flow is used up.
        (callback,) = [u for u in requested if urlsplit(u).path == CALLBACK]
        assert "code=" in callback
        response = page.goto(callback)
        assert response is not None and response.status == 403
        assert "Sign-in refused" in page.inner_text("body")  # the flow cookie went with it
        assert _session_cookie(context)["value"] == token  # the session is not replaced
    finally:
        context.close()
    # This application's cookie presented to another application (same account, other
    # hostname, an Allow-everyone policy): not a session there.
    reply = request(
        site.edge,
        OTHER_HOST,
        "GET",
        "/",
        headers=[("Cookie", f"CF_Authorization={token}"), ("Accept", "application/json")],
    )
    assert reply.status == 401, reply.body
    # And a login form posted without this browser's CSRF token is refused.
    csrf = request(
        site.edge,
        HOST,
        "POST",
        "/cdn-cgi/access/login/start",
        body=b"provider=x&return_to=%2F&csrf=0",
        headers=[("Content-Type", "application/x-www-form-urlencoded")],
    )
    assert csrf.status == 403 and b"not sent from this browser" in csrf.body


def test_cli_login_hands_the_token_over_once_and_token_and_curl_use_it(
    site: Site, chromium: Browser, tmp_path: Path
) -> None:
    env = {**os.environ, "HOME": str(tmp_path / "cli-home")}
    app_url = site.url("/private")
    dial = ["--edge", site.edge.https, "--cacert", str(site.edge.ca)]
    login = subprocess.Popen(
        [*adit_command(), "access", "login", app_url, *dial, "--timeout", "90"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        cli_url = login_url(login)
        assert cli_url.startswith(site.url("/cdn-cgi/access/cli?token="))
        context = visitor(chromium, AT)  # the mission's other country
        try:
            allow_cli_login(context.new_page(), cli_url, HOST)
            browser_token = _session_cookie(context)["value"]
        finally:
            context.close()
        out, err = login.communicate(timeout=60)
    finally:
        if login.poll() is None:
            login.kill()
            login.wait()
    assert login.returncode == 0, err
    token = out.split("Successfully fetched your token:", 1)[1].strip()
    assert token == browser_token
    assert _verify(site, token)["email"] == "alice@example.com"
    assert _verify(site, token)["country"] == "AT"
    (stored,) = (tmp_path / "cli-home" / ".adit").glob(f"{HOST}-*-token")
    assert stored.name == f"{HOST}-{site.app['aud']}-token"
    assert stored.stat().st_mode & 0o777 == 0o600
    # The transfer is one-time: the box is gone.
    key = urlsplit(cli_url).query.split("token=", 1)[1].split("&", 1)[0]
    again = request(site.edge, HOST, "GET", f"/cdn-cgi/access/transfer/{key}")
    assert again.status == 404

    printed = subprocess.run(
        [*adit_command(), "access", "token", "-app", app_url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    assert printed.stdout == token
    before = len(site.origin.seen_headers)
    host, port = HOST, site.port
    curl = subprocess.run(
        [
            *adit_command(),
            "access",
            "curl",
            site.url("/from-curl"),
            "--resolve",
            f"{host}:{port}:127.0.0.1",
            "--cacert",
            str(site.edge.ca),
            "-H",
            f"X-Forwarded-For: {DE}",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert (curl.returncode, curl.stdout) == (0, "200"), curl.stderr
    assert len(site.origin.seen_headers) == before + 1
    assert _verify(site, _assertion(site.origin))["email"] == "alice@example.com"

    # adit access tcp sends the stored token too: the origin (an HTTP server, so the
    # WebSocket itself goes nowhere) sees the upgrade arrive through Access, for the CLI's
    # user; without the token the edge stops it.
    def tcp(home: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *adit_command(),
                "access",
                "tcp",
                "--hostname",
                f"{HOST}:{port}",
                *dial,
                "--header",
                f"X-Forwarded-For: {DE}",
            ],
            input="",
            capture_output=True,
            text=True,
            env=home,
            timeout=60,
            check=False,
        )

    before = len(site.origin.seen_headers)
    tcp(env)
    assert len(site.origin.seen_headers) == before + 1
    upgrade = {n.lower(): v for n, v in site.origin.seen_headers[-1]}
    assert upgrade["upgrade"].lower() == "websocket"
    assert _verify(site, upgrade["cf-access-jwt-assertion"])["email"] == "alice@example.com"
    refused = tcp({**env, "HOME": str(tmp_path / "nobody")})
    assert refused.returncode != 0
    assert len(site.origin.seen_headers) == before + 1

    # Without a stored token there is nothing to send: a clear refusal, curl not run.
    other_home = {**env, "HOME": str(tmp_path / "nobody")}
    refused = subprocess.run(
        [*adit_command(), "access", "token", "-app", app_url],
        capture_output=True,
        text=True,
        env=other_home,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0
    assert "Please run login command to generate token" in refused.stderr


def _get(conn: http.client.HTTPConnection, path: str, headers: list[tuple[str, str]]) -> int:
    """One GET on a kept connection (keep-alive: the next one goes on the same connection)."""
    conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
    for name, value in headers:
        conn.putheader(name, value)
    conn.endheaders()
    response = conn.getresponse()
    response.read()
    assert not response.will_close, "the edge closed the kept connection"
    return response.status
