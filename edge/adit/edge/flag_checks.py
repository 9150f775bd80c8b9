"""``adit edge`` flags checked before anything starts: an address that does not parse, a port
out of range, a state directory the edge cannot use.

Each refusal is one line naming the flag and what to write instead, exit status 2, instead of
a traceback from deep in the server (or, for a host that only looked like an address, a name
lookup failing at bind time).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import tempfile
from pathlib import Path

import click

from adit.protocol.hostnames import AddressError, split_address

#: A host name as a listen or dial address may spell it (letters, digits, ``-``, ``_``, dots).
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?")


class EdgeFlagError(click.ClickException):
    """A flag of ``adit edge`` the edge cannot run with: one line on stderr, exit 2."""

    exit_code = 2

    def show(self, file: object = None) -> None:
        click.echo(f"adit edge: {self.format_message()}", err=True)


def _host_problem(host: str) -> str | None:
    """Why ``host`` (brackets removed) is no IP literal or host name; ``None`` if it is one."""
    if not host:
        return None
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return None
    if ":" in host:
        return f"{host} is no IPv6 address"
    if re.fullmatch(r"[0-9.]+", host):
        return f"{host} is no IPv4 address"  # 999.1.1.1 would go to DNS as a name
    if len(host) > 253 or not _HOSTNAME.fullmatch(host):
        return f"{host} is no IP address or host name"
    return None


class HostPort(click.ParamType[str, str]):
    """``host:port`` (``[v6]:port``), checked and kept as written.

    A listen address may leave the host empty (all addresses) and use port 0 (any free port,
    see ``--ready-file``); an address connectors dial (``--advertise``) may do neither.
    """

    name = "host:port"

    def __init__(self, *, dial: bool) -> None:
        self.dial = dial

    def convert(self, value: str, param: click.Parameter | None, ctx: click.Context | None) -> str:
        flag = param.opts[0] if param is not None and param.opts else "address"
        example = "edge.example.com:7844" if self.dial else "0.0.0.0:8080 or [::]:8080"
        problem = self._problem(str(value))
        if problem is not None:
            raise EdgeFlagError(f"{flag} {value!r}: {problem} (want host:port, e.g. {example})")
        return str(value)

    def _problem(self, value: str) -> str | None:
        try:
            host, port = split_address(value)
        except AddressError as exc:
            return exc.reason if exc.reason != "invalid port" else "the port is no number 0-65535"
        problem = _host_problem(host)
        if problem is None and self.dial and not host:
            problem = "connectors need a host to dial"
        if problem is None and self.dial and port == 0:
            problem = "connectors cannot dial port 0"
        return problem


LISTEN_ADDRESS = HostPort(dial=False)
DIAL_ADDRESS = HostPort(dial=True)


def check_state_dir(path: Path) -> None:
    """Create ``path`` (0700) if need be and prove the edge can write in it."""
    if path.exists() and not path.is_dir():
        raise EdgeFlagError(f"--state-dir {path}: not a directory (give a directory path)")
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgeFlagError(f"--state-dir {path}: cannot create it: {exc.strerror}") from None
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe-")
    except OSError as exc:
        raise EdgeFlagError(
            f"--state-dir {path}: cannot write in it: {exc.strerror} (give a directory the "
            "edge's user owns)"
        ) from None
    os.close(fd)
    os.unlink(probe)
