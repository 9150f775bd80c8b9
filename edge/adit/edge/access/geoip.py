"""The visitor's country from a MaxMind-format database (``--geoip-db``: GeoLite2-Country,
GeoIP2-Country or City, or DB-IP's equivalents), read with ``maxminddb``.

The database is memory-mapped once at start; a lookup is a tree walk in C, and its answer is
remembered per address. An address the database does not know has no country (a ``geo`` rule
then does not match it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import maxminddb

__all__ = ["CountryDb", "GeoIpError"]

#: Addresses whose country is remembered (the database does not change while the edge runs).
_KEPT = 65_536


class GeoIpError(ValueError):
    """The database cannot be used; ``str()`` names the file and the fix."""


class CountryDb:
    """``address → ISO 3166 alpha-2 code`` (or None)."""

    def __init__(self, path: Path) -> None:
        try:
            self._reader = maxminddb.open_database(str(path))
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            raise GeoIpError(
                f"--geoip-db {path}: not a readable MaxMind database ({exc}); give a "
                "GeoLite2-Country.mmdb or an equivalent file"
            ) from None
        self.path = path
        self._known: dict[str, str | None] = {}

    def __call__(self, address: str) -> str | None:
        # Visitors repeat: a dictionary hit costs far less than parsing and a tree walk.
        try:
            return self._known[address]
        except KeyError:
            pass
        country = self._lookup(address)
        if len(self._known) >= _KEPT:
            self._known.clear()
        self._known[address] = country
        return country

    def _lookup(self, address: str) -> str | None:
        try:
            record: Any = self._reader.get(address)
        except ValueError:
            return None  # not an address, or IPv6 in an IPv4-only database
        if not isinstance(record, dict):
            return None
        for key in ("country", "registered_country"):
            country = record.get(key)
            if isinstance(country, dict):
                code = country.get("iso_code")
                if isinstance(code, str) and len(code) == 2:
                    return code.upper()
        return None

    def close(self) -> None:
        self._reader.close()
