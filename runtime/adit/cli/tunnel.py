"""``adit tunnel``: the group, its tunnel-level flags, and the attached subcommands."""

from __future__ import annotations

from typing import Any

import click

from adit.cli.lazy_group import LazyGroup
from adit.cli.state import CommandFailure, cli_state
from adit.cli.tunnel_flags import explicit_argv, flag_notes, is_set, tunnel_options
from adit.config.settings import effective_value

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
#: What the quick tunnel sets itself on the ``tunnel run`` it becomes.
_LOG_FLAGS = ("loglevel", "logfile", "log_directory", "output")
#: (Its connector dials the embedded edge: no other edge, CA or credentials apply.)
_QUICK_OWN = frozenset(
    {"url", "hello_world", "token", "token_file", "ha_connections", "edge", "cacert"}
    | {"credentials_file", "credentials_contents"}
)


@click.group(
    cls=LazyGroup,
    lazy_commands=_COMMANDS,
    invoke_without_command=True,
    subcommand_metavar="[COMMAND [ARGS]...]",
)
@tunnel_options()
@click.option(
    "--quick-listen",
    default="127.0.0.1:0",
    show_default=True,
    hidden=True,
    help="The embedded edge's public listener for a quick tunnel.",
)
@click.pass_context
def tunnel(ctx: click.Context, /, quick_listen: str, **_options: Any) -> None:
    """Create, route and run tunnels; with --url alone, a quick tunnel.

    Every tunnel flag is accepted here as well as after run, and before tunnel.
    """
    state = cli_state(ctx)
    # The management subcommands read these from here (they also take the global level's).
    state.config_path = effective_value(ctx, "config_path", None)
    state.origincert = effective_value(ctx, "origincert", None)
    state.api_url = effective_value(ctx, "api_url", None)
    url = effective_value(ctx, "url", None)
    if url is not None:
        state.extra["url"] = url  # `ingress validate` refuses --url with ingress rules
    if is_set(ctx, "metrics"):
        # `tunnel --metrics ADDR ready|diag`, as cloudflared (given, not the default).
        state.extra["metrics"] = effective_value(ctx, "metrics", None)
    if ctx.invoked_subcommand is not None:
        if ctx.invoked_subcommand != "run":
            _management_logging(ctx)
        return
    quick_tunnel_or_explain(ctx, quick_listen)


def quick_tunnel_or_explain(ctx: click.Context, quick_listen: str = "127.0.0.1:0") -> None:
    """``tunnel`` (or ``adit`` itself, as cloudflared's root action is the tunnel command's)
    with no subcommand: a quick tunnel for ``--url``/``--hello-world``, else what is missing."""
    url = effective_value(ctx, "url", None)
    hello_world = bool(effective_value(ctx, "hello_world", None))
    if url is None and not hello_world:
        raise CommandFailure(NO_ARGUMENT_MESSAGE)
    from adit.cli.quick import start_quick_tunnel

    start_quick_tunnel(
        url=url,
        hello_world=hello_world,
        http_listen=quick_listen,
        passthrough=explicit_argv(ctx, skip=_QUICK_OWN),
        protocol_set=is_set(ctx, "protocol"),
    )


def _management_logging(ctx: click.Context) -> None:
    """The management commands log as ``run`` does: ``--loglevel``, ``--logfile``, ...
    from any level (cloudflared creates their logger from the same flags); and a tunnel
    flag that means nothing to adit gets its line here too (``run`` logs its own)."""
    notes = flag_notes(ctx, None)
    if not notes and not any(is_set(ctx, p) for p in _LOG_FLAGS):
        return
    import logging

    from adit.logs import LogSettings, configure_logging

    configure_logging(
        LogSettings(
            level=str(effective_value(ctx, "loglevel", None) or "info"),
            output=str(effective_value(ctx, "output", None) or "default"),
            logfile=effective_value(ctx, "logfile", None),
            log_directory=effective_value(ctx, "log_directory", None),
        ),
        rotate=False,
    )
    for note in notes:
        logging.getLogger("adit.cli").info(note)


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
