"""One request target for the ingress and the origin (issue 13 item 4).

A path rule sends ``/other`` to its own origin. Every other spelling of ``/other`` (an empty
segment, dot segments, a percent-encoded unreserved letter, the absolute form) must reach that
same rule, and its origin must receive the one normal spelling, so what the ingress matched
and what the origin serves are the same path. Targets that name another host or are not a
path at all get a 400 and reach no origin. Real edge, real connector, raw-socket origins.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adversary import (
    CLOSE_RESPONSE,
    CLOUDFLARED,
    INSIDE_NETNS,
    RawOrigin,
    Tenant,
    canned,
    connect,
    exchange,
    probe,
    raw_origin,
    read_until_closed,
    rerun_in_private_netns,
    start_cloudflared,
    start_tenant,
    status_of,
)
from harness import Account, Edge, Processes, create_tunnel, write_config

pytestmark = pytest.mark.process

HOST = "app.example.test"


@pytest.fixture
def other() -> Iterator[RawOrigin]:
    """The origin of the ``^/other`` rule."""
    with raw_origin(canned(CLOSE_RESPONSE)) as origin:
        yield origin


@pytest.fixture
def main() -> Iterator[RawOrigin]:
    """The origin of the hostname's other paths."""
    with raw_origin(canned(CLOSE_RESPONSE)) as origin:
        yield origin


def _rules(other: RawOrigin, main: RawOrigin) -> list[dict[str, object]]:
    return [
        {"path": "^/other$", "service": other.url},
        {"path": "^/café$", "service": other.url},
        {"service": main.url},
    ]


@pytest.fixture
def site(processes: Processes, edge: Edge, other: RawOrigin, main: RawOrigin) -> Tenant:
    return start_tenant(processes, edge, "acme", HOST, main.url, rules=_rules(other, main))


def _get(edge: Edge, target: str, method: str = "GET", host: str = HOST) -> int:
    head = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    return status_of(exchange(edge.http, head.encode("latin-1")))


def _outcome(status: int, other: RawOrigin, main: RawOrigin, before: tuple[int, int]) -> str:
    """The status, which origin got the one new request, and its request line, as one line."""
    got_other = other.parsed[before[0] :]
    got_main = main.parsed[before[1] :]
    if got_other and not got_main:
        return f"{status} other {got_other[0].line.decode('latin-1')}"
    if got_main and not got_other:
        return f"{status} main {got_main[0].line.decode('latin-1')}"
    return f"{status} {'nowhere' if not (got_other or got_main) else 'both'}"


def _counts(other: RawOrigin, main: RawOrigin) -> tuple[int, int]:
    return len(other.parsed), len(main.parsed)


@pytest.mark.parametrize(
    "target",
    [
        "/other",
        "//other",
        "/./other",
        "/x/../other",
        "/x/%2e%2E/other",
        "/%6fther",
        "/%6F%74her",
        f"http://{HOST}/other",
        f"HTTP://{HOST.upper()}/other",
        "/x\\..\\other",
    ],
)
def test_every_spelling_of_a_path_reaches_its_rule(
    edge: Edge, site: Tenant, other: RawOrigin, main: RawOrigin, target: str
) -> None:
    before = _counts(other, main)
    # An origin records a request before it answers: after the status, the record is whole.
    status = _get(edge, target)
    assert _outcome(status, other, main, before) == "200 other GET /other HTTP/1.1"


def test_the_ingress_matches_the_decoded_path(
    edge: Edge, site: Tenant, other: RawOrigin, main: RawOrigin
) -> None:
    """``^/café$`` matches ``/caf%C3%A9`` (cloudflared matches Go's decoded ``URL.Path``);
    the origin gets the encoded form, with upper-case hex (RFC 3986 §6.2.2.1)."""
    before = _counts(other, main)
    status = _get(edge, "/caf%c3%a9")
    assert _outcome(status, other, main, before) == "200 other GET /caf%C3%A9 HTTP/1.1"


