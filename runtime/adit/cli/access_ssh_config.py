"""``adit access ssh-config`` and ``ssh-gen``: the ssh_config stanza that makes ``ssh HOST`` go
through ``adit access ssh``, as cloudflared prints it (cmd/cloudflared/access/cmd.go,
``sshConfigTemplate``), with adit's program path and adit's token directory (``~/.adit``).

cloudflared's ``--short-lived-cert`` stanza runs ``ssh-gen``, which asks Cloudflare's SSH CA
to sign a key for the logged-in user. adit's edge has no SSH CA: ``ssh-gen`` says so in one
line and exits 1 (cloudflared's exit code for a failed action), naming what to do instead
(``adit access login`` and an ordinary SSH key; the edge applies the application's policies
to the SSH stream with the stored token). ``ssh-config --short-lived-cert`` still prints
cloudflared's text, so a config written for cloudflared reads the same, and adds that note on
stderr.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click

__all__ = ["SSH_COMMANDS", "program_path", "ssh_config_text", "ssh_gen_refusal"]


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


def ssh_gen_refusal(hostname: str) -> str:
    """The one line ``ssh-gen`` answers with."""
    return (
        f"adit access ssh-gen: short-lived SSH certificates need an SSH CA at the edge, and "
        f"adit's edge has none; run `adit access login https://{hostname}` and use your own "
        f"SSH key (adit access ssh-config --hostname {hostname}, without --short-lived-cert)"
    )


@click.command("ssh-config")
@click.option("--hostname", default="", help="specify the hostname of your application.")
@click.option(
    "--short-lived-cert",
    is_flag=True,
    help="specify if you wish to generate short lived certs (adit's edge has no SSH CA).",
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
    if short_lived_cert:
        click.echo(
            "note: adit's edge has no SSH CA, so `adit access ssh-gen` refuses and this Match "
            "never applies; leave out --short-lived-cert to use your own SSH key",
            err=True,
        )


@click.command("ssh-gen")
@click.option("--hostname", default="", help="specify the hostname of your application.")
@click.pass_context
def ssh_gen(ctx: click.Context, hostname: str) -> None:
    """Generates a short lived certificate for given hostname"""
    if not hostname:
        # cloudflared shows the command's help, exit 0, without a hostname.
        click.echo(ctx.get_help())
        ctx.exit(0)
    click.echo(ssh_gen_refusal(hostname), err=True)
    ctx.exit(1)


SSH_COMMANDS: tuple[click.Command, ...] = (ssh_config, ssh_gen)
