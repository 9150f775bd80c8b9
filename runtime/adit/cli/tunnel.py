"""``adit tunnel``: the group, its tunnel-level flags, and the attached subcommands."""

from __future__ import annotations

import click

from adit.cli.lazy_group import LazyGroup
from adit.cli.state import CommandFailure, cli_state

_MANAGE = "adit.cli.manage:COMMANDS"
#: The subcommands, imported when used: `tunnel run` never loads the management commands.
_COMMANDS = {
    "ingress": "adit.cli.ingress:ingress",
    **dict.fromkeys(
        ("login", "create", "route", "list", "info", "delete", "token", "cleanup", "rotate"),
        _MANAGE,
    ),
    "vnet": "adit.cli.teamnet:vnet",
    "config": "adit.cli.remote_config:config",
    "run": "adit.cli.run:COMMANDS",
    "ready": "adit.cli.ready:ready",
    "diag": "adit.cli.diag:diag",
}


@click.group(cls=LazyGroup, lazy_commands=_COMMANDS, invoke_without_command=True)
@click.option(
    "--config",
    "config_path",
    envvar="TUNNEL_CONFIG",
    default=None,
    help="Path to a config.yml (default: the first found in the search path).",
)
@click.option(
    "--origincert",
    envvar="TUNNEL_ORIGIN_CERT",
    default=None,
    help="Path to the origin certificate written by `adit tunnel login`.",
)
@click.option(
    "--url",
    envvar="TUNNEL_URL",
    default=None,
    help="Quick tunnel: publish this local service through an embedded edge.",
)
@click.option(
    "--hello-world",
    envvar="TUNNEL_HELLO_WORLD",
    is_flag=True,
    default=False,
    help="Quick tunnel: publish the built-in hello-world origin.",
)
@click.option(
    "--quick-listen",
    default="127.0.0.1:0",
    show_default=True,
    hidden=True,
    help="The embedded edge's public listener for a quick tunnel.",
)
@click.option(
    "--metrics",
    envvar="TUNNEL_METRICS",
    default=None,
    help="Metrics/readiness listener of a quick tunnel's connector; for `ready` and `diag`, "
    "the connector to ask.",
)
@click.option(
    "--loglevel",
    envvar="TUNNEL_LOGLEVEL",
    default=None,
    help="Log level of a quick tunnel's connector.",
)
@click.pass_context
def tunnel(
    ctx: click.Context,
    config_path: str | None,
    origincert: str | None,
    url: str | None,
    hello_world: bool,
    quick_listen: str,
    metrics: str | None,
    loglevel: str | None,
) -> None:
    """Create, route and run tunnels; with --url alone, a quick tunnel."""
    state = cli_state(ctx)
    state.config_path = config_path
    state.origincert = origincert
    if url is not None:
        state.extra["url"] = url  # `ingress validate` refuses --url with ingress rules
    if metrics:
        state.extra["metrics"] = metrics  # `tunnel --metrics ADDR ready|diag`, as cloudflared
    if ctx.invoked_subcommand is not None:
        return
    if url is None and not hello_world:
        raise CommandFailure(NO_ARGUMENT_MESSAGE)
    from adit.cli.quick import start_quick_tunnel

    passthrough: list[str] = []
    if metrics:
        passthrough += ["--metrics", metrics]
    if loglevel:
        passthrough += ["--loglevel", loglevel]
    start_quick_tunnel(
        url=url, hello_world=hello_world, http_listen=quick_listen, passthrough=passthrough
    )


NO_ARGUMENT_MESSAGE = "\n".join(
    [
        "You did not specify any valid additional argument to the adit tunnel command.",
        "",
        "If you are trying to run a Quick Tunnel then you need to explicitly pass the --url flag.",
        "Eg. adit tunnel --url localhost:8080/.",
        "",
        "Please note that Quick Tunnels are meant to be ephemeral and should only be used for "
        "testing purposes.",
        "For production usage, create a named tunnel: adit tunnel create NAME.",
    ]
)
