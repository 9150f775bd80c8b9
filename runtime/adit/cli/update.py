"""``adit update``: adit never replaces itself; the distro's package manager updates it.

cloudflared's ``update`` downloads a new binary unless it "was installed by a package
manager", where it says to update the same way and exits 0 (cmd/cloudflared/updater
``Update``). adit is only shipped as .deb, .rpm and pacman packages (packaging/README.md), so
it always answers the package-manager way: with the commands, the one for this host's
package first when it can tell, and exit status 0. It never exits 11 ("updated"), so a
script that checks for 11 never restarts a connector for nothing.

cloudflared's flags are accepted: ``--beta``, ``--staging`` and ``--force`` change nothing
(there is no update server), ``--version V`` names that version in the commands.
"""

from __future__ import annotations

import glob
import shutil
import subprocess
import sys
from pathlib import Path

import click

__all__ = ["update"]

_PACKAGE = "adit"
#: Where the packages install adit's private virtual environment.
_PACKAGED_PREFIX = "/usr/lib/adit/venv"


def _commands(version: str | None) -> dict[str, list[str]]:
    if version:
        # A named version may be older: apt and dnf need to be told that a downgrade is meant.
        deb = f"sudo apt-get update && sudo apt-get install --allow-downgrades adit={version}"
        rpm = f"sudo dnf install adit-{version}   (older: sudo dnf downgrade adit-{version})"
        pacman = f"sudo pacman -U adit-{version}-1-<arch>.pkg.tar.zst"
    else:
        deb = "sudo apt-get update && sudo apt-get install --only-upgrade adit"
        rpm = "sudo dnf upgrade adit   (older systems: sudo yum update adit)"
        pacman = "sudo pacman -Syu adit"
    v = version or "<version>"
    commands = {
        "deb": [deb, f"a downloaded package: sudo apt-get install ./adit_{v}_<arch>.deb"],
        "rpm": [rpm, f"a downloaded package: sudo dnf install ./adit-{v}-1.<arch>.rpm"],
        "pacman": [pacman, f"a built package: sudo pacman -U adit-{v}-1-<arch>.pkg.tar.zst"],
    }
    if version:
        commands["pacman"] = [pacman]
    return commands


def _installed_by() -> str | None:
    """``deb``, ``rpm`` or ``pacman`` when that package manager installed this adit."""
    if not sys.prefix.startswith(_PACKAGED_PREFIX):
        return None
    if Path(f"/var/lib/dpkg/info/{_PACKAGE}.list").exists():
        return "deb"
    if glob.glob(f"/var/lib/pacman/local/{_PACKAGE}-[0-9]*"):
        return "pacman"
    rpm = shutil.which("rpm")
    if rpm is not None:
        try:
            found = subprocess.run(
                [rpm, "-q", _PACKAGE], capture_output=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        if found.returncode == 0:
            return "rpm"
    return None


@click.command("update")
@click.option("--beta", is_flag=True, help="Accepted; adit has no beta channel of its own.")
@click.option("--force", is_flag=True, hidden=True, help="Accepted, no effect.")
@click.option("--staging", is_flag=True, hidden=True, help="Accepted, no effect.")
@click.option("--version", "version", default=None, help="The version to install or go back to.")
def update(beta: bool, force: bool, staging: bool, version: str | None) -> None:
    """Say how to update adit: with the distro's package manager (exit status 0).

    adit never downloads or replaces its own files.
    """
    del beta, force, staging  # cloudflared's update-server switches; there is no server
    owner = _installed_by()
    commands = _commands(version)
    if owner is not None:
        click.echo(f"adit was installed by the {owner} package manager. Update it the same way:")
        for line in commands[owner]:
            click.echo(f"  {line}")
        return
    click.echo("adit does not update itself: update it with the package manager that installed it.")
    for name in ("deb", "rpm", "pacman"):
        click.echo(f"  {name}:")
        for line in commands[name]:
            click.echo(f"    {line}")
    click.echo(
        "  a source checkout: git pull, then ./run check (or reinstall the package built from it)"
    )
