"""The ``adit`` command group: cloudflared's command tree with ``adit`` in its place.

Subcommands live in their own modules and are imported only when used (:class:`LazyGroup`), so
``adit tunnel run`` loads neither the edge nor ``access`` before its first connection. The
console script is :func:`adit.cli.main.main`.
"""

from __future__ import annotations

import click

from adit.cli.lazy_group import LazyGroup
from adit.cli.state import CliState
from adit.version import __version__

__all__ = ["cli"]


def _version_line() -> str:
    return f"adit version {__version__}"


#: Subcommands and where they live (``access`` doubles as ``forward``, as in cloudflared).
_COMMANDS = {
    "tunnel": "adit.cli.tunnel:tunnel",
    "tail": "adit.cli.tail:tail",
    "service": "adit.cli.service:service",
    "access": "adit.cli.access:access",
    "forward": "adit.cli.access:access",
    "edge": "adit.edge.cli:edge",
}


@click.group(
    cls=LazyGroup,
    lazy_commands=_COMMANDS,
    # The edge is optional in a connector-only install.
    optional_modules=frozenset({"adit.edge.cli"}),
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, "--version", "-v", "-V", message=_version_line())
@click.pass_context
def cli(ctx: click.Context) -> None:
    """adit: a self-hostable, Cloudflare-Tunnel-compatible tunnel."""
    ctx.ensure_object(CliState)


@cli.command("version")
@click.option("--short", "-s", is_flag=True, help="Print just the version number.")
def version_command(short: bool) -> None:
    """Print the version."""
    click.echo(__version__ if short else _version_line())
