"""Per-zone options of the public listeners: "Always Use HTTPS" and HSTS.

As Cloudflare's zone settings of the same names: with ``always_https`` a request for a name in
the zone that comes in over plain HTTP is answered with a 301 to the same URL over https
(except ACME HTTP-01 challenges under ``/.well-known/acme-challenge/``, which a certificate
authority fetches over plain HTTP); with ``hsts_max_age`` > 0 every response over HTTPS carries
``Strict-Transport-Security: max-age=N``, so browsers keep to https for N seconds.

The options live in the store (table ``zone_options``, one row per zone that has any) and are
served from memory like routes: an immutable :class:`ZoneOptionsTable` rebuilt when the
``zone_options`` counter moves (this process's writes at once, another's by the watcher).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from adit.edge.database import Database
from adit.edge.live_table import LiveTable

__all__ = [
    "MAX_HSTS_AGE",
    "SCHEMA",
    "TABLES",
    "ZONE_OPTIONS_COUNTER",
    "LiveZoneOptions",
    "ZoneOptions",
    "ZoneOptionsTable",
    "hsts_value",
    "write_zone_options",
]

ZONE_OPTIONS_COUNTER = "zone_options"
#: Two years: the longest max-age browsers' preload lists ask for (and Cloudflare offers 12
#: months); more would only outlive a mistake.
MAX_HSTS_AGE = 2 * 365 * 24 * 3600

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS zone_options (
    zone TEXT PRIMARY KEY REFERENCES zones(name) ON DELETE CASCADE,
    always_https INTEGER NOT NULL,
    hsts_max_age INTEGER NOT NULL
)""",
    f"INSERT OR IGNORE INTO counters (name, value) VALUES ('{ZONE_OPTIONS_COUNTER}', 0)",  # noqa: S608 (a constant)
)
TABLES = frozenset({"zone_options"})
_BUMP = f"UPDATE counters SET value = value + 1 WHERE name = '{ZONE_OPTIONS_COUNTER}'"  # noqa: S608


class ZoneOptions(NamedTuple):
    """One zone's options (the defaults: neither)."""

    always_https: bool = False
    hsts_max_age: int = 0


NO_OPTIONS = ZoneOptions()


def hsts_value(max_age: int) -> str:
    """The ``Strict-Transport-Security`` value for ``max_age`` seconds."""
    return f"max-age={max_age}"


@dataclass(frozen=True)
class ZoneOptionsTable:
    """Options by zone name; ``version`` is the counter it was built from."""

    version: int = -1
    by_zone: Mapping[str, ZoneOptions] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.by_zone)

    def find(self, hostname: str) -> ZoneOptions:
        """The options of the zone holding normalised ``hostname`` (the nearest one)."""
        by_zone = self.by_zone
        if not by_zone:
            return NO_OPTIONS
        name = hostname
        while True:
            options = by_zone.get(name)
            if options is not None:
                return options
            dot = name.find(".")
            if dot < 0:
                return NO_OPTIONS
            name = name[dot + 1 :]


def _load(db: sqlite3.Connection, version: int) -> ZoneOptionsTable:
    rows = db.execute("SELECT zone, always_https, hsts_max_age FROM zone_options").fetchall()
    return ZoneOptionsTable(
        version, {zone: ZoneOptions(bool(always), int(age)) for zone, always, age in rows}
    )


class LiveZoneOptions(LiveTable[ZoneOptionsTable]):
    """The current :class:`ZoneOptionsTable` of a store's database."""

    def __init__(self, db: Database) -> None:
        super().__init__(db, ZONE_OPTIONS_COUNTER, _load, "zone options")

    def find(self, hostname: str) -> ZoneOptions:
        """The options for normalised ``hostname``."""
        return self.current().find(hostname)


def write_zone_options(db: sqlite3.Connection, zone: str, options: ZoneOptions) -> None:
    """Store ``options`` for ``zone`` (inside the caller's write transaction)."""
    if options == NO_OPTIONS:
        db.execute("DELETE FROM zone_options WHERE zone = ?", (zone,))
    else:
        db.execute(
            "INSERT INTO zone_options (zone, always_https, hsts_max_age) VALUES (?, ?, ?)"
            " ON CONFLICT (zone) DO UPDATE SET always_https = excluded.always_https,"
            " hsts_max_age = excluded.hsts_max_age",
            (zone, int(options.always_https), options.hsts_max_age),
        )
    db.execute(_BUMP)
