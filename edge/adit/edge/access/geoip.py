"""The visitor's country from a MaxMind-format database (``--geoip-db``: GeoLite2-Country,
GeoIP2-Country or City, or DB-IP's equivalents), read with ``maxminddb``.

The database is memory-mapped once at start; a lookup is a tree walk in C. An address the
database does not know has no country (a ``geo`` rule then does not match it).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import maxminddb

__all__ = ["CountryDb", "GeoIpError"]


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

    def __call__(self, address: str) -> str | None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        try:
            record: Any = self._reader.get(ip)
        except ValueError:
            return None  # an IPv6 address in an IPv4-only database
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
