"""The OIDC login through a real browser and a real OpenID Provider.

Headless Chromium goes to a relying party built from adit's Access modules, is sent to npm
``oidc-provider``'s own login form, logs in, and comes back; the ID token is validated (JWKS,
iss, aud, nonce, exp) and the identity is (email, groups). Then the attacks: a forged state, a
replayed code, a wrong nonce, a callback carried into another browser, a login post from
another site (CSRF).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Route

from access_support.browser import Screens, new_context
from access_support.oidc import USERS, OidcProvider, sign_in_at_provider, start_oidc_provider
from access_support.relying_party import CALLBACK, RelyingParty, planned_origin, relying_party
from adit.edge.access.oidc_client import OidcIdentity, OidcSettings

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def provider_and_rp(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RelyingParty, OidcProvider]]:
    """One provider and one relying party for the module (the provider takes ~1 s to start)."""
    host, port = planned_origin()
    tmp = tmp_path_factory.mktemp("oidc")
    with start_oidc_provider(tmp, [f"http://{host}:{port}{CALLBACK}"]) as provider:
        settings = OidcSettings(
            discovery_url=provider.issuer,
            client_id=provider.client_id,
            client_secret=provider.client_secret,
            scopes=("openid", "email", "groups"),
            timeout=10.0,
        )
        with relying_party(host, port, settings) as rp:
            yield rp, provider


@pytest.fixture
def rp(provider_and_rp: tuple[RelyingParty, OidcProvider]) -> RelyingParty:
    rp = provider_and_rp[0]
    rp.results.clear()
    rp.held = None
    return rp


@pytest.fixture
def issuer(provider_and_rp: tuple[RelyingParty, OidcProvider]) -> str:
    return provider_and_rp[1].issuer


@contextmanager
def callbacks_held(rp: RelyingParty) -> Iterator[list[str]]:
    """The relying party keeps the provider's redirects back instead of finishing them."""
    rp.held = []
    try:
        yield rp.held
    finally:
        rp.held = None


def start_login(page: Page, rp: RelyingParty) -> None:
    page.goto(rp.url("/cdn-cgi/access/login?redirect_url=%2Fprivate%2Freport%3Fq%3D1"))
    page.wait_for_selector("text=Sign in with Test IdP")
    page.click("text=Sign in with Test IdP")


def test_browser_logs_in_and_returns_to_the_original_url(
    rp: RelyingParty, issuer: str, browser_context: BrowserContext, screens: Screens
) -> None:
    page = browser_context.new_page()
    page.goto(rp.url("/private/report?q=1"))
    assert urlsplit(page.url).path == "/cdn-cgi/access/login"
    screens.shot(page, "access-login-page")
    page.click("text=Sign in with Test IdP")
    assert page.url.startswith(issuer)
    alice = USERS[0]
    sign_in_at_provider(page, alice.email, alice.password, screens)
    page.wait_for_url(rp.url("/private/report?q=1"))
    seen = page.evaluate("() => JSON.parse(document.body.innerText)")
    assert seen == {
        "path": "/private/report?q=1",
        "email": "alice@example.com",
        "groups": ["engineering", "admins"],
    }
    assert rp.results == [
        OidcIdentity(
            "alice@example.com",
            ("engineering", "admins"),
            "alice@example.com",
            issuer,
        )
    ]
    # The session cookie is HttpOnly and SameSite=Lax; the flow cookie is gone with its flow.
    cookies = {c["name"]: c for c in browser_context.cookies()}
    assert cookies["CF_Authorization"]["httpOnly"]
    assert cookies["CF_Authorization"]["sameSite"] == "Lax"
    # The login page and the provider's form, kept as artifacts under the test's tmp dir.
    assert [p.name for p in screens.saved] == ["00-access-login-page.png", "01-provider-login.png"]
    assert all(p.stat().st_size > 1000 for p in screens.saved)


def test_other_domain_user_gets_their_own_identity(
    rp: RelyingParty, issuer: str, browser_context: BrowserContext
) -> None:
    page = browser_context.new_page()
    start_login(page, rp)
    bob = USERS[2]
    sign_in_at_provider(page, bob.email, bob.password, None)
    page.wait_for_url(rp.url("/private/report?q=1"))
    assert rp.results[-1] == OidcIdentity(
        "bob@other.test", ("engineering",), "bob@other.test", issuer
    )


def test_forged_state_is_refused(rp: RelyingParty, browser_context: BrowserContext) -> None:
    page = browser_context.new_page()
    with callbacks_held(rp) as held:
        start_login(page, rp)
        sign_in_at_provider(page, USERS[0].email, USERS[0].password, None)
        page.wait_for_selector("text=held by the test")
    response = page.goto(rp.url(with_param(held[0], state="forged-" + "a" * 40)))
    assert response is not None and response.status == 403
    assert "state" in page.inner_text("body")
    assert rp.results == ["the provider's answer does not belong to this login (state)"]


