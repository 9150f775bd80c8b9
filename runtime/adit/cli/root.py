"""The ``adit`` command group: cloudflared's command tree with ``adit`` in its place.

Subcommands live in their own modules and are imported only when used (:class:`LazyGroup`), so
``adit tunnel run`` loads neither the edge nor ``access`` before its first connection. The
console script is :func:`adit.cli.main.main`.
"""

from __future__ import annotations

from typing import Any

import click
from click.core import ParameterSource

from adit.cli.lazy_group import LazyGroup
from adit.cli.state import CliState
from adit.cli.tunnel_flags import TUNNEL_FLAGS, tunnel_options
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
    "update": "adit.cli.update:update",
    "upgrade-restart": "adit.cli.upgrade_restart:upgrade_restart",
}


@click.group(
    cls=LazyGroup,
    lazy_commands=_COMMANDS,
    # The edge is optional in a connector-only install.
    optional_modules=frozenset({"adit.edge.cli"}),
    # cloudflared --url URL is cloudflared tunnel --url URL; a bare adit still prints help.
    invoke_without_command=True,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, "--version", "-v", "-V", message=_version_line())
# cloudflared's app-level flags are the tunnel flags (``cloudflared --no-autoupdate tunnel
# run``, its service unit's form): accepted here, seen by ``tunnel`` and ``run`` below.
@tunnel_options(hide=True)
@click.pass_context
def cli(ctx: click.Context, /, **_options: Any) -> None:
    """adit: a self-hostable, Cloudflare-Tunnel-compatible tunnel.

    The tunnel flags (adit tunnel run --help) are also accepted here, before the command.
    """
    ctx.ensure_object(CliState)
    if ctx.invoked_subcommand is None:
        from adit.cli.tunnel import quick_tunnel_or_explain

        quick_tunnel_or_explain(ctx)
    elif ctx.invoked_subcommand not in ("tunnel", "service"):
        _say_unused(ctx, ctx.invoked_subcommand)


def _say_unused(ctx: click.Context, command: str) -> None:
    """Tunnel flags before a command that is not ``tunnel`` (``adit --metrics X access``) act
    on nothing there: one line each, not silence."""
    for flag in TUNNEL_FLAGS:
        if ctx.get_parameter_source(flag.param) is ParameterSource.COMMANDLINE:
            click.echo(
                f"--{flag.name} before {command}: a tunnel flag, it has no effect on {command}",
                err=True,
            )


@cli.command("version")
@click.option("--short", "-s", is_flag=True, help="Print just the version number.")
def version_command(short: bool) -> None:
    """Print the version."""
    click.echo(__version__ if short else _version_line())
