"""``adit service install [TOKEN]`` / ``adit service uninstall``: the connector as a systemd unit.

As cloudflared's (reference §6.1), with these differences:

* The distro package's ``adit.service`` (user ``adit``, hardening, ``Type=notify-reload``) is
  used when present; ``install`` only adds a drop-in. Without a package, a complete unit is
  written (``DynamicUser=yes`` in place of the packaged user).
* Secrets never reach the command line, nor the service user's file permissions: a token goes
  to ``/etc/adit/token`` (0600, root) and a credentials file stays where it is (root-only is
  fine); systemd hands either to the service as a credential (``LoadCredential=``), a private
  copy under ``$CREDENTIALS_DIRECTORY`` (``%d``) that only this unit's processes can read.
* Refuses with a clear message when not run as root or when systemd is not running.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click

from adit.cli.state import CommandFailure, UsageFailure

__all__ = [
    "DROPIN_MARKER",
    "Host",
    "InstallPlan",
    "install_service",
    "plan_install",
    "service",
    "uninstall_service",
]

#: First line of every file ``install`` writes; ``uninstall`` removes only files carrying it.
DROPIN_MARKER = "# Written by `adit service install`; `adit service uninstall` removes it."
_UNIT = "adit.service"
_DEFAULT_BINARY = "/usr/bin/adit"
_CONFIG_REQUIRED = (
    "configuration file {path} must contain entries for the tunnel to run and its associated "
    "credentials (tunnel: TUNNEL-UUID, credentials-file: CREDENTIALS-FILE)"
)

Systemctl = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _run_systemctl(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemctl", *args], capture_output=True, text=True, check=False, timeout=300
    )


@dataclass(frozen=True)
class Host:
    """The machine ``install`` acts on: its file-system root, our user id and ``systemctl``.

    Everything is a parameter so that the file layout can be checked under a temporary root.
    """

    root: Path = Path("/")
    euid: int = field(default_factory=os.geteuid)
    systemctl: Systemctl = _run_systemctl

    def path(self, absolute: str) -> Path:
        """``absolute`` under this host's root."""
        return self.root / absolute.lstrip("/")

    @property
    def etc(self) -> Path:
        return self.path("/etc/adit")

    @property
    def config(self) -> Path:
        return self.path("/etc/adit/config.yml")

    @property
    def token(self) -> Path:
        return self.path("/etc/adit/token")

    @property
    def unit(self) -> Path:
        """Where a unit of our own goes when no package ships one."""
        return self.path(f"/etc/systemd/system/{_UNIT}")

    @property
    def dropin(self) -> Path:
        return self.path(f"/etc/systemd/system/{_UNIT}.d/service-install.conf")

    def packaged_unit(self) -> Path | None:
        """The distro package's unit, if one is installed."""
        for directory in ("/usr/lib/systemd/system", "/lib/systemd/system"):
            candidate = self.path(f"{directory}/{_UNIT}")
            if candidate.is_file():
                return candidate
        return None

    def systemd_running(self) -> bool:
        """systemd's own test (``sd_booted``): the directory exists only under systemd."""
        return self.path("/run/systemd/system").is_dir()


@dataclass(frozen=True)
class InstallPlan:
    """What ``install`` writes: files (path, text, mode) and the arguments of ``adit``."""

    files: tuple[tuple[Path, str, int], ...]
    copy_config_from: Path | None


def _require_host(host: Host, action: str) -> None:
    if host.euid != 0:
        raise CommandFailure(
            f"adit service {action} must be run as root: it writes /etc/adit and systemd units "
            f"(try: sudo adit service {action})"
        )
    if not host.systemd_running():
        raise CommandFailure(
            f"adit service {action} needs systemd, and systemd is not running on this host "
            f"({host.path('/run/systemd/system')} does not exist); run `adit tunnel run` "
            "under your init system instead"
        )