def test_replayed_code_is_refused(rp: RelyingParty, browser_context: BrowserContext) -> None:
    page = browser_context.new_page()
    with callbacks_held(rp) as held:
        start_login(page, rp)
        sign_in_at_provider(page, USERS[0].email, USERS[0].password, None)
        page.wait_for_selector("text=held by the test")
    first = page.goto(rp.url(held[0]))
    assert first is not None and first.url == rp.url("/private/report?q=1")
    # The same callback again: its flow was used up.
    again = page.goto(rp.url(held[0]))
    assert again is not None and again.status == 403
    # The same code under a new flow of this browser (its own state): the provider refuses
    # the used code.
    with callbacks_held(rp) as held2:
        start_login(page, rp)
        page.wait_for_selector("text=held by the test")  # the provider's session skips the form
    old_code = dict(parse_qsl(urlsplit(held[0]).query))["code"]
    replay = page.goto(rp.url(with_param(held2[0], code=old_code)))
    assert replay is not None and replay.status == 403
    assert isinstance(rp.results[0], OidcIdentity)
    assert rp.results[1] == "no login in progress for this browser (expired or already used)"
    assert "the code was refused" in str(rp.results[2]) and "invalid_grant" in str(rp.results[2])


def test_wrong_nonce_is_refused(rp: RelyingParty, browser_context: BrowserContext) -> None:
    page = browser_context.new_page()

    def swap_nonce(route: Route) -> None:
        # The RP's redirect to the provider, with another nonce than the flow's.
        # Playwright fetches from its own process, without the browser's host mapping.
        url = route.request.url.replace(f"{rp.host}:", "127.0.0.1:", 1)
        response = route.fetch(url=url, max_redirects=0)
        location = with_param(response.headers["location"], nonce="not-the-flows-nonce")
        route.fulfill(response=response, headers={**response.headers, "location": location})

    page.route(re.compile(r".*/cdn-cgi/access/login/start$"), swap_nonce)
    start_login(page, rp)
    sign_in_at_provider(page, USERS[1].email, USERS[1].password, None)
    page.wait_for_selector("text=login refused")
    assert "nonce" in page.inner_text("body")
    assert rp.results == ["the ID token's nonce is not this login's"]


def test_callback_in_another_browser_is_refused(
    rp: RelyingParty, chromium: Browser, browser_context: BrowserContext
) -> None:
    """Login CSRF by callback: an attacker's own callback URL opened in a victim's browser
    (which began no flow) does not log the victim in as the attacker."""
    attacker = browser_context.new_page()
    with callbacks_held(rp) as held:
        start_login(attacker, rp)
        sign_in_at_provider(attacker, USERS[2].email, USERS[2].password, None)
        attacker.wait_for_selector("text=held by the test")
    victim_context = new_context(chromium)
    try:
        victim = victim_context.new_page()
        response = victim.goto(rp.url(held[0]))
        assert response is not None and response.status == 403
        assert not any(c["name"] == "CF_Authorization" for c in victim_context.cookies())
    finally:
        victim_context.close()
    assert rp.results == ["no login in progress for this browser (expired or already used)"]


def test_login_post_from_another_site_is_refused(rp: RelyingParty, issuer: str) -> None:
    """Login CSRF by form: a post without the token bound to the browser's cookie."""
    with httpx.Client(timeout=10) as client:
        page = client.get(rp.local_url("/cdn-cgi/access/login?redirect_url=/x"))
        assert page.status_code == 200
        token = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
        assert token is not None
        form = {"provider": "idp-oidc", "return_to": "/x"}
        # No cookie (another site's form), a made-up token, then the real one.
        bare = httpx.post(rp.local_url("/cdn-cgi/access/login/start"), data=form, timeout=10)
        wrong = client.post(
            rp.local_url("/cdn-cgi/access/login/start"), data={**form, "csrf": "0" * 64}
        )
        right = client.post(
            rp.local_url("/cdn-cgi/access/login/start"), data={**form, "csrf": token.group(1)}
        )
    assert bare.status_code == 403 and wrong.status_code == 403
    assert right.status_code == 302
    assert right.headers["location"].startswith(issuer)
    assert rp.results == ["csrf refused", "csrf refused"]


def test_return_url_to_another_host_is_not_followed(
    rp: RelyingParty, browser_context: BrowserContext
) -> None:
    page = browser_context.new_page()
    page.goto(rp.url("/cdn-cgi/access/login?redirect_url=//evil.example.test/steal"))
    page.click("text=Sign in with Test IdP")
    sign_in_at_provider(page, USERS[0].email, USERS[0].password, None)
    page.wait_for_url(rp.url("/"))
    assert urlsplit(page.url).netloc == f"{rp.host}:{rp.port}"


def with_param(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(params)
    return urlunsplit(parts._replace(query=urlencode(query)))


def test_provider_requires_pkce(rp: RelyingParty, issuer: str) -> None:
    """The test provider is as strict as the flow: an authorization request without a code
    challenge is sent back with an error, never to a login form."""
    query = {
        "client_id": "adit-edge",
        "response_type": "code",
        "redirect_uri": rp.url(CALLBACK),
        "scope": "openid email",
        "state": "s" * 43,
        "nonce": "n" * 43,
    }
    answer = httpx.get(f"{issuer}/auth", params=query, timeout=10, follow_redirects=False)
    assert answer.status_code in (302, 303)
    back = dict(parse_qsl(urlsplit(answer.headers["location"]).query))
    assert back["error"] == "invalid_request" and "PKCE" in back["error_description"]
