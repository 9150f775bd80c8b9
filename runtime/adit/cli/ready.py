"""``adit tunnel ready``: exit 0 when a connector's ``/ready`` answers 200, 1 otherwise.

cloudflared (cmd/cloudflared/tunnel/subcommands.go ``readyCommand``) requires ``--metrics``
and fails with ``http://ADDR/ready endpoint returned status code N`` and the body. adit does
the same when ``--metrics`` is given; without it, instead of refusing, it asks the addresses
a connector takes by default (localhost:20241..20245) and uses the one connector found there.
"""

from __future__ import annotations

import click

from adit.cli.metrics_client import KNOWN_METRICS_ADDRESSES, MetricsUnreachable, base_address, get
from adit.cli.state import CommandFailure, cli_state

__all__ = ["ready"]

_TIMEOUT = 5.0


def _find_connector() -> str:
    """The one address of ``KNOWN_METRICS_ADDRESSES`` where a connector answers ``/ready``."""
    found: list[str] = []
    for address in KNOWN_METRICS_ADDRESSES:
        try:
            response = get(address, "/ready", timeout=_TIMEOUT)
        except MetricsUnreachable:
            continue
        if b"connectorId" in response.body:
            found.append(address)
    if not found:
        raise CommandFailure(
            "--metrics has to be provided: no connector answered on "
            f"{KNOWN_METRICS_ADDRESSES[0]}..{KNOWN_METRICS_ADDRESSES[-1].rsplit(':', 1)[1]}"
        )
    if len(found) > 1:
        raise CommandFailure(
            f"Found multiple instances running ({', '.join(found)}); "
            "to select one instance use the option --metrics"
        )
    return found[0]


@click.command("ready")
@click.option(
    "--metrics",
    envvar="TUNNEL_METRICS",
    default=None,
    help="The connector's metrics address, e.g. 127.0.0.1:20241 (default: the one connector "
    "found on localhost:20241..20245).",
)
@click.pass_context
def ready(ctx: click.Context, metrics: str | None) -> None:
    """Call the connector's /ready endpoint: exit 0 when ready, 1 otherwise.

    A non-ready connector (no connection registered, or draining) answers 503: its status
    and body are printed. Nothing listening is a failure too.
    """
    group_metrics = cli_state(ctx).extra.get("metrics")
    address = metrics or (str(group_metrics) if group_metrics else None) or _find_connector()
    address = base_address(address)
    try:
        response = get(address, "/ready", timeout=_TIMEOUT)
    except MetricsUnreachable as exc:
        raise CommandFailure(str(exc)) from None
    if response.status != 200:
        body = response.body.decode("utf-8", "replace")
        raise CommandFailure(
            f"http://{address}/ready endpoint returned status code {response.status}\n{body}"
        )