def test_reserved_characters_stay_encoded(
    edge: Edge, site: Tenant, other: RawOrigin, main: RawOrigin
) -> None:
    """``%2F`` is data, not a separator: it is kept (upper-cased), and the query is as sent."""
    before = _counts(other, main)
    status = _get(edge, "/a%2fb/%7Euser?q=%2e%2E&x=/../")
    expected = "200 main GET /a%2Fb/~user?q=%2e%2E&x=/../ HTTP/1.1"
    assert _outcome(status, other, main, before) == expected


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "http://internal.local/"),  # another vhost than Host: the authority would win
        ("GET", f"http://{HOST}:8080/other"),  # another port than Host's
        ("GET", f"http://user@{HOST}/other"),  # userinfo
        ("GET", f"ftp://{HOST}/other"),
        ("CONNECT", f"{HOST}:443"),
        ("OPTIONS", "*"),
        ("GET", "/other#fragment"),
        ("GET", "/bad%zzescape"),
        ("GET", "/x/..%2Fother"),  # a dot segment once %2F is decoded: traversal at the origin
        ("GET", "/x%2F%2Fother"),  # an empty segment once decoded
    ],
)
def test_targets_that_are_not_one_path_of_this_host_get_400(
    edge: Edge, site: Tenant, other: RawOrigin, main: RawOrigin, method: str, target: str
) -> None:
    before = _counts(other, main)
    status = _get(edge, target, method)
    assert _outcome(status, other, main, before) == "400 nowhere"


def test_refused_targets_leave_nothing_behind(
    edge: Edge, site: Tenant, other: RawOrigin, main: RawOrigin
) -> None:
    """Hundreds of refused targets, some with bytes after the head (a CONNECT tunnel's, a
    body, a pipelined request): each gets its 400 and its connection closed by the edge; no
    socket is left half-closed and no descriptor kept."""
    edge_probe = probe(edge.proc)
    assert _get(edge, "/warm") == 200
    fds = edge_probe.fds()
    heads = [
        f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n\x16\x03\x01junk",
        f"GET http://internal.local/ HTTP/1.1\r\nHost: {HOST}\r\n\r\nGET / HTTP/1.1\r\n",
        f"POST /x/..%2Fother HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\n\r\nhello",
        f"OPTIONS * HTTP/1.1\r\nHost: {HOST}\r\n\r\n",
    ]
    before = _counts(other, main)
    for round_ in range(60):
        for head in heads:
            with connect(edge.http) as sock:
                sock.sendall(head.encode("latin-1"))
                if round_ % 2:
                    sock.close()  # a visitor that does not wait for the answer
                    continue
                assert read_until_closed(sock).startswith(b"HTTP/1.1 400 "), head
    assert _counts(other, main) == before
    edge_probe.wait_until(lambda p: p.close_wait() == 0, what="no CLOSE_WAIT socket")
    edge_probe.wait_until(lambda p: p.fds() <= fds + 2, what="descriptors back to the start")


@pytest.mark.skipif(not CLOUDFLARED, reason="set ADIT_CLOUDFLARED to a cloudflared binary")
def test_cloudflared_in_a_private_namespace() -> None:
    rerun_in_private_netns(f"{Path(__file__)}::test_cloudflared_matches_the_path_it_forwards")


@pytest.mark.skipif(not INSIDE_NETNS, reason="runs inside the namespace made by the test above")
def test_cloudflared_matches_the_path_it_forwards(
    processes: Processes,
    edge: Edge,
    account: Account,
    other: RawOrigin,
    main: RawOrigin,
    tmp_path: Path,
) -> None:
    """The unmodified cloudflared, given the normal form, matches the rule that form means and
    sends the origin that same path (Go re-serialises the request line from ``URL``)."""
    tunnel = create_tunnel(account, "cfd", HOST)
    start_cloudflared(
        processes, tunnel, write_config(tmp_path / "c.yml", HOST, _rules(other, main)), edge
    )
    cases = {
        "//other": "200 other GET /other HTTP/1.1",
        "/x/../other": "200 other GET /other HTTP/1.1",
        "/%6fther": "200 other GET /other HTTP/1.1",
        f"http://{HOST}/other": "200 other GET /other HTTP/1.1",
        "/caf%c3%a9": "200 other GET /caf%C3%A9 HTTP/1.1",
        "/a%2fb?x=/../": "200 main GET /a%2Fb?x=/../ HTTP/1.1",
        "/x/..%2Fother": "400 nowhere",
    }
    seen = {}
    for target in cases:
        before = _counts(other, main)
        seen[target] = _outcome(_get(edge, target), other, main, before)
    assert seen == cases
