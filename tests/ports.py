"""Ports a test chooses now and binds later, or hands to another program to bind.

They come from below Linux's ephemeral range (32768-60999): a port taken there "just now" by
binding port 0 can meanwhile become the source port of another test's outgoing connection,
or be bound for UDP by a QUIC test, and the later bind fails. Here only tests' planned ports
live, chosen at random, so two tests meet on one only by chance and a port is checked free for
each kind of socket it is wanted for.
"""

from __future__ import annotations

import contextlib
import random
import socket
from typing import Literal

__all__ = ["PLANNED_PORTS", "free_port"]

#: Below the ephemeral range; above the ports services commonly use.
PLANNED_PORTS = (20000, 32000)

_KINDS = {
    "tcp": (socket.SOCK_STREAM,),
    "udp": (socket.SOCK_DGRAM,),
    "both": (socket.SOCK_STREAM, socket.SOCK_DGRAM),
}


def free_port(kind: Literal["tcp", "udp", "both"] = "tcp") -> int:
    """A port free on 127.0.0.1 just now for ``kind`` (TCP, UDP or both), outside the
    ephemeral range (bounded tries)."""
    for _ in range(200):
        port = random.randrange(*PLANNED_PORTS)
        if all(_bindable(port, family) for family in _KINDS[kind]):
            return port
    raise AssertionError(f"no {kind} port free in {PLANNED_PORTS} after 200 tries")


def _bindable(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock, contextlib.suppress(OSError):
        sock.bind(("127.0.0.1", port))
        return True
    return False
