"""Request matching: first matching rule wins, else the last rule (CLOUDFLARED_FEATURES §2.5)."""

from __future__ import annotations

import pytest

from adit.config.ingress import Ingress, parse_ingress
from adit.config.model import IngressRuleConfig


def make(*rules: tuple[str, str, str]) -> Ingress:
    return parse_ingress([IngressRuleConfig(hostname=h, path=p, service=s) for h, p, s in rules])


RULES = make(
    ("www.example.com", "", "http://localhost:8000"),  # 0
    ("*.example.xyz", r"/[a-zA-Z]+\.html", "http://localhost:8001"),  # 1
    ("münchen.example.com", "", "http://localhost:8002"),  # 2
    ("", "/status", "http://localhost:8003"),  # 3 path only, not last
    ("*example.com", "", "http://localhost:8004"),  # 4 validates, matches only itself
    ("api.example.com", "^/v1/", "http://localhost:8005"),  # 5
    ("*", "", "http_status:404"),  # 6 catch-all
)


@pytest.mark.parametrize(
    ("host", "path", "index"),
    [
        ("www.example.com", "/", 0),
        ("www.example.com:8443", "/anything", 0),
        # One spelling of a name, as the edge routes it (cloudflared: case-sensitive, keeps
        # the dot, so these hit its catch-all although the edge sent them to the tunnel).
        ("WWW.EXAMPLE.COM", "/", 0),
        ("www.example.com.", "/", 0),
        ("www.example.com.:443", "/", 0),
        ("A.Example.XYZ.", "/index.html", 1),
        ("MÜNCHEN.example.com", "/", 2),
        ("a.example.xyz", "/index.html", 1),
        ("a.b.example.xyz", "/x/index.html", 1),  # any depth, unanchored path
        ("a.example.xyz", "/a/b.html.bak", 1),
        ("example.xyz", "/index.html", 6),  # not the apex
        ("badexample.xyz", "/index.html", 6),
        ("a.example.xyz", "/1.html", 6),
        ("münchen.example.com", "/", 2),
        ("xn--mnchen-3ya.example.com", "/", 2),  # punycode alternative
        ("xn--mnchen-3ya.example.com:443", "/", 2),
        ("anything.test", "/status/x", 3),
        ("anything.test", "/a/status", 3),
        ("*example.com", "/", 4),
        ("foo.example.com", "/", 6),
        ("api.example.com", "/v1/users", 5),
        ("api.example.com", "/x/v1/users", 6),  # anchored by the user's own ^
        ("", "", 6),
        ("[::1]:8080", "/", 6),
    ],
)
def test_matching_table(host: str, path: str, index: int) -> None:
    assert RULES.find_matching_rule(host, path).index == index


def test_wildcard_star_and_empty_match_everything() -> None:
    ingress = make(("*", "/api", "http://localhost:1"), ("", "", "http://localhost:2"))
    assert ingress.find_matching_rule("x.y", "/api/v1").index == 0
    assert ingress.find_matching_rule("x.y", "/web").index == 1


def test_uppercase_rule_matches_lowercase_request_through_idna_mapping() -> None:
    # Go's idna.Lookup maps to lower case, so the "punycode" form of an upper-case rule
    # host is its lower-case spelling; cloudflared matches it that way too.
    ingress = make(("WWW.EXAMPLE.COM", "", "http://localhost:1"), ("", "", "http_status:404"))
    assert ingress.rules[0].punycode_hostname == "www.example.com"
    assert ingress.find_matching_rule("www.example.com", "/").index == 0


def test_wildcard_punycode() -> None:
    ingress = make(("*.bücher.example", "", "http://localhost:1"), ("", "", "http_status:404"))
    assert ingress.rules[0].punycode_hostname == "*.xn--bcher-kva.example"
    assert ingress.find_matching_rule("shop.xn--bcher-kva.example", "/").index == 0
    assert ingress.find_matching_rule("shop.bücher.example", "/").index == 0


def test_catch_all_has_no_punycode() -> None:
    assert RULES.rules[-1].punycode_hostname == ""
    assert RULES.rules[0].punycode_hostname == ""
