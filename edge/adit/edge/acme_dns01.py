"""The DNS-01 challenge solver (RFC 8555 §8.4) on top of the RFC 2136 seam (:mod:`adit.edge.dns01`).

``present`` adds ``_acme-challenge.NAME TXT <digest>`` through the target of the zone holding
NAME (``adit edge zone dns``), then asks that same server for the TXT until it answers with the
value (bounded): the CA is told to validate only once the primary serves it. Secondaries that
lag are the operator's business; the CA retrying is cheaper than a fixed sleep here.
``cleanup`` removes exactly that value, whatever the order's outcome.

The issuer calls the solver on its worker thread; the DNS client is asyncio, so each call runs
its own short event loop (the edge's loop is never blocked, and no state crosses loops).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import threading

from adit.edge import dns01
from adit.edge.acme_issuer import IssueError
from adit.edge.dns_update import DnsClient
from adit.edge.errors import DnsUpdateFailed, ZoneNotFound
from adit.edge.store import Store
from adit.protocol.hostnames import normalize_hostname

__all__ = ["PROPAGATION_TRIES", "Dns01Solver", "txt_value"]

log = logging.getLogger("adit.edge.certificates")

#: How many times the zone's server is asked for the TXT before the CA is asked anyway...
PROPAGATION_TRIES = 20
#: ...this far apart (a primary that took the update answers at the first try).
PROPAGATION_INTERVAL = 0.5


def txt_value(key_authorization: str) -> str:
    """RFC 8555 §8.4: base64url (no padding) of the key authorisation's SHA-256."""
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class Dns01Solver:
    """TXT records through the zone's RFC 2136 target."""

    kind = "dns-01"

    def __init__(self, store: Store) -> None:
        self._store = store
        #: (hostname, token) -> the TXT value presented (what cleanup removes).
        self._values: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def zone_of(self, hostname: str) -> str | None:
        """The zone that holds ``hostname`` (its TXT goes to that zone's server)."""
        return self._store.zone_dns.zone_holding(hostname)

    def can_answer(self, hostname: str) -> bool:
        """Whether ``hostname`` (or ``*.NAME``) is in a zone with an RFC 2136 target."""
        zones = self._store.zone_dns
        zone = zones.zone_holding(hostname)
        return zone is not None and zones.target(zone) is not None

    def present(self, hostname: str, token: str, key_authorization: str) -> None:
        value = txt_value(key_authorization)
        with self._lock:
            self._values[(hostname, token)] = value
        try:
            record = asyncio.run(dns01.set_challenge(self._store, hostname, value))
            asyncio.run(self._wait_visible(hostname, record, value))
        except (DnsUpdateFailed, ZoneNotFound) as exc:
            raise IssueError("dns", str(exc)) from None

    def cleanup(self, hostname: str, token: str) -> None:
        with self._lock:
            value = self._values.pop((hostname, token), None)
        if value is None:
            return
        try:
            asyncio.run(dns01.remove_challenge(self._store, hostname, value))
        except (DnsUpdateFailed, ZoneNotFound) as exc:
            # The record's TTL is short and the next order adds its own value beside it.
            log.warning(
                "DNS-01 TXT record for %s not removed: %s", dns01.challenge_name(hostname), exc
            )

    async def _wait_visible(self, hostname: str, record: str, value: str) -> None:
        zones = self._store.zone_dns
        zone = zones.zone_holding(hostname)
        target = None if zone is None else zones.target(zone)
        if zone is None or target is None:
            return  # set_challenge would have failed first
        quoted = f'"{value}"'
        for attempt in range(PROPAGATION_TRIES):
            # A client per query: each has its own budget, the loop bounds the total.
            found = await DnsClient(target, zone).records(record, ("TXT",))
            if quoted in found.get("TXT", ()):
                return
            if attempt + 1 < PROPAGATION_TRIES:
                await asyncio.sleep(PROPAGATION_INTERVAL)
        log.warning(
            "DNS-01: %s does not answer the TXT at %s after %.0fs; asking the CA anyway",
            target.server,
            normalize_hostname(record),
            PROPAGATION_TRIES * PROPAGATION_INTERVAL,
        )
