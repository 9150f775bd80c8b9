"""The DNS-01 seam for ACME (RFC 8555 §8.4): publish and withdraw ``_acme-challenge.NAME`` TXT
records through the target of the zone that holds NAME.

The ACME code calls :func:`set_challenge` with the key authorisation's digest (base64url,
43 characters), waits for the CA, then :func:`remove_challenge`. A wildcard's challenge goes
to the name without ``*.``, as RFC 8555 §8.4 says; several values may stand at one name at
once (an apex and its wildcard), so each call adds or removes one value only.
"""

from __future__ import annotations

from adit.edge.dns_update import DnsClient
from adit.edge.errors import ZoneNotFound
from adit.edge.store import Store
from adit.protocol.hostnames import normalize_hostname

__all__ = ["challenge_name", "remove_challenge", "set_challenge"]


def challenge_name(name: str) -> str:
    """``_acme-challenge.NAME`` for ``NAME`` (or ``*.NAME``)."""
    return "_acme-challenge." + normalize_hostname(name).removeprefix("*.")


def _client(store: Store, name: str) -> DnsClient:
    zone = store.zone_dns.zone_holding(name)
    target = None if zone is None else store.zone_dns.target(zone)
    if zone is None or target is None:
        raise ZoneNotFound(
            f"{name} is in no zone with a DNS server: the edge's administrator sets one with "
            "adit edge zone dns ZONE --server HOST:PORT --tsig-name ... --tsig-secret-file ..."
        )
    return DnsClient(target, zone)


async def set_challenge(store: Store, name: str, value: str) -> str:
    """Add the TXT record ``value`` at ``_acme-challenge.NAME``; the record's name.
    :class:`~adit.edge.errors.DnsUpdateFailed` names the server and why it failed."""
    record = challenge_name(name)
    await _client(store, name).add_txt(record, value)
    return record


async def remove_challenge(store: Store, name: str, value: str) -> None:
    """Remove that TXT record (nothing happens when it is not there)."""
    await _client(store, name).remove_txt(challenge_name(name), value)
