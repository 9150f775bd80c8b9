"""`adit service install/uninstall` on a temporary root: files, modes, refusals, systemctl calls.

The host's file system is a tmp directory and ``systemctl`` a recorder (the real one is driven
under a booted systemd by tests/packaging).
"""

from __future__ import annotations

import base64
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from adit.cli.service import DROPIN_MARKER, Host, install_service, uninstall_service
from adit.cli.state import CommandFailure, UsageFailure
from adit.credentials.tunnel_credentials import TunnelCredentials, credentials_to_json
from adit.credentials.tunnel_token import encode_tunnel_token

CREDS = TunnelCredentials(
    account_tag="acme", tunnel_secret=b"s" * 32, tunnel_id=uuid.UUID(int=7), edge=("127.0.0.1:1",)
)
TOKEN = encode_tunnel_token(CREDS)


@dataclass
class Systemctl:
    """Records every call; fails the ones named in ``fail``."""

    version: int = 257
    fail: set[str] = field(default_factory=set)
    calls: list[list[str]] = field(default_factory=list)

    def __call__(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(args))
        if args and args[0] == "--version":
            return subprocess.CompletedProcess(args, 0, f"systemd {self.version} (x)\n+PAM", "")
        if args and args[0] in self.fail:
            return subprocess.CompletedProcess(args, 1, "", f"{args[0]} broke")
        return subprocess.CompletedProcess(args, 0, "", "")


def make_host(tmp_path: Path, *, packaged: bool = True, systemd: bool = True) -> Host:
    if systemd:
        (tmp_path / "run/systemd/system").mkdir(parents=True)
    if packaged:
        unit = tmp_path / "usr/lib/systemd/system/adit.service"
        unit.parent.mkdir(parents=True)
        unit.write_text("[Service]\nType=notify-reload\n")
    return Host(root=tmp_path, euid=0, systemctl=Systemctl())


def recorder(host: Host) -> Systemctl:
    assert isinstance(host.systemctl, Systemctl)
    return host.systemctl


