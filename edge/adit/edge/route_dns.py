"""Routes and their DNS records, kept together: ``route dns`` makes the record in the zone's
server (RFC 2136, :mod:`adit.edge.dns_update`) before the route is stored, deleting a route or
a tunnel removes its records after.

The order is the point: when a zone has a target, no route exists without its record. A route
is written only after its record is in place; if that write fails, a record it created is taken
back. Deleting a route removes the record first, so a server that refuses leaves both as they
were and the same command can be tried again. Deleting a tunnel drops its routes first (the
tunnel is gone whatever a server says) and then their records; one left behind by a server
that failed points at the edge, which answers "no such host", and is logged with the server and
why. Zones without a target keep routes in the store only, as before.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from dataclasses import dataclass

from adit.edge.dns_update import DnsClient, RecordChange, wanted_records
from adit.edge.errors import DnsUpdateFailed, HostnameNotRouted, StoreError
from adit.edge.names import check_route_name
from adit.edge.store import RouteChange, RouteResult, Store

__all__ = ["PublishedEdge", "RouteRecords"]

log = logging.getLogger("adit.edge.dns")


@dataclass(frozen=True)
class PublishedEdge:
    """How the edge is reached from the internet: the CNAME target of routes, and the
    addresses a zone's apex gets (A/AAAA)."""

    name: str = ""
    addresses: tuple[str, ...] = ()


class RouteRecords:
    """Hostname routes with their records in the zones' DNS servers."""

    def __init__(self, store: Store, published: PublishedEdge) -> None:
        self._store = store
        self._published = published

    def _client(self, zone: str) -> DnsClient | None:
        target = self._store.zone_dns.target(zone)
        return None if target is None else DnsClient(target, zone)

    def _wanted(self, host: str, zone: str) -> dict[str, tuple[str, ...]]:
        try:
            return wanted_records(host, zone, self._published.name, self._published.addresses)
        except ValueError as exc:
            raise DnsUpdateFailed(
                f"zone {zone} has a DNS server, but {exc}: ask the edge's administrator"
            ) from None

    async def route(
        self, account_tag: str, tunnel_id: uuid.UUID, hostname: str, *, overwrite: bool
    ) -> tuple[RouteResult, tuple[str, ...]]:
        """Route ``hostname`` to a tunnel, its record first (when its zone has a target);
        the route and the types of its record (none without a target)."""
        planned, zone = self._store.plan_route(
            account_tag, tunnel_id, hostname, overwrite=overwrite
        )
        host = planned.hostname
        client = self._client(zone)
        record = RecordChange.UNCHANGED
        wanted: dict[str, tuple[str, ...]] = {}
        if client is not None:
            wanted = self._wanted(host, zone)
            record = await client.put_route(host, wanted, overwrite=overwrite)
            if record is not RecordChange.UNCHANGED:
                log.info(
                    "DNS record %s %s %s at %s (%s)",
                    host,
                    "/".join(wanted),
                    " ".join(v for values in wanted.values() for v in values),
                    client.target.server,
                    record,
                )
        try:
            result = await self._store.off_loop(
                self._store.route_hostname,
                account_tag,
                tunnel_id,
                host,
                overwrite=overwrite,
                dns_records=wanted,
            )
        except BaseException:
            if client is not None and record is RecordChange.NEW:
                # Take back the record this call made (with a time budget of its own).
                with contextlib.suppress(DnsUpdateFailed):
                    await DnsClient(client.target, zone).remove_route(host, wanted)
            raise
        if result.change is RouteChange.UNCHANGED and record is not RecordChange.UNCHANGED:
            # The route was there, its record was not (made before the zone had a target).
            result = RouteResult(host, RouteChange(str(record)))
        return result, tuple(wanted)

    async def unroute(self, account_tag: str, tunnel_id: uuid.UUID, hostname: str) -> str:
        """Remove a route's record, then the route; the hostname as stored. A failure of the
        server changes nothing."""
        host = check_route_name(hostname)
        if host not in self._store.tunnel_hostnames(account_tag, tunnel_id):
            raise HostnameNotRouted(f"{host} does not route to tunnel {tunnel_id}")
        zone = self._store.zone_dns.zone_holding(host)
        client = None if zone is None else self._client(zone)
        wanted: dict[str, tuple[str, ...]] = {}
        if zone is not None and client is not None:
            wanted = self._written(host, zone)
            await client.remove_route(host, wanted)
            log.info("DNS record %s removed at %s", host, client.target.server)
        try:
            return await self._store.off_loop(
                self._store.unroute_hostname, account_tag, tunnel_id, host
            )
        except BaseException:
            if zone is not None and client is not None:
                # The route stays: so does its record (with a time budget of its own).
                with contextlib.suppress(DnsUpdateFailed):
                    await DnsClient(client.target, zone).put_route(host, wanted, overwrite=False)
            raise

    async def forget(self, hostnames: list[str]) -> list[str]:
        """Remove the records of routes already dropped (a deleted tunnel's); the failures,
        each naming its server and reason, also logged."""
        failures = []
        for host in hostnames:
            failure = await self._remove_record(host)
            if failure is not None:
                failures.append(failure)
        return failures

    async def _remove_record(self, host: str) -> str | None:
        zone = self._store.zone_dns.zone_holding(host)
        client = None if zone is None else self._client(zone)
        if zone is None or client is None:
            return None
        try:
            await client.remove_route(host, self._written(host, zone))
            await self._store.off_loop(self._store.zone_dns.forget, host)
        except StoreError as exc:  # DnsUpdateFailed, or the store busy
            log.warning("the DNS record of %s stays: %s", host, exc)
            return f"its DNS record stays: {exc}"
        log.info("DNS record %s removed at %s", host, client.target.server)
        return None

    def _written(self, host: str, zone: str) -> dict[str, tuple[str, ...]]:
        """What the route's record was made of (what the edge publishes now, for a route made
        before records were kept)."""
        return self._store.zone_dns.records(host) or self._wanted(host, zone)
