"""``adit update``, ``adit tunnel route lb`` and the pure parts of ``tunnel diag``."""

from __future__ import annotations

import datetime

import pytest

from adit.cli.diag import edge_addresses, redact, zip_name
from adit.cli.main import main
from adit.cli.run import diag_flags


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main([*args])
        code = 0
    except SystemExit as exited:
        code = int(exited.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_update_names_each_package_manager_and_exits_0(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = _run(["update"], capsys)
    assert code == 0
    assert "sudo apt-get install --only-upgrade adit" in out
    assert "sudo dnf upgrade adit" in out
    assert "sudo pacman -Syu adit" in out


def test_update_accepts_cloudflared_flags(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["update", "--beta", "--force", "--staging", "--version", "2026.1.0"]
    code, out, _ = _run(args, capsys)
    assert code == 0
    assert "adit=2026.1.0" in out
    assert "sudo dnf install adit-2026.1.0" in out


def test_route_lb_says_what_adit_does_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["tunnel", "route", "lb", "web", "lb.example.com", "pool-1"], capsys)
    assert code == 1
    assert "lb.example.com was not routed" in err
    assert "adit tunnel route dns web lb.example.com" in err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["web", "lb.example.com"], 255, 'This command expects the format "adit tunnel route lb'),
        (["web", "not a host", "p"], 1, "not a host is not a valid load balancer name"),
        (["web", "lb.example.com", "p/1"], 1, "p/1 is not a valid pool name"),
    ],
)
def test_route_lb_checks_arguments_as_cloudflared(
    args: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    got, _, err = _run(["tunnel", "route", "lb", *args], capsys)
    assert (got, message in err) == (code, True), err


def test_diag_flags_mask_secrets_and_keep_the_rest() -> None:
    flags = diag_flags(
        {
            "token": "eyJhIjoi",
            "credentials-contents": '{"TunnelSecret": "x"}',
            "api-token": "abc",
            "client-secret": "abc",
            "token-file": "/etc/adit/token",
            "edge": ["127.0.0.1:1", "127.0.0.1:2"],
            "no-autoupdate": True,
            "pidfile": None,
            "ha-connections": 2,
        }
    )
    assert flags == {
        "token": "*****",
        "credentials-contents": "*****",
        "api-token": "*****",
        "client-secret": "*****",
        "token-file": "/etc/adit/token",
        "edge": "127.0.0.1:1, 127.0.0.1:2",
        "no-autoupdate": "true",
        "ha-connections": "2",
    }


def test_zip_name_is_cloudflared_rfc3339_without_colons() -> None:
    utc = datetime.datetime(2026, 12, 7, 5, 1, 2, tzinfo=datetime.UTC)
    assert zip_name(utc) == "adit-diag-2026-12-07T05-01-02Z.zip"
    plus_one = utc.astimezone(datetime.timezone(datetime.timedelta(hours=1)))
    assert zip_name(plus_one) == "adit-diag-2026-12-07T06-01-02+01-00.zip"


def test_edge_addresses_from_adit_and_cloudflared_states() -> None:
    adit = {"edgeAddresses": ["10.0.0.1:7844"], "connections": [{"edge": "[::1]:9"}]}
    assert edge_addresses(adit, {"edge": "x:1"}) == ["10.0.0.1:7844", "[::1]:9"]
    cloudflared = {"connections": [{"edgeAddress": "198.41.200.13"}, {"edgeAddress": "::1"}]}
    assert edge_addresses(cloudflared, {"edge": "[127.0.0.1:4 127.0.0.2:5]"}) == [
        "127.0.0.1:4",
        "127.0.0.2:5",
    ]
    assert edge_addresses(cloudflared, None) == ["198.41.200.13:7844", "[::1]:7844"]


def test_redact_masks_secret_named_keys_at_any_depth() -> None:
    body = {
        "config": {"ingress": [{"service": "http://x", "originRequest": {"access": {
            "teamName": "t", "clientSecret": "s3"}}}]},
        "token": "eyJ", "token-file": "/etc/adit/token", "TunnelSecret": "c2Vj",
        "password": "", "version": 3,
    }  # fmt: skip
    assert redact(body) == {
        "config": {"ingress": [{"service": "http://x", "originRequest": {"access": {
            "teamName": "t", "clientSecret": "*****"}}}]},
        "token": "*****", "token-file": "/etc/adit/token", "TunnelSecret": "*****",
        "password": "", "version": 3,
    }  # fmt: skip


def test_ready_and_diag_look_where_a_connector_listens_by_default() -> None:
    from adit.cli.metrics_client import KNOWN_METRICS_ADDRESSES
    from adit.metrics_listener import DEFAULT_METRICS_PORTS

    assert tuple(f"localhost:{p}" for p in DEFAULT_METRICS_PORTS) == KNOWN_METRICS_ADDRESSES
