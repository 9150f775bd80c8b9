"""cloudflared command lines through adit's real click tree into the supervisor's settings.

Each case of :mod:`corpus_cloudflared` runs ``adit.cli.main.main`` as the console script
does, with the supervisor replaced by one that only records its settings (nothing is
started); the settings are compared field by field with cloudflared's values, and stderr
with the informational lines of the flags adit does not act on.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adit.cli.main import main
from adit.cli.tunnel_flags import TUNNEL_FLAGS
from adit.credentials import TunnelCredentials, encode_tunnel_token
from adit.credentials.tunnel_credentials import credentials_to_json
from adit.supervisor import launch
from adit.supervisor.settings import SupervisorSettings
from adversary import CLOUDFLARED, INSIDE_NETNS, rerun_in_private_netns
from quic_pki import make_pki
from unit.cli.corpus_cloudflared import (
    ACTING,
    ADIT_EXTENSIONS,
    CATCH_ALL,
    CREDENTIALS,
    ELSEWHERE,
    GO_SPELLINGS,
    PRECEDENCE,
    REAL_WORLD,
    TOKEN_EDGES,
    TUNNEL_ID,
    Case,
    every_flag_cases,
)

_ENV_NAMES = {env for flag in TUNNEL_FLAGS for env in flag.env}
_NOTED = {flag.name: f"--{flag.name}: {flag.note}" for flag in TUNNEL_FLAGS if flag.note}


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in _ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[SupervisorSettings]:
    seen: list[SupervisorSettings] = []

    class NoSupervisor:
        failure = None

        def __init__(self, settings: SupervisorSettings, reload: object) -> None:
            seen.append(settings)

        def run(self) -> int:
            return 0

    monkeypatch.setattr(launch, "Supervisor", NoSupervisor)
    return seen


class Files:
    """The placeholders' values: token, credentials, cert.pem directory, CA, scratch."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        # Credentials written by adit tunnel create carry the edge's addresses.
        creds = TunnelCredentials("acct", b"s" * 32, uuid.UUID(TUNNEL_ID), edge=TOKEN_EDGES)
        self.token = encode_tunnel_token(creds)
        self.cred = root / "creds.json"
        self.cred.write_text(credentials_to_json(creds))
        self.certdir = root / "certdir"
        self.certdir.mkdir()
        (self.certdir / "cert.pem").write_text("")
        (self.certdir / f"{TUNNEL_ID}.json").write_text(credentials_to_json(creds))
        self.ca = root / "ca.pem"
        self.ca.write_bytes(make_pki().ca_pem)
        self.token_file = root / "token"
        self.token_file.write_text(self.token + "\n")
        self.tmp = root / "scratch"
        self.tmp.mkdir()
        self.config = root / "config.yml"
        self.values = {
            "{TOKEN}": self.token,
            "{TOKEN_FILE}": str(self.token_file),
            "{TUNNEL_ID}": TUNNEL_ID,
            "{CRED}": str(self.cred),
            "{CRED_TEXT}": credentials_to_json(creds),
            "{CERTDIR}": str(self.certdir),
            "{CA}": str(self.ca),
            "{CA_TEXT}": self.ca.read_text(),
            "{TMP}": str(self.tmp),
            "{CONFIG}": str(self.config),
        }

    def fill(self, value: Any) -> Any:
        if isinstance(value, str):
            for key, text in self.values.items():
                value = value.replace(key, text)
            return value
        if isinstance(value, tuple):
            return tuple(self.fill(v) for v in value)
        if isinstance(value, dict):
            return {k: self.fill(v) for k, v in value.items()}
        return value


def _field(settings: SupervisorSettings, dotted: str) -> Any:
    value: Any = settings
    for part in dotted.split("."):
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    if dotted == "edges":
        return tuple(f"{e.host}:{e.port}" for e in value)
    if dotted == "ingress.rules":
        return len(value)
    return value