def test_token_install_uses_the_packaged_unit_and_a_credential(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    install_service(host, TOKEN, None)
    token = tmp_path / "etc/adit/token"
    assert token.read_text() == TOKEN + "\n"
    assert token.stat().st_mode & 0o777 == 0o600
    dropin = host.dropin.read_text()
    assert dropin.startswith(DROPIN_MARKER)
    assert "LoadCredential=token:/etc/adit/token" in dropin
    assert "ExecStart=\nExecStart=/usr/bin/adit tunnel --config /etc/adit/config.yml run " in dropin
    assert "--token-file %d/token" in dropin
    assert TOKEN not in dropin
    assert not host.unit.exists()
    assert recorder(host).calls == [
        ["daemon-reload"],
        ["enable", "adit.service"],
        ["start", "adit.service"],
    ]


@pytest.mark.parametrize(
    ("version", "expected"),
    [(257, "Type=notify-reload\n"), (252, "Type=notify\nExecReload=/bin/kill -HUP $MAINPID\n")],
)
def test_without_a_package_a_complete_unit_is_written(
    tmp_path: Path, version: int, expected: str
) -> None:
    host = make_host(tmp_path, packaged=False)
    recorder(host).version = version
    install_service(host, TOKEN, None)
    unit = host.unit.read_text()
    assert unit.startswith(DROPIN_MARKER)
    assert expected in unit
    assert "DynamicUser=yes" in unit and "RuntimeDirectoryMode=0700" in unit
    assert host.dropin.exists()


def test_refuses_when_not_root(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    host = Host(root=host.root, euid=1000, systemctl=host.systemctl)
    with pytest.raises(CommandFailure, match="must be run as root"):
        install_service(host, TOKEN, None)
    with pytest.raises(CommandFailure, match="must be run as root"):
        uninstall_service(host)
    assert not (tmp_path / "etc").exists()
    assert recorder(host).calls == []


def test_refuses_without_systemd(tmp_path: Path) -> None:
    host = make_host(tmp_path, systemd=False)
    with pytest.raises(CommandFailure, match=r"systemd is not running .*run/systemd/system"):
        install_service(host, TOKEN, None)
    assert not (tmp_path / "etc").exists()


def test_invalid_token_is_a_usage_error(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    bad = base64.b64encode(b"hello").decode()
    with pytest.raises(UsageFailure, match="Provided Tunnel token is not valid"):
        install_service(host, bad, None)
    assert not host.token.exists() and not host.dropin.exists()


def test_already_installed(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    install_service(host, TOKEN, None)
    with pytest.raises(CommandFailure, match=r"already installed at .*service-install\.conf"):
        install_service(host, TOKEN, None)


def test_a_failing_enable_rolls_back(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    recorder(host).fail.add("enable")
    with pytest.raises(CommandFailure, match=r"systemctl enable adit\.service returned with error"):
        install_service(host, TOKEN, None)
    assert not host.token.exists() and not host.dropin.exists()


def test_a_failing_start_leaves_it_installed(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    recorder(host).fail.add("start")
    with pytest.raises(CommandFailure, match="installed and enabled but did not start"):
        install_service(host, TOKEN, None)
    assert host.dropin.exists()


def write_config(path: Path, creds: Path | None, tunnel: bool = True) -> Path:
    lines = [f"tunnel: {CREDS.tunnel_id}"] if tunnel else []
    if creds is not None:
        lines.append(f"credentials-file: {creds}")
    lines += ["ingress:", "  - service: http_status:404"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_config_install_copies_the_config_and_loads_the_credentials(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    creds = tmp_path / "home/creds.json"
    creds.parent.mkdir()
    creds.write_text(credentials_to_json(CREDS))
    creds.chmod(0o400)
    config = write_config(tmp_path / "home/config.yml", creds)
    install_service(host, None, str(config))
    assert host.config.read_text() == config.read_text()
    dropin = host.dropin.read_text()
    assert f"LoadCredential=credentials.json:{creds}" in dropin
    assert "--credentials-file %d/credentials.json" in dropin
    assert not host.token.exists()


def test_config_without_tunnel_or_credentials(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    config = write_config(tmp_path / "config.yml", None)
    with pytest.raises(CommandFailure, match="must contain entries for the tunnel to run"):
        install_service(host, None, str(config))


def test_conflicting_config(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    creds = tmp_path / "creds.json"
    creds.write_text(credentials_to_json(CREDS))
    host.config.parent.mkdir(parents=True)
    host.config.write_text("ingress:\n  - service: http_status:503\n")
    config = write_config(tmp_path / "config.yml", creds)
    with pytest.raises(CommandFailure, match="possible conflicting configuration"):
        install_service(host, None, str(config))


def test_the_packaged_default_config_may_be_replaced(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    creds = tmp_path / "creds.json"
    creds.write_text(credentials_to_json(CREDS))
    host.config.parent.mkdir(parents=True)
    host.config.write_text("# only comments\n#tunnel: x\n")
    config = write_config(tmp_path / "config.yml", creds)
    install_service(host, None, str(config))
    assert host.config.read_text() == config.read_text()


def test_uninstall_removes_what_install_wrote(tmp_path: Path) -> None:
    host = make_host(tmp_path, packaged=False)
    install_service(host, TOKEN, None)
    recorder(host).calls.clear()
    uninstall_service(host)
    assert not host.dropin.exists() and not host.unit.exists() and not host.token.exists()
    assert recorder(host).calls == [["disable", "--now", "adit.service"], ["daemon-reload"]]


def test_uninstall_when_nothing_is_installed(tmp_path: Path) -> None:
    host = make_host(tmp_path, packaged=False)
    with pytest.raises(CommandFailure, match="not installed"):
        uninstall_service(host)


def test_the_cli_lists_the_service_commands() -> None:
    out = subprocess.run(
        [str(Path(sys.executable).parent / "adit"), "service", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "install" in out and "uninstall" in out
