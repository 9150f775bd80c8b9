"""A DNS server for the interop tests' private namespaces: the records cloudflared looks up.

cloudflared's ``--protocol auto`` (its default) picks QUIC or HTTP/2 from the TXT record
``protocol-v2.argotunnel.com`` that Cloudflare publishes (PROTOCOL.md §1.1); without an answer
it starts with HTTP/2. In a namespace whose ``/etc/resolv.conf`` names 127.0.0.1 (see
``adversary.rerun_in_private_netns(resolver=True)``), this server answers those TXT records as
Cloudflare does and refuses everything else at once.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

#: What Cloudflare publishes: every account on QUIC.
PROTOCOL_TXT = '[{"protocol":"quic","percentage":100},{"protocol":"http2","percentage":100}]'
RECORDS = {"protocol-v2.argotunnel.com.": PROTOCOL_TXT}


@contextmanager
def serving(
    records: dict[str, str] | None = None,
    port: int = 53,
    addresses: dict[str, str] | None = None,
) -> Iterator[None]:
    """Answer TXT queries for ``records`` on 127.0.0.1:``port`` (UDP) while in the block, and
    A queries for ``addresses`` (name → IPv4; other types of those names: no records)."""
    table = {name.lower(): value for name, value in (records or RECORDS).items()}
    hosts = {name.lower(): value for name, value in (addresses or {}).items()}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    sock.settimeout(0.2)
    stop = threading.Event()

    def answer(data: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return None
        reply = dns.message.make_response(query)
        question = query.question[0] if query.question else None
        # (An RRset of a question holds no records: it is falsy, hence "is not None".)
        name = question.name.to_text().lower() if question is not None else ""
        if question is not None and name in hosts:
            reply.flags |= dns.flags.AA
            if question.rdtype == dns.rdatatype.A:
                reply.answer.append(
                    dns.rrset.from_text(
                        question.name, 60, dns.rdataclass.IN, dns.rdatatype.A, hosts[name]
                    )
                )
            return reply.to_wire()
        value = table.get(name) if question is not None else None
        if question is None or value is None or question.rdtype != dns.rdatatype.TXT:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        else:
            reply.flags |= dns.flags.AA
            reply.answer.append(
                dns.rrset.from_text(
                    question.name,
                    60,
                    dns.rdataclass.IN,
                    dns.rdatatype.TXT,
                    f'"{value.replace(chr(34), chr(92) + chr(34))}"',
                )
            )
        return reply.to_wire()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            wire = answer(data)
            if wire is not None:
                sock.sendto(wire, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        sock.close()
