"""Issue 13 item 18: input limits of the API and the store.

A 200,000-deep JSON body raised an uncaught RecursionError; tunnel names (and account names,
token labels) took control characters; an all-zero tunnel secret was accepted.
"""

from __future__ import annotations

import base64
import json
import subprocess

import pytest

from adversary import api_call, probe
from harness import Account, Edge, Processes, run_cli

pytestmark = pytest.mark.process


def _tunnels(account: Account) -> str:
    return f"/client/v4/accounts/{account.tag}/cfd_tunnel"


def test_any_body_gets_an_answer(edge: Edge, account: Account) -> None:
    edge_probe = probe(edge.proc)
    tunnel = json.loads(
        api_call(account, "POST", _tunnels(account), json.dumps({"name": "t"}).encode())[1]
    )["result"]
    fds = edge_probe.fds()
    deep = b"[" * 200_000 + b"]" * 200_000
    # Bodies that are wrong for every endpoint below.
    bodies = [
        deep,
        b'{"name": ' + deep + b"}",
        b'{"name": "x", "extra": ' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}",
        b"\xff\xfe{}",
        b"[]",
        b"null",
        b'{"name": 1e999999, "user_hostname": 1e999999, "deadline_seconds": 1e999999}',
    ]
    paths = [
        ("POST", _tunnels(account)),
        ("PUT", f"/client/v4/zones/{account.tag}/tunnels/{tunnel['id']}/routes"),
        ("POST", f"{_tunnels(account)}/{tunnel['id']}/rotate"),
    ]
    for method, path in paths:
        for body in bodies:
            status, reply = api_call(account, method, path, body)
            assert status == 400, (method, path, body[:40], status, reply[:200])
            assert json.loads(reply)["success"] is False
    assert edge.proc.popen.poll() is None
    assert edge_probe.fds() <= fds + 2
    assert api_call(account, "GET", _tunnels(account))[0] == 200


@pytest.mark.parametrize(
    "name",
    [
        "evil\x1b[2J",
        "a\nb",
        "tab\tname",
        "nul\x00",
        "del\x7f",
        "c1\x85",
        "rtl\u202eexe.txt",
        "lone\ud800",
    ],
)
def test_tunnel_names_have_no_control_characters(account: Account, name: str) -> None:
    body = json.dumps({"name": name}).encode()
    status, reply = api_call(account, "POST", _tunnels(account), body)
    assert status == 400, reply
    if "\x00" not in name and "\ud800" not in name:  # argv cannot carry these
        refused = account.cli("tunnel", "create", name, check=False)
        assert refused.returncode != 0
        assert "control character" in refused.stderr, refused.stderr
    listed = api_call(account, "GET", _tunnels(account))[1]
    assert json.loads(listed)["result"] == []


@pytest.mark.parametrize(
    "secret",
    [bytes(32), b"\xff" * 32, b"ab" * 16, bytes(range(8)) * 4, bytes(64)],
)
def test_trivially_weak_secrets_are_refused(account: Account, secret: bytes) -> None:
    body = json.dumps({"name": "weak", "tunnel_secret": base64.b64encode(secret).decode()})
    status, reply = api_call(account, "POST", _tunnels(account), body.encode())
    assert status == 400, reply
    assert "secret" in json.loads(reply)["errors"][0]["message"]


def _admin(edge: Edge, processes: Processes, *args: str) -> subprocess.CompletedProcess[str]:
    home = processes.tmp / "admin-home"
    home.mkdir(exist_ok=True)
    return run_cli(["edge", *args, "--state-dir", str(edge.state_dir)], home=home, check=False)


def test_admin_names_have_no_control_characters(
    edge: Edge, processes: Processes, account: Account
) -> None:
    for name in ("evil\x1b]0;pwned\x07", "two\nlines", ""):
        refused = _admin(edge, processes, "account", "create", name)
        assert refused.returncode != 0, f"account {name!r} created"
    label = ["--label", "x\x1b[8m"]
    refused = _admin(edge, processes, "token", "create", "--account", account.tag, *label)
    assert refused.returncode != 0
    zone = "a\x1b.example.test"
    refused = _admin(edge, processes, "zone", "add", "--account", account.tag, zone)
    assert refused.returncode != 0
    listed = _admin(edge, processes, "account", "list").stdout
    assert "\x1b" not in listed and "two" not in listed
