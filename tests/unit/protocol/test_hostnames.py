"""The shared hostname and address rules (adit.protocol.hostnames)."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from adit.protocol.hostnames import (
    AddressError,
    InvalidHostname,
    check_hostname,
    host_of_authority,
    is_within,
    join_host_port,
    normalize_authority,
    normalize_hostname,
    split_address,
    split_host_port,
)


@pytest.mark.parametrize(
    ("name", "normal"),
    [
        ("RAW.EXAMPLE.COM", "raw.example.com"),
        ("raw.example.com.", "raw.example.com"),
        ("Raw.Example.Com.", "raw.example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example.", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("*.bücher.example", "*.xn--bcher-kva.example"),
        ("a。b。example", "a.b.example"),  # ideographic full stops are dots (UTS #46)
        ("_acme-challenge.Example.com", "_acme-challenge.example.com"),
        ("*example.com", "*example.com"),  # no hostname, still one spelling
        ("", ""),
    ],
)
def test_normalize(name: str, normal: str) -> None:
    assert normalize_hostname(name) == normal


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=40))
def test_normalize_is_total_and_idempotent(name: str) -> None:
    once = normalize_hostname(name)
    assert normalize_hostname(once) == once


labels = st.from_regex(r"[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,20}[a-zA-Z0-9_])?", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(st.lists(labels, min_size=1, max_size=6), st.booleans())
def test_spellings_of_one_name_normalize_alike(parts: list[str], dot: bool) -> None:
    name = ".".join(parts)
    spelled = name.upper() + ("." if dot else "")
    assert normalize_hostname(spelled) == normalize_hostname(name) == name.lower()
    assert check_hostname(spelled) == name.lower()


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "a..b",
        ".a.b",
        "a b.com",
        "a/b.com",
        "a:b",
        "::1",
        "-a.example.com",
        "a-.example.com",
        "a\x00.com",
        "a" * 64 + ".com",
        ".".join(["a"] * 128),  # 255 characters
        "*.example.com",  # a wildcard is a pattern, not a name
        "a.*.example.com",
    ],
)
def test_check_refuses(name: str) -> None:
    with pytest.raises(InvalidHostname):
        check_hostname(name)


def test_check_limits_are_rfc_1035() -> None:
    longest_label = "a" * 63 + ".com"
    assert check_hostname(longest_label) == longest_label
    longest = ".".join(["a" * 49] * 5) + ".abc"  # 5 * 50 + 3 = 253
    assert len(longest) == 253
    assert check_hostname(longest + ".") == longest
    with pytest.raises(InvalidHostname):
        check_hostname("a" + longest)


def test_check_wildcard_only_leading() -> None:
    assert check_hostname("*.Example.com", wildcard=True) == "*.example.com"
    for bad in ("*", "a.*.example.com", "*a.example.com", "**.example.com"):
        with pytest.raises(InvalidHostname):
            check_hostname(bad, wildcard=True)


def test_check_refuses_a_huge_name_at_once() -> None:
    # The visitor's 64 KB Host of one-letter labels: refused by its length, unread.
    with pytest.raises(InvalidHostname, match="longer than 253"):
        check_hostname(".".join(["a"] * 32_000))


def test_is_within() -> None:
    assert is_within("example.com", "example.com")
    assert is_within("a.b.example.com", "example.com")
    assert not is_within("badexample.com", "example.com")
    assert not is_within("example.com", "a.example.com")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("example.com:8080", ("example.com", "8080")),
        ("example.com:", ("example.com", "")),
        ("[::1]:80", ("::1", "80")),
        (":80", ("", "80")),
        ("[fe80::1%eth0]:80", ("fe80::1%eth0", "80")),
    ],
)
def test_split_host_port(address: str, expected: tuple[str, str]) -> None:
    assert split_host_port(address) == expected


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("example.com", "missing port in address"),
        ("", "missing port in address"),
        ("::1", "too many colons in address"),
        ("a:b:c", "too many colons in address"),
        ("[::1]", "missing port in address"),
        ("[::1", "missing ']' in address"),
        ("[::1]x:80", "missing port in address"),
        ("[::1]:80:90", "too many colons in address"),
        ("a[b:80", "unexpected '[' in address"),
        ("a]b:80", "unexpected ']' in address"),
    ],
)
def test_split_host_port_refuses_as_go(address: str, reason: str) -> None:
    with pytest.raises(AddressError) as info:
        split_host_port(address)
    assert str(info.value) == f"address {address}: {reason}"


@pytest.mark.parametrize(
    ("authority", "host"),
    [
        ("app.example.com", "app.example.com"),
        ("app.example.com:8443", "app.example.com"),
        ("[::1]:8080", "::1"),
        ("[::1]", "::1"),
        ("a:b:c", "a:b:c"),
        ("", ""),
    ],
)
def test_host_of_authority(authority: str, host: str) -> None:
    assert host_of_authority(authority) == host


def test_split_address() -> None:
    assert split_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert split_address(":7844", default_host="0.0.0.0") == ("0.0.0.0", 7844)
    assert split_address("[::]:443") == ("::", 443)
    for bad in ("host", "host:", "host:x", "host:65536", "host:-1", "host:٣"):
        with pytest.raises(AddressError):
            split_address(bad)


@given(st.sampled_from(["example.com", "127.0.0.1", "::1", ""]), st.integers(0, 65535))
def test_join_and_split_round_trip(host: str, port: int) -> None:
    assert split_address(join_host_port(host, port)) == (host, port)


@pytest.mark.parametrize(
    ("authority", "normal"),
    [
        ("app.example.com", "app.example.com"),
        ("APP.Example.COM.", "app.example.com"),
        ("App.Example.Com.:8080", "app.example.com:8080"),
        ("app.example.com:", "app.example.com:"),
        ("[::1]:443", "[::1]:443"),
        ("[::1]", "[::1]"),
    ],
)
def test_normalize_authority(authority: str, normal: str) -> None:
    assert normalize_authority(authority) == normal


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
@example("\ufe13")  # normalises to ":" (found by Hypothesis)
def test_normalize_authority_keeps_the_host_it_routes(authority: str) -> None:
    normal = normalize_authority(authority)
    assert normalize_hostname(host_of_authority(normal)) == normalize_hostname(
        host_of_authority(authority)
    )
