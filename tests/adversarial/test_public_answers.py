"""Issue 13 items 8 and 10: the visitor gets the origin's answer as it was (a refused WebSocket
upgrade keeps its status), never bytes that break HTTP (a connector's bad header names and
values, a body that does not match its length: a 502 page instead), and nothing of the inside
(the 502 page names the reason class and the Ray ID; the address is in the edge's log)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from adit.protocol.websocket import accept_key
from adversary import (
    CLOUDFLARED,
    INSIDE_NETNS,
    Answer,
    RawOrigin,
    ScriptedConnector,
    Tenant,
    canned,
    connect,
    exchange,
    head_complete,
    raw_origin,
    rerun_in_private_netns,
    start_cloudflared,
    start_tenant,
    status_of,
)
from harness import Account, Edge, Processes, Tunnel, create_tunnel, write_config
from ports import free_port

pytestmark = pytest.mark.process

KEY = base64.b64encode(b"0123456789abcdef").decode()


def _upgrade(host: str) -> bytes:
    return (
        f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


@pytest.mark.parametrize("status", [200, 403])
def test_a_refused_websocket_upgrade_keeps_the_origin_status(
    edge: Edge, tenant: Tenant, recorder: RawOrigin, status: int
) -> None:
    recorder.responder = canned(
        f"HTTP/1.1 {status} Nope\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"
        "nope!".encode()
    )
    reply = exchange(edge.http, _upgrade(tenant.hostname), timeout=10)
    assert status_of(reply) == status, reply[:300]
    assert reply.endswith(b"nope!")


def _accepting(received: bytes) -> bytes:
    if not head_complete(received):
        return b""
    key = re.search(rb"(?i)sec-websocket-key: *([^\r]+)", received)
    assert key is not None
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(key.group(1).decode())}\r\n\r\n"
    ).encode()


def test_an_accepted_websocket_upgrade_still_switches(
    edge: Edge, tenant: Tenant, recorder: RawOrigin
) -> None:
    recorder.responder = _accepting
    with connect(edge.http) as sock:
        sock.sendall(_upgrade(tenant.hostname))
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(4096)
            assert data, head
            head += data
    assert status_of(head) == 101
    assert f"Sec-WebSocket-Accept: {accept_key(KEY)}".lower().encode() in head.lower()


#: Response headers a broken or hostile connector may send, and a marker that must never
#: reach the visitor.
BAD_HEADERS = {
    "NUL in a value": [("X-A", "a\x00INJECTED")],
    "CR in a value": [("X-A", "a\rINJECTED: 1")],
    "LF in a value": [("X-A", "a\nINJECTED: 1")],
    "CRLF in a value": [("X-A", "a\r\nINJECTED: 1")],
    "empty name": [("", "INJECTED")],
    "space after a name": [("Transfer-Encoding ", "INJECTED")],
    "space in a name": [("X INJECTED", "1")],
    "colon in a name": [("X:INJECTED", "1")],
    "LF in a name": [("X\nINJECTED", "1")],
    "non-ASCII name": [("X\xe9INJECTED", "1")],
}


@pytest.fixture
def scripted(edge: Edge, account: Account) -> Tunnel:
    """A tunnel routed at ``scripted.example.test`` with no connector yet."""
    return create_tunnel(account, "scripted", "scripted.example.test")


def _get(edge: Edge, host: str, path: str) -> bytes:
    return exchange(
        edge.http,
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode(),
        timeout=10,
    )


def test_bad_response_headers_from_a_connector_give_502(edge: Edge, scripted: Tunnel) -> None:
    def script(path: str) -> Answer:
        return Answer(200, BAD_HEADERS[path.strip("/").replace("_", " ")], b"body")

    with ScriptedConnector(edge, scripted, script):
        for name in BAD_HEADERS:
            reply = _get(edge, scripted.hostname, "/" + name.replace(" ", "_"))
            assert status_of(reply) == 502, (name, reply[:300])
            assert b"INJECTED" not in reply, (name, reply)


@pytest.mark.parametrize(
    "answer",
    [
        Answer(200, [("Content-Length", "10")], b"short"),
        Answer(200, [("Content-Length", "2")], b"too long"),
        Answer(200, [("Content-Length", "abc")], b"abc"),
        Answer(200, [("Content-Length", "+5")], b"plus5"),
        Answer(200, [("Content-Length", "5"), ("Content-Length", "6")], b"twice"),
        Answer(42, [("Content-Length", "2")], b"ok"),
    ],
    ids=["shorter", "longer", "not a number", "signed", "two lengths", "status 42"],
)
def test_a_response_that_cannot_be_delivered_gets_a_502_page(
    edge: Edge, scripted: Tunnel, answer: Answer
) -> None:
    with ScriptedConnector(edge, scripted, lambda path: answer):
        reply = _get(edge, scripted.hostname, "/")
    assert status_of(reply) == 502, reply[:300]
    assert b"Cf-Ray: " in reply


def _closed_port() -> int:
    return free_port()


def test_the_502_page_names_the_reason_and_the_ray_not_the_inside(
    processes: Processes, edge: Edge
) -> None:
    port = _closed_port()
    tenant = start_tenant(
        processes, edge, "refused", "refused.example.test", f"http://127.0.0.1:{port}"
    )
    reply = _get(edge, tenant.hostname, "/")
    assert status_of(reply) == 502
    page = reply.decode("latin-1")
    assert "refused the connection" in page
    ray = re.search(r"Cf-Ray: (\S+)", page)
    assert ray is not None and ray.group(1) in page.split("\r\n\r\n", 1)[1]
    for inside in ("127.0.0.1", str(port), "dial", "connect:"):
        assert inside not in page.split("\r\n\r\n", 1)[1], inside
    # The operator finds the detail under the same Ray ID.
    log = edge.proc.wait_for_log(re.escape(ray.group(1)) + r".*" + str(port))
    assert "refused" in log


# --- the same with the unmodified cloudflared -------------------------------------------------


@pytest.mark.skipif(not CLOUDFLARED, reason="set ADIT_CLOUDFLARED to a cloudflared binary")
def test_cloudflared_answers_in_a_loopback_only_namespace() -> None:
    rerun_in_private_netns(f"{Path(__file__)}::test_cloudflared_passes_a_refused_upgrade_on")


@pytest.mark.skipif(not INSIDE_NETNS, reason="runs inside the namespace made by the test above")
def test_cloudflared_passes_a_refused_upgrade_on(
    processes: Processes, edge: Edge, account: Account, tmp_path: Path
) -> None:
    host = "cfd.example.test"
    tunnel = create_tunnel(account, "cfd", host)
    with (
        raw_origin(_accepting) as accepting,
        raw_origin(
            canned(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nnope!")
        ) as refusing,
    ):
        config = write_config(
            tmp_path / "config.yml",
            host,
            [
                {"path": "^/ws", "service": accepting.url},
                {"path": "^/refused", "service": refusing.url},
                {"service": f"http://127.0.0.1:{_closed_port()}"},
            ],
        )
        start_cloudflared(processes, tunnel, config, edge)
        refused = exchange(edge.http, _upgrade(host).replace(b"/ws", b"/refused"), timeout=10)
        assert status_of(refused) == 200, refused[:300]
        assert refused.endswith(b"nope!")
        with connect(edge.http) as sock:
            sock.sendall(_upgrade(host))
            head = sock.recv(4096)
        assert status_of(head) == 101, head
        unreachable = _get(edge, host, "/down")
        assert status_of(unreachable) == 502
        assert b"127.0.0.1" not in unreachable.split(b"\r\n\r\n", 1)[1]
