"""A minimal SOCKS5 server inside a WebSocket stream (``socks-proxy``, ``proxyType: socks``).

Only what cloudflared's in-process server is used for: no authentication, ``CONNECT`` to an
IPv4, IPv6 or domain address, then a byte bridge. Destinations are checked against the
rule's ``ipRules``: the first rule whose prefix (and ports, if any) match decides; no match
denies, as cloudflared's ``ipaccess`` does.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct

from adit.config.origin import IpRule, OriginOptions
from adit.protocol.websocket import Opcode, Role, WebSocketConnection, WebSocketError
from adit.workers.errors import OriginError
from adit.workers.origins.dialer import Dialer, OriginKey
from adit.workers.origins.wsbridge import bridge
from adit.workers.stream import TunnelStream

__all__ = ["ip_allowed", "serve_socks"]

_REPLY_OK = 0x00
_REPLY_FAILURE = 0x01
_REPLY_NOT_ALLOWED = 0x02
_REPLY_UNREACHABLE = 0x04
_REPLY_COMMAND = 0x07
_REPLY_ADDRESS = 0x08
_MAX_HANDSHAKE = 1024


def ip_allowed(rules: tuple[IpRule, ...], address: str, port: int) -> bool:
    """Whether ``ipRules`` let ``address:port`` through (first match decides, default deny)."""
    ip = ipaddress.ip_address(address)
    for rule in rules:
        network = ipaddress.ip_network(rule.prefix, strict=False)
        matches = ip.version == network.version and ip in network
        if matches and (not rule.ports or port in rule.ports):
            return rule.allow
    return False


class _Handshake:
    """Collects the WebSocket payload bytes of the SOCKS handshake."""

    def __init__(self, stream: TunnelStream, ws: WebSocketConnection) -> None:
        self.stream = stream
        self.ws = ws
        self.buffer = bytearray()

    async def need(self, count: int) -> bytes:
        while len(self.buffer) < count:
            data = await self.stream.read()
            if not data or len(self.buffer) > _MAX_HANDSHAKE:
                raise EOFError("the client went away during the SOCKS handshake")
            try:
                frames = self.ws.receive(data)
            finally:
                if out := self.ws.data_to_send():
                    await self.stream.write(out)
            for frame in frames:
                if frame.opcode == Opcode.CLOSE:
                    raise EOFError("the client closed during the SOCKS handshake")
                if frame.opcode in (Opcode.BINARY, Opcode.TEXT, Opcode.CONTINUATION):
                    self.buffer += frame.payload
        out = bytes(self.buffer[:count])
        del self.buffer[:count]
        return out

    async def reply(self, code: int) -> None:
        await self.stream.write(self.ws.send_data(bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0])))


async def serve_socks(stream: TunnelStream, options: OriginOptions, dialer: Dialer) -> None:
    """Run one SOCKS5 session over the stream's WebSocket, then bridge it."""
    ws = WebSocketConnection(Role.SERVER)
    talk = _Handshake(stream, ws)
    try:
        version, count = await talk.need(2)
        methods = await talk.need(count)
        if version != 5 or 0 not in methods:
            await stream.write(ws.send_data(bytes([5, 0xFF])))
            return
        await stream.write(ws.send_data(bytes([5, 0])))
        version, command, _reserved, kind = await talk.need(4)
        if kind == 1:
            host = socket.inet_ntop(socket.AF_INET, await talk.need(4))
        elif kind == 4:
            host = socket.inet_ntop(socket.AF_INET6, await talk.need(16))
        elif kind == 3:
            (length,) = await talk.need(1)
            host = (await talk.need(length)).decode("idna")
        else:
            await talk.reply(_REPLY_ADDRESS)
            return
        (port,) = struct.unpack("!H", await talk.need(2))
        if command != 1:
            await talk.reply(_REPLY_COMMAND)
            return
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            await talk.reply(_REPLY_UNREACHABLE)
            return
        address = str(infos[0][4][0])
        if not ip_allowed(options.ip_rules, address, port):
            await talk.reply(_REPLY_NOT_ALLOWED)
            return
        try:
            reader, writer = await dialer.dial(OriginKey(address, port), options)
        except OriginError:
            await talk.reply(_REPLY_FAILURE)
            return
    except (EOFError, WebSocketError, UnicodeError, ValueError):
        return
    try:
        await talk.reply(_REPLY_OK)
        await bridge(stream, reader, writer, ws, bytes(talk.buffer))
    finally:
        writer.close()
