"""``adit tunnel run`` failures before any worker starts: messages and exit codes (§1.10)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from adit.cli.main import main
from adit.credentials import TunnelCredentials, encode_tunnel_token
from adit.supervisor import launch
from adit.supervisor.settings import SupervisorSettings

TUNNEL_ID = "6ff42ae2-765d-4adf-8112-31c55c1551ef"
CATCH_ALL = "ingress:\n  - service: http_status:404\n"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # No config or credentials from the real home; logging handlers restored afterwards.
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in (
        "TUNNEL_TOKEN",
        "TUNNEL_CRED_FILE",
        "TUNNEL_CRED_CONTENTS",
        "TUNNEL_EDGE",
        "TUNNEL_TRANSPORT_PROTOCOL",
        "TUNNEL_MAX_ACTIVE_FLOWS",
    ):
        monkeypatch.delenv(name, raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        main(["tunnel", "run", *args])
    code = exited.value.code
    return int(code) if isinstance(code, int) else 1, capsys.readouterr().err


def _token(**extra: object) -> str:
    creds = TunnelCredentials("acct", b"s" * 32, uuid.UUID(TUNNEL_ID), **extra)  # type: ignore[arg-type]
    return encode_tunnel_token(creds)


def test_no_tunnel_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run([], capsys)
    assert code == 255
    assert '"adit tunnel run" requires the ID or name of the tunnel' in err
    assert "See 'adit tunnel run --help'." in err


def test_two_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["a", "b"], capsys)
    assert code == 255
    assert '"adit tunnel run" accepts only one argument' in err


def test_bad_token(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["--token", "not-a-token"], capsys)
    assert (code, "Provided Tunnel token is not valid." in err) == (255, True)


def test_unreadable_token_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["--token-file", "/nonexistent"], capsys)
    assert code == 255
    assert "Failed to read token file: open /nonexistent: no such file or directory" in err


def test_missing_credentials_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["--credentials-file", "/nonexistent.json", TUNNEL_ID], capsys)
    assert code == 1
    assert "Tunnel credentials file '/nonexistent.json' doesn't exist or is not a file" in err


def test_malformed_credentials_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    code, err = _run(["--cred-file", str(bad), TUNNEL_ID], capsys)
    assert code == 1
    assert "Invalid JSON when parsing tunnel credentials file" in err


def test_no_credentials_found(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run([TUNNEL_ID], capsys)
    assert (code, err.strip().endswith("tunnel credentials file not found")) == (1, True)


def test_grace_period_cap(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["--token", _token(), "--grace-period", "4m"], capsys)
    assert (code, "grace-period must be equal or less than 3m0s" in err) == (1, True)


def test_post_quantum_over_http2_is_refused_with_the_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, err = _run(["--token", _token(), "--protocol", "http2", "--post-quantum"], capsys)
    assert code == 1 and "--post-quantum needs the X25519MLKEM768 key exchange" in err


def test_post_quantum_makes_auto_quic_only(started: list[SupervisorSettings]) -> None:
    settings = _settings(started, "--post-quantum")
    assert (settings.protocol, settings.post_quantum) == ("quic", True)


def test_unknown_protocol(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["--token", _token(), "--protocol", "h3"], capsys)
    assert code == 1 and "unknown protocol h3, Available protocols:" in err


def test_protocols_are_compared_as_given(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["--token", _token(), "--protocol", "HTTP2"], capsys)
    assert code == 1 and "unknown protocol HTTP2, Available protocols:" in err


# -- what reaches the supervisor ---------------------------------------------------------------


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[SupervisorSettings]:
    """The settings ``tunnel run`` starts its supervisor with (none is started)."""
    seen: list[SupervisorSettings] = []

    class NoSupervisor:
        failure = None

        def __init__(self, settings: SupervisorSettings, reload: object) -> None:
            seen.append(settings)

        def run(self) -> int:
            return 0

    monkeypatch.setattr(launch, "Supervisor", NoSupervisor)
    return seen


def _settings(started: list[SupervisorSettings], *args: str) -> SupervisorSettings:
    main(["tunnel", "run", "--token", _token(), "--edge", "127.0.0.1:7844", *args])
    return started[-1]


def test_h2mux_is_http2_with_cloudflareds_warning(
    started: list[SupervisorSettings], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _settings(started, "--protocol", "h2mux").protocol == "http2"
    assert "h2mux is no longer a supported protocol: upgrading edge connection to http2." in (
        capsys.readouterr().err
    )


def test_auto_starts_with_quic(started: list[SupervisorSettings]) -> None:
    settings = _settings(started)
    assert (settings.protocol, settings.initial_protocol) == ("auto", "quic")
    assert settings.max_edge_addr_retries == 8
    assert _settings(started, "-p", "quic").protocol == "quic"
    assert _settings(started, "--protocol", "http2").protocol == "http2"


def test_protocol_flag_beats_env_beats_config_file(
    started: list[SupervisorSettings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.yml"
    config.write_text(f"protocol: http2\n{CATCH_ALL}")
    assert _settings(started, "--config", str(config)).protocol == "http2"
    monkeypatch.setenv("TUNNEL_TRANSPORT_PROTOCOL", "quic")
    assert _settings(started, "--config", str(config)).protocol == "quic"
    assert _settings(started, "--config", str(config), "-p", "auto").protocol == "auto"


def test_max_edge_addr_retries_from_flag_or_file_as_a_uint8(
    started: list[SupervisorSettings], tmp_path: Path
) -> None:
    assert _settings(started, "--max-edge-addr-retries", "3").max_edge_addr_retries == 3
    config = tmp_path / "config.yml"
    config.write_text(f"max-edge-addr-retries: 5\n{CATCH_ALL}")
    assert _settings(started, "--config", str(config)).max_edge_addr_retries == 5
    # cloudflared keeps it in a uint8.
    assert _settings(started, "--max-edge-addr-retries", "257").max_edge_addr_retries == 1


def test_bad_tag(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["--token", _token(), "--tag", "bad tag"], capsys)
    assert code == 1 and "Tag parse failure: Cannot parse tag value bad tag" in err


def test_no_edge(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["--token", _token()], capsys)
    assert code == 1 and "No edge address" in err


def test_invalid_ingress_fails_before_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yml"
    config.write_text("ingress:\n  - hostname: a.example.com\n    service: http://localhost:1\n")
    code, err = _run(
        ["--config", str(config), "--token", _token(), "--edge", "127.0.0.1:7844"], capsys
    )
    assert code == 1
    assert "Couldn't start tunnel" in err
    assert "The last ingress rule must match all URLs" in err


def test_a_quick_tunnel_is_quic_unless_the_protocol_was_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from adit.cli.quick import quick_protocol_args

    assert quick_protocol_args({}) == ["--protocol", "quic"]
    assert quick_protocol_args({"TUNNEL_TRANSPORT_PROTOCOL": "http2"}) == []


def test_max_active_flows_from_flag_env_or_warp_routing(
    started: list[SupervisorSettings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _settings(started).max_active_flows == 0  # cloudflared's default: no limit
    config = tmp_path / "config.yml"
    config.write_text(f"warp-routing:\n  maxActiveFlows: 7\n{CATCH_ALL}")
    assert _settings(started, "--config", str(config)).max_active_flows == 7
    # The flag overrides the configured value (orchestration/orchestrator.go).
    assert (
        _settings(started, "--config", str(config), "--max-active-flows", "2").max_active_flows == 2
    )
    monkeypatch.setenv("TUNNEL_MAX_ACTIVE_FLOWS", "3")
    assert _settings(started).max_active_flows == 3


def test_a_negative_max_active_flows_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["--token", _token(), "--max-active-flows", "-1"], capsys)
    assert code != 0 and "--max-active-flows" in err
