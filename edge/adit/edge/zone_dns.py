"""Zones' RFC 2136 targets: the server that takes a zone's dynamic updates and its TSIG key.

A table of its own (one row per zone that has a target, gone with the zone), set only by the
edge's admin (``adit edge zone dns``). The TSIG secret sits in the store file, which is 0600 like
the tunnels' secrets beside it; nothing here returns it except :meth:`ZoneDnsTargets.target`,
which the edge uses to sign updates, and :class:`~adit.edge.dns_update.DnsTarget` hides it from
its repr.
"""

from __future__ import annotations

from adit.edge.database import Database
from adit.edge.dns_update import TSIG_ALGORITHMS, DnsTarget
from adit.edge.errors import InvalidName, ZoneNotFound
from adit.protocol.hostnames import is_within, normalize_hostname

__all__ = ["SCHEMA", "TABLES", "ZoneDnsTargets"]

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS zone_dns_targets (
    zone TEXT PRIMARY KEY REFERENCES zones(name) ON DELETE CASCADE,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    tsig_name TEXT NOT NULL,
    tsig_algorithm TEXT NOT NULL,
    tsig_secret BLOB NOT NULL
)""",
)
TABLES = frozenset({"zone_dns_targets"})


class ZoneDnsTargets:
    """Read and write zones' targets (reached as ``Store.zone_dns``)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def set(self, zone: str, target: DnsTarget) -> None:
        """Give ``zone`` its target (replacing one it had)."""
        if target.tsig_algorithm not in TSIG_ALGORITHMS:
            raise InvalidName(
                f"TSIG algorithm {target.tsig_algorithm!r} is not one of "
                + ", ".join(TSIG_ALGORITHMS)
            )
        name = normalize_hostname(zone)
        with self._db.write() as db:
            if db.execute("SELECT 1 FROM zones WHERE name = ?", (name,)).fetchone() is None:
                raise ZoneNotFound(f"no zone {name}")
            db.execute(
                "INSERT OR REPLACE INTO zone_dns_targets"
                " (zone, host, port, tsig_name, tsig_algorithm, tsig_secret)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    name,
                    target.host,
                    target.port,
                    target.tsig_name,
                    target.tsig_algorithm,
                    target.tsig_secret,
                ),
            )

    def clear(self, zone: str) -> bool:
        """Take ``zone``'s target away (its routes' records stay where they are); False when
        it had none."""
        name = normalize_hostname(zone)
        with self._db.write() as db:
            if db.execute("SELECT 1 FROM zones WHERE name = ?", (name,)).fetchone() is None:
                raise ZoneNotFound(f"no zone {name}")
            cursor = db.execute("DELETE FROM zone_dns_targets WHERE zone = ?", (name,))
        return cursor.rowcount > 0

    def target(self, zone: str) -> DnsTarget | None:
        """The zone's target, secret included (for signing; never to show)."""
        row = self._db.read(
            "SELECT host, port, tsig_name, tsig_algorithm, tsig_secret FROM zone_dns_targets"
            " WHERE zone = ?",
            (normalize_hostname(zone),),
        ).fetchone()
        if row is None:
            return None
        return DnsTarget(row[0], int(row[1]), row[2], row[3], bytes(row[4]))

    def zone_holding(self, name: str) -> str | None:
        """The narrowest zone (of any account) that holds ``name``, or None."""
        host = normalize_hostname(name).removeprefix("*.")
        zones = [z for (z,) in self._db.read("SELECT name FROM zones") if is_within(host, z)]
        return max(zones, key=len) if zones else None
