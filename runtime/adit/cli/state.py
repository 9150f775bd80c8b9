"""What the command groups hand down to their subcommands (click's ``ctx.obj``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import click


@dataclass
class CliState:
    """Options given at the ``adit`` / ``adit tunnel`` level, before the subcommand.

    cloudflared accepts tunnel-level flags before the subcommand (``tunnel --config X run``);
    subcommands that also declare the flag let their own value win.
    """

    config_path: str | None = None
    origincert: str | None = None
    api_url: str | None = None
    extra: dict[str, object] = field(default_factory=dict)


def cli_state(ctx: click.Context) -> CliState:
    """The state object of the nearest group, creating it when a command runs standalone."""
    return ctx.ensure_object(CliState)


class UsageFailure(click.UsageError):
    """A usage error in cloudflared's shape: message, ``See '<command> --help'.``, exit 255."""

    exit_code = 255


class CommandFailure(click.ClickException):
    """Any other failure: the message on stderr, exit 1."""

    exit_code = 1

    def show(self, file: object = None) -> None:
        click.echo(self.format_message(), err=True)
