"""The quick tunnel's URL, printed when it works: once the tunnel has a registered connection.

``adit tunnel --url`` becomes the connector by ``exec``, so the connector never hears of the
URL. A detached watcher (double fork: it is no child of the connector, whose supervisor reaps
only its workers) asks the embedded edge's API for the tunnel's connections and prints the
banner as soon as there is one; if none comes within :data:`ANNOUNCE_TIMEOUT` it prints the
URL saying it is not reachable yet. It ends with the connector, and never outlives the timeout.
(cloudflared prints its URL at once, "it may take some time to be reachable".)
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Mapping

import click

from adit.cli.apiclient import ApiClient, ApiError

#: How long the watcher waits for a first connection before saying there is none yet.
ANNOUNCE_TIMEOUT = 30.0
POLL_INTERVAL = 0.1


def banner(url: str, *, connected: bool) -> str:
    """The boxed banner; ``connected`` false says the URL does not answer yet."""
    if connected:
        lines = [
            "Your quick Tunnel has been created! Visit it at (it is served by an embedded edge on",
            "this machine's loopback, so only this machine can reach it):",
            url,
        ]
    else:
        lines = [
            "Your quick Tunnel has been created, but no connection has registered yet: it is",
            "not reachable until one does (see the log). Its URL (served by an embedded edge on",
            "this machine's loopback, so only this machine can reach it):",
            url,
        ]
    width = max(len(line) for line in lines) + 6  # "|  " and "  |"
    rule = "+" + "-" * (width - 2) + "+"
    body = [f"|  {line.ljust(width - 6)}  |" for line in lines]
    return "\n".join([rule, *body, rule])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watch(info: Mapping[str, str], ca_pem: str, connector_pid: int) -> None:
    client = ApiClient(
        api_url=info["api_url"],
        api_token=info["api_token"],
        account_tag=info["account_tag"],
        zone_id="",
        ca_pem=ca_pem,
    )
    tunnel_id = uuid.UUID(info["tunnel_id"])
    deadline = time.monotonic() + ANNOUNCE_TIMEOUT
    while time.monotonic() < deadline:
        if not _alive(connector_pid):
            return  # the connector stopped: no URL to announce
        try:
            if client.list_active_clients(tunnel_id):
                click.echo(banner(info["url"], connected=True), err=True)
                return
        except ApiError:
            pass  # the edge is starting or stopping; the deadline bounds the wait
        time.sleep(POLL_INTERVAL)
    if _alive(connector_pid):
        click.echo(banner(info["url"], connected=False), err=True)


def announce_when_connected(info: Mapping[str, str], ca_pem: str) -> None:
    """Start the detached watcher for the process about to ``exec`` into the connector."""
    connector_pid = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        middle = os.fork()
    except OSError:
        # No watcher (no process to spare): say at once that the URL may not answer yet.
        click.echo(banner(info["url"], connected=False), err=True)
        return
    if middle == 0:  # pragma: no cover - runs in the forked processes
        try:
            if os.fork() == 0:
                try:
                    _watch(info, ca_pem, connector_pid)
                    sys.stderr.flush()
                finally:
                    os._exit(0)
        finally:
            os._exit(0)
    os.waitpid(middle, 0)