def run_case(
    case: Case,
    tmp_path: Path,
    started: list[SupervisorSettings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> tuple[SupervisorSettings, str]:
    files = Files(tmp_path / "files")
    if case.config is not None:
        files.config.write_text(files.fill(case.config))
    for name, value in case.env.items():
        monkeypatch.setenv(name, files.fill(value))
    main([files.fill(arg) for arg in case.argv])
    err = capsys.readouterr().err
    assert started, err
    settings = started[-1]
    for dotted, expected in case.expect.items():
        assert _field(settings, dotted) == files.fill(expected), (dotted, err)
    for name, line in _NOTED.items():
        assert err.count(line) == (1 if name in case.notes else 0), (name, err)
    return settings, err


def _ids(cases: list[Case] | tuple[Case, ...]) -> list[str]:
    return [re.sub(r"\W+", "-", case.name) for case in cases]


@pytest.mark.parametrize("case", REAL_WORLD, ids=_ids(REAL_WORLD))
def test_real_world_command_lines(
    case: Case,
    tmp_path: Path,
    started: list[SupervisorSettings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_case(case, tmp_path, started, monkeypatch, capsys)


@pytest.mark.parametrize("case", ADIT_EXTENSIONS, ids=_ids(ADIT_EXTENSIONS))
def test_lines_cloudflared_refuses_mean_what_they_say(
    case: Case,
    tmp_path: Path,
    started: list[SupervisorSettings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_case(case, tmp_path, started, monkeypatch, capsys)


@pytest.mark.skipif(not CLOUDFLARED, reason="set ADIT_CLOUDFLARED to a cloudflared binary")
def test_cloudflared_in_a_loopback_only_namespace() -> None:
    """cloudflared looks up Cloudflare's DNS records at start: it runs where nothing leaves
    the machine."""
    rerun_in_private_netns(f"{Path(__file__)}::test_cloudflared_takes_every_real_world_line")


@pytest.mark.skipif(not INSIDE_NETNS, reason="runs inside the namespace of its twin")
@pytest.mark.parametrize("case", REAL_WORLD, ids=_ids(REAL_WORLD))
def test_cloudflared_takes_every_real_world_line(case: Case, tmp_path: Path) -> None:
    """The corpus is cloudflared's: its binary parses each line, finds the credentials and
    stops at the first check after them (an unknown ``--protocol h3`` added to ``run``)."""
    files = Files(tmp_path / "files")
    if case.config is not None:
        files.config.write_text(files.fill(case.config))
    argv = [files.fill(arg) for arg in case.argv]
    at = argv.index("run") + 1
    argv[at:at] = ["--protocol", "h3"]
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    for name in _ENV_NAMES:
        env.pop(name, None)
    env.update({name: files.fill(value) for name, value in case.env.items()})
    result = subprocess.run(
        [CLOUDFLARED, *argv], capture_output=True, text=True, env=env, timeout=30, check=False
    )
    assert "unknown protocol h3" in result.stderr, result.stdout + result.stderr


@pytest.mark.parametrize("case", CREDENTIALS, ids=_ids(CREDENTIALS))
def test_credentials_from_every_level(
    case: Case,
    tmp_path: Path,
    started: list[SupervisorSettings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_case(case, tmp_path, started, monkeypatch, capsys)


@pytest.mark.parametrize("case", GO_SPELLINGS, ids=_ids(GO_SPELLINGS))
def test_go_flag_spellings(
    case: Case,
    tmp_path: Path,
    started: list[SupervisorSettings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_case(case, tmp_path, started, monkeypatch, capsys)


@pytest.mark.parametrize("case", PRECEDENCE, ids=_ids(PRECEDENCE))
def test_precedence_innermost_command_line_then_env_then_file_then_default(
    case: Case,
    tmp_path: Path,
    started: list[SupervisorSettings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_case(case, tmp_path, started, monkeypatch, capsys)


_EVERY = every_flag_cases()


@pytest.mark.parametrize("case", _EVERY, ids=_ids(_EVERY))
def test_every_flag_in_every_position(
    case: Case,
    tmp_path: Path,
    started: list[SupervisorSettings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_case(case, tmp_path, started, monkeypatch, capsys)


def test_the_corpus_covers_every_flag_of_cloudflared() -> None:
    """Every flag is either acted on (a field in ACTING, or a case above) or noted."""
    names = {flag.name for flag in TUNNEL_FLAGS}
    acting = {flag.name for flag in TUNNEL_FLAGS if flag.note is None}
    assert acting == set(ACTING) | ELSEWHERE
    # cloudflared's flags named in CLOUDFLARED_FEATURES.md §1.10 and the source.
    for name in (
        "no-autoupdate",
        "is-autoupdated",
        "proxy-dns-upstream",
        "s3-url-host",
        "quic-stream-level-flow-control-limit",
        "dns-resolver-addrs",
        "icmpv6-src",
        "management-hostname",
        "service-op-ip",
        "trace-output",
        "use-reconnect-token",
    ):
        assert name in names


def test_every_acting_flag_is_read_by_run() -> None:
    """Nothing silently ignored: an acting flag's parameter is read in run.py or tunnel.py."""
    import adit.cli.run as run_module
    import adit.cli.tunnel as tunnel_module

    source = Path(run_module.__file__).read_text() + Path(tunnel_module.__file__).read_text()
    for flag in TUNNEL_FLAGS:
        if flag.note is None:
            assert f'"{flag.param}"' in source, flag.name


def test_an_env_bool_of_cloudflared_spelling(
    tmp_path: Path,
    started: list[SupervisorSettings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    case = Case(
        "pq from env",
        ("tunnel", "run", "--token", "{TOKEN}"),
        {"post_quantum": True, "protocol": "quic"},
        env={"TUNNEL_POST_QUANTUM": "1"},
    )
    run_case(case, tmp_path, started, monkeypatch, capsys)


def test_the_settings_line_names_flags_from_every_level(
    tmp_path: Path,
    started: list[SupervisorSettings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    case = Case("settings", ("--retries", "3", "tunnel", "--loglevel", "warn", "run",
                             "--token", "{TOKEN}"), {"retries": 3})  # fmt: skip
    settings, _err = run_case(case, tmp_path, started, monkeypatch, capsys)
    flags = json.loads(settings.ingress.local_config_json)["__configuration_flags"]
    assert flags["retries"] == "3"
    assert flags["loglevel"] == "warn"
    assert flags["token"] == "*****"


def test_ingress_validate_reads_the_global_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yml"
    config.write_text("ingress:\n  - hostname: a.example\n    service: http://x:1\n")
    with pytest.raises(SystemExit) as exited:
        main(["--config", str(config), "tunnel", "ingress", "validate"])
    out = capsys.readouterr()
    # The last rule must match everything: the error names the file given before tunnel.
    assert exited.value.code == 1
    assert str(config) in out.out + out.err


def test_a_quick_tunnel_hands_every_level_on_to_run() -> None:
    """``adit --loglevel debug tunnel --metrics X --url U`` execs ``tunnel run`` with both
    (cloudflared: the quick tunnel runs with the tunnel command's flags)."""
    import click

    from adit.cli.root import cli
    from adit.cli.tunnel import _QUICK_OWN
    from adit.cli.tunnel_flags import explicit_argv

    argv = ["--loglevel", "error", "--edge-ip-version", "4", "tunnel", "--loglevel", "debug",
            "--metrics", "127.0.0.1:9", "--url", "http://127.0.0.1:1", "--tag", "a=b"]  # fmt: skip
    root = cli.make_context("adit", argv)
    group = cli.get_command(root, "tunnel")
    assert isinstance(group, click.Group)
    rest = [*root._protected_args, *root.args][1:]  # after "tunnel"
    ctx = group.make_context("tunnel", rest, parent=root)
    # In the table's order; the innermost --loglevel; --url is the quick tunnel's own.
    assert explicit_argv(ctx, skip=_QUICK_OWN) == [
        "--metrics", "127.0.0.1:9", "--loglevel", "debug", "--edge-ip-version", "4",
        "--tag", "a=b",
    ]  # fmt: skip


def test_a_misspelt_config_key_is_named(
    tmp_path: Path,
    started: list[SupervisorSettings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    case = Case(
        "typo",
        ("tunnel", "--config", "{CONFIG}", "run", "--token", "{TOKEN}"),
        {"log.level": "info"},
        config="loglevl: debug\nproxy-dns-port: 53\n" + CATCH_ALL,
        notes=("proxy-dns-port",),
    )
    _settings, err = run_case(case, tmp_path, started, monkeypatch, capsys)
    assert "loglevl is not a flag name nor a known key; ignored" in err
    assert "proxy-dns-port is not" not in err


def test_secret_flags_are_masked(
    tmp_path: Path,
    started: list[SupervisorSettings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    case = Case(
        "secrets",
        ("--api-key", "k3y-s3cret", "tunnel", "--secret-id", "id-s3cret", "run", "--token",
         "{TOKEN}"),
        {"tunnel_id": TUNNEL_ID},
        env={"TUNNEL_API_CA_KEY": "ca-s3cret"},
        notes=("api-key", "secret-id", "api-ca-key"),
    )  # fmt: skip
    settings, err = run_case(case, tmp_path, started, monkeypatch, capsys)
    assert "s3cret" not in err
    assert b"s3cret" not in settings.ingress.local_config_json


def test_a_bad_value_of_an_unmodelled_key_names_the_file_and_key(
    tmp_path: Path, started: list[SupervisorSettings], capsys: pytest.CaptureFixture[str]
) -> None:
    files = Files(tmp_path / "files")
    files.config.write_text("worker-timeout: soon\n" + CATCH_ALL)
    with pytest.raises(SystemExit) as exited:
        main(["tunnel", "--config", str(files.config), "run", "--token", files.token])
    assert exited.value.code == 255
    assert f'{files.config}: worker-timeout: time: invalid duration "soon"' in (
        capsys.readouterr().err
    )
    assert not started


def test_an_edge_ip_version_cloudflared_refuses_is_refused(
    tmp_path: Path, started: list[SupervisorSettings], capsys: pytest.CaptureFixture[str]
) -> None:
    files = Files(tmp_path / "files")
    with pytest.raises(SystemExit) as exited:
        main(["tunnel", "--edge-ip-version", "5", "run", "--token", files.token])
    assert exited.value.code == 1
    assert "invalid value for edge-ip-version: 5" in capsys.readouterr().err
    assert not started


def test_service_install_takes_the_global_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cloudflared's documented form: cloudflared --config FILE service install."""
    import adit.cli.service as service_module

    seen: list[str | None] = []
    monkeypatch.setattr(
        service_module, "install_service", lambda host, token, config: seen.append(config)
    )
    main(["--config", "/etc/cloudflared/config.yml", "service", "install"])
    main(["--config", "/a.yml", "service", "install", "--config", "/b.yml"])
    assert seen == ["/etc/cloudflared/config.yml", "/b.yml"]


def test_a_tunnel_flag_before_another_command_is_said_to_do_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    main(["--metrics", "127.0.0.1:1", "--no-autoupdate", "version"])
    err = capsys.readouterr().err
    assert "--metrics before version: a tunnel flag, it has no effect on version" in err
    assert "--no-autoupdate before version" in err