def _binary() -> str:
    """The ``adit`` that is running, as an absolute path for ``ExecStart=``."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    found = shutil.which(argv0) if argv0 and os.sep not in argv0 else argv0
    if found and os.path.basename(found) == "adit" and os.path.exists(found):
        return os.path.abspath(found)
    return _DEFAULT_BINARY


def _systemd_version(host: Host) -> int:
    result = host.systemctl(["--version"])
    try:
        return int(result.stdout.split()[1])
    except (IndexError, ValueError):
        return 0


def own_unit(binary: str, systemd_version: int) -> str:
    """A complete unit for hosts without the package: ``DynamicUser=`` instead of ``adit``."""
    if systemd_version >= 253:
        kind = "Type=notify-reload\n"
    else:
        kind = "Type=notify\nExecReload=/bin/kill -HUP $MAINPID\n"
    return (
        f"{DROPIN_MARKER}\n"
        "[Unit]\n"
        "Description=adit tunnel connector\n"
        "After=network-online.target\n"
        "Wants=network-online.target\n"
        "\n"
        "[Service]\n"
        f"{kind}"
        "NotifyAccess=main\n"
        f"ExecStart={binary} tunnel --config /etc/adit/config.yml run\n"
        "TimeoutStartSec=60s\n"
        "TimeoutStopSec=45s\n"
        "Restart=on-failure\n"
        "RestartSec=5s\n"
        "DynamicUser=yes\n"
        "RuntimeDirectory=adit\n"
        "RuntimeDirectoryMode=0700\n"
        "StateDirectory=adit\n"
        "LimitNOFILE=65536\n"
        "NoNewPrivileges=yes\n"
        "CapabilityBoundingSet=\n"
        "ProtectSystem=strict\n"
        "ProtectHome=yes\n"
        "PrivateTmp=yes\n"
        "PrivateDevices=yes\n"
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK\n"
        "SystemCallFilter=@system-service\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def dropin_text(binary: str, credential: tuple[str, Path], flag: str) -> str:
    """The drop-in: a systemd credential and the ``ExecStart=`` that reads it from ``%d``."""
    name, source = credential
    return (
        f"{DROPIN_MARKER}\n"
        "[Service]\n"
        f"LoadCredential={name}:{source}\n"
        "ExecStart=\n"
        f"ExecStart={binary} tunnel --config /etc/adit/config.yml run {flag} %d/{name}\n"
    )


def _config_is_default(path: Path) -> bool:
    """True for a missing file or one with nothing but comments (the packaged default)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return True
    return all(not line.strip() or line.lstrip().startswith("#") for line in text.splitlines())


def plan_install(host: Host, token: str | None, config_path: str | None) -> InstallPlan:
    """Validate the request and decide what to write (no side effects)."""
    binary = _DEFAULT_BINARY if host.packaged_unit() else _binary()
    files: list[tuple[Path, str, int]] = []
    copy_from: Path | None = None
    if token is not None:
        from adit.credentials.errors import CredentialsError
        from adit.credentials.tunnel_token import decode_tunnel_token

        try:
            decode_tunnel_token(token.strip())
        except CredentialsError as exc:
            raise UsageFailure(str(exc)) from None
        files.append((host.token, token.strip() + "\n", 0o600))
        dropin = dropin_text(binary, ("token", Path("/etc/adit/token")), "--token-file")
    else:
        from adit.config.errors import ConfigError
        from adit.config.load import find_config_path, load_config

        source = find_config_path(config_path)
        if source is None:
            raise CommandFailure(
                "Cannot determine default configuration path. No file [config.yml config.yaml] "
                "found; pass a token or --config FILE"
            )
        try:
            loaded = load_config(source)
        except ConfigError as exc:
            raise CommandFailure(str(exc)) from None
        creds = loaded.config.credentials_file
        if loaded.empty or not loaded.config.tunnel or not creds:
            raise CommandFailure(_CONFIG_REQUIRED.format(path=source))
        creds_path = Path(os.path.expanduser(creds)).resolve()
        if not creds_path.is_file():
            raise CommandFailure(f"credentials file {creds_path} does not exist")
        target = host.config
        if source.resolve() != target.resolve():
            if not _config_is_default(target) and target.read_bytes() != source.read_bytes():
                raise CommandFailure(
                    f"possible conflicting configuration in {source} and /etc/adit/config.yml. "
                    "Either remove /etc/adit/config.yml or run "
                    "`adit service install --config /etc/adit/config.yml`"
                )
            copy_from = source
        dropin = dropin_text(binary, ("credentials.json", creds_path), "--credentials-file")
    if host.packaged_unit() is None:
        files.append((host.unit, own_unit(binary, _systemd_version(host)), 0o644))
    files.append((host.dropin, dropin, 0o644))
    return InstallPlan(tuple(files), copy_from)


