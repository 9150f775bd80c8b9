"""A private OpenSSH server on 127.0.0.1 for process tests (and the small helpers it needs)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from harness import Processes
from ports import free_port


def wait_port(port: int, timeout: float = 15.0) -> None:
    """Until something listens on 127.0.0.1:``port`` (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def need(*programs: str) -> None:
    """Skip the test unless every program is installed."""
    for program in programs:
        if shutil.which(program) is None and not Path(program).exists():
            pytest.skip(f"{program} is not installed (Debian package missing)")


class Sshd:
    """A private sshd on 127.0.0.1 and the client options to log in to it."""

    def __init__(
        self,
        tmp: Path,
        processes: Processes,
        log_level: str | None = None,
        extra_config: tuple[str, ...] = (),
    ) -> None:
        need("/usr/sbin/sshd", "ssh", "scp", "ssh-keygen")
        self.dir = tmp / "sshd"
        self.dir.mkdir()
        self.port = free_port()
        host_key = self.dir / "host_ed25519"
        self.user_key = self.dir / "id_ed25519"
        for key in (host_key, self.user_key):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True
            )
        (self.dir / "authorized_keys").write_text(self.user_key.with_suffix(".pub").read_text())
        config = self.dir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    "ListenAddress 127.0.0.1",
                    f"Port {self.port}",
                    f"HostKey {host_key}",
                    f"PidFile {self.dir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "Subsystem sftp /usr/lib/openssh/sftp-server",
                    # VERBOSE logs each accepted connection ("Connection from ...").
                    *([f"LogLevel {log_level}"] if log_level else []),
                    *extra_config,
                    "",
                ]
            )
        )
        # sshd insists on its privilege-separation directory.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.proc = processes.start("sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)])
        wait_port(self.port)

    def client_options(self, proxy_command: str) -> list[str]:
        return [
            "-F",
            "/dev/null",
            "-i",
            str(self.user_key),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            f"ProxyCommand={proxy_command}",
        ]
