"""The ``adit`` command: cloudflared's command tree with ``adit`` in its place.

Subcommands live in their own modules and are imported only when used (:class:`LazyGroup`), so
``adit tunnel run`` loads neither the edge nor ``access`` before its first connection.
"""

from __future__ import annotations

import sys

import click

from adit.cli.lazy_group import LazyGroup
from adit.cli.state import CliState, UsageFailure
from adit.version import __version__


def _version_line() -> str:
    return f"adit version {__version__}"


#: Subcommands and where they live (``access`` doubles as ``forward``, as in cloudflared).
_COMMANDS = {
    "tunnel": "adit.cli.tunnel:tunnel",
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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point with cloudflared's exit codes (usage 255, failure 1)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        cli.main(args=args, prog_name="adit", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else "", err=False)
        sys.exit(0)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "adit"
        click.echo(exc.format_message(), err=True)
        click.echo(f"See '{command} --help'.", err=True)
        sys.exit(UsageFailure.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
