"""``adit``'s console script: starts worker 0 early for ``tunnel run``, then runs click.

Nothing is imported at the top but ``sys`` and ``gc``: ``adit tunnel run`` starts its first
worker process (``adit.supervisor.spawn.prestart``) before click and the config modules are
imported, so the worker's own imports overlap them. For ``tunnel run`` the cyclic garbage
collector is also off while the settings load (its passes over the imported modules cost
~8 % of the way to worker 0's boot message); ``adit.supervisor.launch`` turns it on again.
"""

from __future__ import annotations

import gc
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point with cloudflared's exit codes (usage 255, failure 1).

    Only the real command line (``argv`` is ``None``) prestarts a worker: a caller that passes
    arguments (tests, ``adit-supervisor``) decides for itself.
    """
    args = sys.argv[1:] if argv is None else argv
    if argv is None:
        from adit.supervisor.spawn import prestart, wants_prestart

        if wants_prestart(args):
            gc.disable()
        prestart(args)
    run_cli(args)


def run_cli(args: list[str]) -> None:
    """Run the click command tree on ``args``, mapping click's outcomes to exit codes."""
    import click

    from adit.cli.root import cli
    from adit.cli.state import UsageFailure
    from adit.cli.tunnel_flags import go_style_args

    try:
        cli.main(args=go_style_args(args), prog_name="adit", standalone_mode=False)
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
