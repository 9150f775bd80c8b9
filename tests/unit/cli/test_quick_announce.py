"""The quick tunnel's banner: what it says with and without a registered connection."""

from __future__ import annotations

from adit.cli.quick_announce import banner

URL = "http://0123456789ab.localhost:8080"


def test_banner_after_a_registration_says_visit_it() -> None:
    text = banner(URL, connected=True)
    assert "Your quick Tunnel has been created! Visit it at" in text
    assert URL in text
    assert "not reachable" not in text


def test_banner_without_a_connection_says_it_is_not_reachable_yet() -> None:
    text = banner(URL, connected=False)
    assert "no connection has registered yet" in text
    assert "not reachable until one does" in text
    assert URL in text
    # A box: every line as wide as the rules above and below it.
    assert len({len(line) for line in text.splitlines()}) == 1
