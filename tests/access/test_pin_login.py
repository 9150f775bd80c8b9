"""One-time PIN login against a real SMTP server (aiosmtpd): the mail is caught, the right PIN
works once, ten guesses lock the address, and the pages a person sees are screenshotted."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import BrowserContext

from access_support.browser import Screens
from access_support.relying_party import RelyingParty, planned_origin, relying_party
from access_support.smtp import Mailbox, smtp_server
from adit.edge.access.oidc_client import OidcSettings
from adit.edge.access.pin import PinResult, SmtpSettings

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def pin_rp() -> Iterator[tuple[RelyingParty, Mailbox]]:
    host, port = planned_origin()
    # No OIDC provider in this module: the PIN forms never reach it.
    unused = OidcSettings(discovery_url="http://127.0.0.1:9", client_id="x", client_secret="y")
    with smtp_server() as mailbox:
        smtp = SmtpSettings(
            host=mailbox.host, port=mailbox.port, sender="access@example.test", starttls=False
        )
        with relying_party(host, port, unused, smtp) as rp:
            yield rp, mailbox


@pytest.fixture
def rp(pin_rp: tuple[RelyingParty, Mailbox]) -> RelyingParty:
    pin_rp[0].results.clear()
    return pin_rp[0]


@pytest.fixture
def mailbox(pin_rp: tuple[RelyingParty, Mailbox]) -> Mailbox:
    pin_rp[1].messages.clear()
    return pin_rp[1]


def pin_of(mailbox: Mailbox, address: str, count: int = 1) -> str:
    mailbox.wait_for(count)
    mails = mailbox.to(address)
    assert mails, f"no mail to {address}"
    body = mails[-1].get_body(("plain",))
    assert body is not None
    match = re.search(r"^ +(\d{6})\s*$", body.get_content(), re.MULTILINE)
    assert match is not None
    return match.group(1)


class PinClient:
    """A browser-less visitor (cookie jar, CSRF token from the login page)."""

    def __init__(self, rp: RelyingParty) -> None:
        self.rp = rp
        self.http = httpx.Client(timeout=10, follow_redirects=False)
        page = self.http.get(rp.local_url("/cdn-cgi/access/login?redirect_url=/inbox"))
        token = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
        assert token is not None
        self.csrf = token.group(1)

    def ask(self, email: str) -> httpx.Response:
        form = {"provider": "idp-pin", "return_to": "/inbox", "csrf": self.csrf, "email": email}
        return self.http.post(self.rp.local_url("/cdn-cgi/access/login/pin"), data=form)

    def enter(self, email: str, pin: str) -> httpx.Response:
        form = {"provider": "idp-pin", "return_to": "/inbox", "csrf": self.csrf}
        return self.http.post(
            self.rp.local_url("/cdn-cgi/access/login/pin/verify"),
            data={**form, "email": email, "pin": pin},
        )


def test_pin_login_in_the_browser(
    rp: RelyingParty, mailbox: Mailbox, browser_context: BrowserContext, screens: Screens
) -> None:
    page = browser_context.new_page()
    page.goto(rp.url("/inbox?folder=a"))
    page.fill("input[name=email]", "carol@example.com")
    page.click("text=Send me a code")
    page.wait_for_selector("input[name=pin]")
    screens.shot(page, "access-pin-entry")
    pin = pin_of(mailbox, "carol@example.com")
    mail = mailbox.to("carol@example.com")[0]
    assert mail["Subject"] == "Your login code for Test App"
    page.fill("input[name=pin]", pin)
    page.click("button[type=submit]")
    page.wait_for_url(rp.url("/inbox?folder=a"))
    assert page.evaluate("() => JSON.parse(document.body.innerText)")["email"] == (
        "carol@example.com"
    )
    page.goto(rp.url("/cdn-cgi/access/denied"))
    assert "Access denied" in page.inner_text("h1")
    assert "Test App" in page.inner_text("body")
    screens.shot(page, "access-denied")


def test_right_pin_works_once(rp: RelyingParty, mailbox: Mailbox) -> None:
    visitor = PinClient(rp)
    assert visitor.ask("alice@example.com").status_code == 200
    pin = pin_of(mailbox, "alice@example.com")
    first = visitor.enter("alice@example.com", pin)
    assert first.status_code == 302 and first.headers["location"] == "/inbox"
    again = visitor.enter("alice@example.com", pin)
    assert again.status_code == 401
    assert rp.results == [PinResult.ACCEPTED, PinResult.UNKNOWN]


def test_ten_guesses_lock_the_address(rp: RelyingParty, mailbox: Mailbox) -> None:
    visitor = PinClient(rp)
    visitor.ask("bob@other.test")
    pin = pin_of(mailbox, "bob@other.test")
    wrong = f"{(int(pin) + 1) % 1_000_000:06d}"
    statuses = [visitor.enter("bob@other.test", wrong).status_code for _ in range(9)]
    # The tenth try is the right PIN: locked all the same.
    statuses.append(visitor.enter("bob@other.test", pin).status_code)
    assert statuses == [401] * 4 + [403] * 6
    assert rp.results == [PinResult.WRONG] * 4 + [PinResult.LOCKED] * 6
    # Asking for a new PIN does not unlock it, and sends no mail.
    page = visitor.ask("bob@other.test")
    assert "too many attempts" in page.text
    assert len(mailbox.to("bob@other.test")) == 1
