"""``adit access ssh-config``: the ssh_config stanza that makes ``ssh HOST`` go through
``adit access ssh``, as cloudflared prints it (cmd/cloudflared/access/cmd.go,
``sshConfigTemplate``), with adit's program path and adit's token directory (``~/.adit``).

With ``--short-lived-cert`` the stanza is a ``Match ... exec`` that runs ``adit access ssh-gen``
before each connection (a fresh certificate from the edge's SSH CA for the logged-in user,
:mod:`adit.cli.access_ssh_gen`) and offers that key and certificate.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click

from adit.cli.access_ssh_gen import ssh_gen

__all__ = ["SSH_COMMANDS", "program_path", "ssh_config_text"]


def ssh_config_text(home: str, hostname: str, *, short_lived: bool, program: str) -> str:
    """cloudflared's ``sshConfigTemplate`` rendered, byte for byte but for the program and
    the token directory."""
    if short_lived:
        return (
            f"\nAdd to your {home}/.ssh/config:\n"
            f'Match host {hostname} exec "{program} access ssh-gen --hostname %h"\n'
            f"  ProxyCommand {program} access ssh --hostname %h\n"
            "  IdentityFile ~/.adit/%h-cf_key\n"
            "  CertificateFile ~/.adit/%h-cf_key-cert.pub\n"
        )
    return (
        f"\nAdd to your {home}/.ssh/config:\n"
        f"Host {hostname}\n"
        f"  ProxyCommand {program} access ssh --hostname %h\n\n"
    )


def program_path() -> str:
    """The running ``adit``'s absolute path, else the first ``adit`` on PATH, else ``adit``
    (cloudflared's ``cloudflaredPath``): ssh runs the ProxyCommand without this shell's PATH
    guarantees."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "adit" and argv0.is_file():
        return str(argv0.resolve())
    found = shutil.which("adit")
    return found if found else "adit"


@click.command("ssh-config")
@click.option("--hostname", default="", help="specify the hostname of your application.")
@click.option(
    "--short-lived-cert",
    is_flag=True,
    help="specify if you wish to generate short lived certs.",
)
def ssh_config(hostname: str, short_lived_cert: bool) -> None:
    """Prints an example configuration ~/.ssh/config"""
    text = ssh_config_text(
        os.environ.get("HOME", ""),
        hostname or "[your hostname]",
        short_lived=short_lived_cert,
        program=program_path(),
    )
    sys.stdout.write(text)


SSH_COMMANDS: tuple[click.Command, ...] = (ssh_config, ssh_gen)