def _write(path: Path, text: str, mode: int) -> None:
    """Write atomically with ``mode`` from the first byte (a token is never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, text.encode())
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _systemctl(host: Host, *args: str) -> None:
    result = host.systemctl(list(args))
    if result.returncode != 0:
        raise CommandFailure(
            f"systemctl {' '.join(args)} returned with error code {result.returncode} "
            f"due to: {result.stderr.strip()}"
        )


def install_service(host: Host, token: str | None, config_path: str | None) -> None:
    """Install, enable and start ``adit.service``; returns once systemd reports it active."""
    _require_host(host, "install")
    if host.dropin.exists() or (host.unit.exists() and host.packaged_unit() is None):
        raise CommandFailure(
            f"adit service is already installed at {host.dropin}; if you are running an adit "
            "tunnel, you can point it to multiple origins, avoiding the need to run more than "
            "one adit service on the same host. Run `adit service uninstall` first to replace it"
        )
    plan = plan_install(host, token, config_path)
    host.etc.mkdir(mode=0o755, parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        if plan.copy_config_from is not None:
            _write(host.config, plan.copy_config_from.read_text(encoding="utf-8"), 0o644)
        for path, text, mode in plan.files:
            _write(path, text, mode)
            written.append(path)
        _systemctl(host, "daemon-reload")
        _systemctl(host, "enable", _UNIT)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        host.systemctl(["daemon-reload"])
        raise
    # Type=notify: this returns after the first edge registration (READY=1), or fails.
    try:
        _systemctl(host, "start", _UNIT)
    except CommandFailure as exc:
        raise CommandFailure(
            f"{exc.message}\nThe service is installed and enabled but did not start; "
            "see `journalctl -u adit`"
        ) from None
    click.echo("adit service installed successfully", err=True)


def uninstall_service(host: Host) -> None:
    """Stop and disable ``adit.service``; remove the drop-in, our own unit and the token."""
    _require_host(host, "uninstall")
    ours = [p for p in (host.dropin, host.unit) if _written_by_us(p)]
    if not ours and host.packaged_unit() is None:
        raise CommandFailure("adit service is not installed")
    host.systemctl(["disable", "--now", _UNIT])
    for path in ours:
        path.unlink()
    host.token.unlink(missing_ok=True)
    _systemctl(host, "daemon-reload")
    click.echo("adit service uninstalled successfully", err=True)


def _written_by_us(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as handle:
            return handle.readline().rstrip("\n") == DROPIN_MARKER
    except OSError:
        return False


@click.group("service")
def service() -> None:
    """Install the connector as a systemd service."""


@service.command("install")
@click.argument("token", required=False)
@click.option(
    "--config",
    "config_path",
    default=None,
    help="The config.yml to install (default: the first found in the search path).",
)
@click.pass_context
def install_command(ctx: click.Context, token: str | None, config_path: str | None) -> None:
    """Install, enable and start adit.service (with TOKEN: a token-run tunnel)."""
    from adit.config.settings import effective_value

    # cloudflared's documented form is cloudflared --config FILE service install.
    install_service(Host(), token, effective_value(ctx, "config_path", None) or config_path)


@service.command("uninstall")
def uninstall_command() -> None:
    """Stop, disable and remove what adit service install added."""
    uninstall_service(Host())
