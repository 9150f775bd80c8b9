"""``adit tunnel``: the group, its tunnel-level flags, and the attached subcommands."""

from __future__ import annotations

import click

from adit.cli.state import cli_state


@click.group(invoke_without_command=True)
@click.option("--config", "config_path", envvar="TUNNEL_CONFIG", default=None,
              help="Path to a config.yml (default: the first found in the search path).")
@click.option("--origincert", envvar="TUNNEL_ORIGIN_CERT", default=None,
              help="Path to the origin certificate written by `adit tunnel login`.")
@click.pass_context
def tunnel(ctx: click.Context, config_path: str | None, origincert: str | None) -> None:
    """Create, route and run tunnels."""
    state = cli_state(ctx)
    state.config_path = config_path
    state.origincert = origincert
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


def _attach() -> None:
    import importlib

    for module_name, attr in (
        ("adit.cli.ingress", "ingress"),
        ("adit.cli.manage", "COMMANDS"),
        ("adit.cli.run", "COMMANDS"),
    ):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        found = getattr(module, attr)
        for command in found if isinstance(found, list | tuple) else [found]:
            tunnel.add_command(command)


_attach()
