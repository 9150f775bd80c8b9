"""The request target's normal form (adit.protocol.request_target): properties and cases."""

from __future__ import annotations

import contextlib
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from adit.config.ingress import parse_ingress
from adit.config.model import IngressRuleConfig
from adit.protocol.errors import BadRequestTarget
from adit.protocol.request_target import (
    RequestTarget,
    decoded_path,
    normalize_path,
    normalize_target,
)

HOST = "app.example.test"
UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"

# Segments of a normal path: path characters, never "." or ".." (nor empty).
segments = st.text(alphabet=UNRESERVED + "!$&'()*+,;=:@", min_size=1, max_size=8).filter(
    lambda s: s not in (".", "..")
)
normal_paths = st.builds(
    lambda parts, slash: "/" + "/".join(parts) + ("/" if slash and parts else ""),
    st.lists(segments, max_size=6),
    st.booleans(),
)
# Anything a parser might let through, one char a byte (latin-1 text).
raw_paths = st.text(alphabet=st.characters(max_codepoint=255), max_size=40).map("/{}".format)
tricky_paths = st.lists(
    st.sampled_from(["/", "//", ".", "..", "%2e", "%2E%2e", "%2F", "%2f", "%5C", "\\", "a", "%41"]),
    max_size=12,
).map(lambda parts: "/" + "".join(parts))


def _normal_or_refused(path: str) -> str | None:
    try:
        return normalize_path(path)
    except BadRequestTarget:
        return None


def _segments_are_normal(path: str) -> bool:
    """No empty (but a final one), "." or ".." segment: nothing to resolve, nothing escapes."""
    parts = path.split("/")
    inner, last = parts[1:-1], parts[-1]
    return parts[0] == "" and not {"", ".", ".."} & set(inner) and last not in (".", "..")


@given(st.one_of(raw_paths, tricky_paths, normal_paths))
@example("/x/..%2Fadmin")
@example("/%2e%2e/%2e%2e/etc/passwd")
def test_normal_form_is_idempotent_and_never_escapes_the_root(path: str) -> None:
    normal = _normal_or_refused(path)
    if normal is None:
        return
    assert normalize_path(normal) == normal
    assert normal.startswith("/")
    # Neither the forwarded path nor the one an ingress rule matches has a segment to resolve:
    # an origin that decodes %2F before resolving dots sees the path the rule saw.
    assert _segments_are_normal(normal)
    assert _segments_are_normal(decoded_path(normal).replace("\\", "/"))


@st.composite
def spellings(draw: st.DrawFn) -> tuple[str, str]:
    """A normal path and another spelling of it: encoded unreserved characters, dot segments,
    doubled slashes, backslashes."""
    normal = draw(normal_paths)
    out = []
    for char in normal:
        choice = draw(st.integers(0, 5))
        if char == "/":
            if choice == 0:
                out.append("//")
            elif choice == 1:
                out.append("/./")
            elif choice == 2:
                out.append("/" + draw(segments) + "/../")
            elif choice == 3 and out:  # a target starts with "/" (else it is no path)
                out.append("\\")
            else:
                out.append("/")
        elif char in UNRESERVED and choice == 0:
            hex_digits = f"{ord(char):02x}"
            out.append("%" + (hex_digits.upper() if draw(st.booleans()) else hex_digits))
        else:
            out.append(char)
    return normal, "".join(out)


@given(spellings())
def test_every_spelling_is_forwarded_and_matched_as_the_normal_path(
    pair: tuple[str, str],
) -> None:
    normal, spelling = pair
    assert normalize_path(spelling) == normal
    forwarded = normalize_target("GET", f"{spelling}?q=%2e", HOST).path
    assert forwarded == normal + "?q=%2e"
    assert normalize_target("GET", f"http://{HOST}{spelling}", HOST).path == normal
    ingress = parse_ingress(
        [
            IngressRuleConfig(hostname=HOST, path=f"^{re.escape(normal)}$", service="http://a:1"),
            IngressRuleConfig(service="http_status:404"),
        ]
    )
    # The connector matches the path the origin gets, decoded: the rule the normal path hits.
    assert ingress.find_matching_rule(HOST, decoded_path(forwarded)).index == 0


@given(raw_paths, st.text(max_size=10))
def test_only_the_typed_error_escapes(path: str, query: str) -> None:
    with contextlib.suppress(BadRequestTarget):
        normalize_target("GET", f"{path}?{query}", HOST)


@pytest.mark.parametrize(
    ("method", "target", "expected"),
    [
        ("GET", "/", "/"),
        ("GET", "/a/b/..", "/a/"),
        ("GET", "/..", "/"),
        ("GET", "/.well-known/x", "/.well-known/x"),
        ("GET", "/a%2fb", "/a%2Fb"),
        ("GET", "/a<b>|c", "/a%3Cb%3E%7Cc"),
        ("GET", "/caf\xc3\xa9", "/caf%C3%A9"),
        ("GET", "/p?x=/../&y=%2e", "/p?x=/../&y=%2e"),
        ("GET", f"http://{HOST}", "/"),
        ("GET", f"http://{HOST}:80?x", "/?x"),
        ("GET", f"https://{HOST.upper()}.:443/a", "/a"),
        ("OPTIONS", "/x", "/x"),
    ],
)
def test_cases(method: str, target: str, expected: str) -> None:
    assert normalize_target(method, target, HOST) == RequestTarget(expected, HOST)


def test_an_absolute_url_gives_the_authority_when_there_is_no_host() -> None:
    assert normalize_target("GET", "http://a.example/x", "") == RequestTarget("/x", "a.example")


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("CONNECT", f"{HOST}:443"),
        ("CONNECT", "/"),
        ("OPTIONS", "*"),
        ("GET", "http://internal.local/"),
        ("GET", f"http://{HOST}:8080/"),
        ("GET", f"http://u:p@{HOST}/"),
        ("GET", "http:///x"),
        ("GET", f"ftp://{HOST}/"),
        ("GET", "x/y"),
        ("GET", "/a#b"),
        ("GET", "/%"),
        ("GET", "/%4"),
        ("GET", "/%g0"),
        ("GET", "/a/..%2Fb"),
        ("GET", "/a%2F.%2Fb"),
        ("GET", "/a%5C..%5Cb"),
        ("GET", "/a%2F%2Fb"),
        ("GET", "/a%2F.."),
    ],
)
def test_refused(method: str, target: str) -> None:
    with pytest.raises(BadRequestTarget):
        normalize_target(method, target, HOST)


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("/a%2Fb?x=%41", "/a/b"),
        ("/caf%C3%A9", "/café"),
        ("/bad%FF", "/bad\ufffd"),
        ("/plain", "/plain"),
        ("/a+b", "/a+b"),
    ],
)
def test_decoded_path_is_gos_url_path(target: str, path: str) -> None:
    assert decoded_path(target) == path
