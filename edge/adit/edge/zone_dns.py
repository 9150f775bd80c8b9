"""Zones' RFC 2136 targets: the server that takes a zone's dynamic updates and its TSIG key.

A table of its own (one row per zone that has a target, gone with the zone), set only by the
edge's admin (``adit edge zone dns``); and the records each route's name was given there, so
that removing them takes away what was written even after the edge's ``--public-name`` or
``--public-address`` changed. The TSIG secret sits in the store file, which is 0600 like
the tunnels' secrets beside it; nothing here returns it except :meth:`ZoneDnsTargets.target`,
which the edge uses to sign updates, and :class:`~adit.edge.dns_update.DnsTarget` hides it from
its repr.
"""

from __future__ import annotations

import json
import sqlite3

from adit.edge.database import Database
from adit.edge.dns_update import TSIG_ALGORITHMS, DnsTarget
from adit.edge.errors import InvalidName, ZoneNotFound
from adit.protocol.hostnames import is_within, normalize_hostname

__all__ = [
    "SCHEMA",
    "TABLES",
    "Records",
    "ZoneDnsTargets",
    "forget_records",
    "remember_records",
]

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS zone_dns_targets (
    zone TEXT PRIMARY KEY REFERENCES zones(name) ON DELETE CASCADE,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    tsig_name TEXT NOT NULL,
    tsig_algorithm TEXT NOT NULL,
    tsig_secret BLOB NOT NULL
)""",
    # JSON {"CNAME": ["edge.example.net."]}: written with the route, dropped with the records.
    """CREATE TABLE IF NOT EXISTS route_dns_records (
    hostname TEXT PRIMARY KEY,
    zone TEXT NOT NULL REFERENCES zones(name) ON DELETE CASCADE,
    records TEXT NOT NULL
)""",
)
TABLES = frozenset({"zone_dns_targets", "route_dns_records"})

Records = dict[str, tuple[str, ...]]


def remember_records(db: sqlite3.Connection, hostname: str, zone: str, records: Records) -> None:
    """Inside a write transaction (the route's): ``hostname``'s records in ``zone``."""
    db.execute(
        "INSERT OR REPLACE INTO route_dns_records (hostname, zone, records) VALUES (?, ?, ?)",
        (hostname, zone, json.dumps({t: list(v) for t, v in records.items()})),
    )


def forget_records(db: sqlite3.Connection, hostname: str) -> None:
    """Inside a write transaction: ``hostname`` has no records of adit's any more."""
    db.execute("DELETE FROM route_dns_records WHERE hostname = ?", (hostname,))


def _decoded(text: str) -> Records:
    stored = json.loads(text)
    return {str(t): tuple(str(v) for v in values) for t, values in stored.items()}


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

    def records(self, hostname: str) -> Records | None:
        """The records ``hostname`` was given in its zone's server, if adit wrote any."""
        row = self._db.read(
            "SELECT records FROM route_dns_records WHERE hostname = ?", (hostname,)
        ).fetchone()
        return None if row is None else _decoded(row[0])

    def zone_records(self, zone: str) -> dict[str, Records]:
        """Every record adit wrote in ``zone``'s server, by hostname."""
        rows = self._db.read(
            "SELECT hostname, records FROM route_dns_records WHERE zone = ? ORDER BY hostname",
            (normalize_hostname(zone),),
        )
        return {host: _decoded(text) for host, text in rows}

    def forget(self, hostname: str) -> None:
        """``hostname``'s records are gone from its server (a write)."""
        with self._db.write() as db:
            forget_records(db, hostname)

    def zone_holding(self, name: str) -> str | None:
        """The narrowest zone (of any account) that holds ``name``, or None."""
        host = normalize_hostname(name).removeprefix("*.")
        zones = [z for (z,) in self._db.read("SELECT name FROM zones") if is_within(host, z)]
        return max(zones, key=len) if zones else None
