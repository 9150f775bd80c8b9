"""The OIDC client against a provider served over TLS with the test's own CA: discovery, JWKS
and the code exchange trust exactly the configured CA bundle (``OidcSettings.ca_bundle``)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from access_support.browser import new_context
from access_support.oidc import USERS, sign_in_at_provider, start_oidc_provider
from access_support.pki import write_service_ca
from access_support.relying_party import CALLBACK, planned_origin, relying_party
from adit.edge.access.oidc_client import OidcClient, OidcIdentity, OidcSettings, ProviderUnavailable

pytestmark = pytest.mark.process


def test_login_through_a_tls_provider_trusting_its_ca(tmp_path: Path, chromium: Browser) -> None:
    ca = write_service_ca(tmp_path / "pki")
    host, port = planned_origin()
    with start_oidc_provider(tmp_path, [f"http://{host}:{port}{CALLBACK}"], tls=ca) as provider:
        assert provider.issuer.startswith("https://127.0.0.1:")
        base = {
            "discovery_url": provider.issuer,
            "client_id": provider.client_id,
            "client_secret": provider.client_secret,
            "scopes": ("openid", "email", "groups"),
        }
        # Without the CA the provider's certificate is not trusted: a clear refusal.
        untrusting = OidcClient(OidcSettings(**base))  # type: ignore[arg-type]
        # (In a thread: Playwright's sync API keeps a loop running in this one.)
        with (
            ThreadPoolExecutor(1) as pool,
            pytest.raises(ProviderUnavailable, match="openid-configuration: ConnectError"),
        ):
            pool.submit(asyncio.run, untrusting.metadata()).result(timeout=30)
        settings = OidcSettings(**base, ca_bundle=str(ca.ca))  # type: ignore[arg-type]
        with relying_party(host, port, settings) as rp:
            # The browser cannot be given the CA (Chromium reads only its NSS database), so it
            # alone ignores certificate errors; adit's client checks them.
            context = new_context(chromium, ignore_https_errors=True)
            try:
                page = context.new_page()
                page.goto(rp.url("/private"))
                page.click("text=Sign in with Test IdP")
                sign_in_at_provider(page, USERS[3].email, USERS[3].password, None)
                page.wait_for_url(rp.url("/private"))
            finally:
                context.close()
            assert rp.results == [
                OidcIdentity("dave@other.test", (), "dave@other.test", provider.issuer)
            ]
