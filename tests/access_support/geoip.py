"""A MaxMind-format country database written by the test (mmdb-writer), as GeoLite2-Country
is laid out, so the edge's ``maxminddb`` reader sees ``country.iso_code`` for test addresses."""

from __future__ import annotations

from pathlib import Path

from mmdb_writer import MMDBWriter
from netaddr import IPSet

#: Test addresses and ranges and their countries.
COUNTRIES: dict[str, str] = {
    "127.0.0.2/32": "DE",
    "127.0.0.3/32": "US",
    "127.0.0.4/32": "AT",
    "127.0.1.0/24": "DE",
    "::1/128": "AT",
    "2001:db8::/32": "US",
}


def write_country_db(path: Path, countries: dict[str, str] | None = None) -> Path:
    """``path`` holding a GeoLite2-Country-like database of ``countries`` (CIDR → ISO code)."""
    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type="GeoLite2-Country",
        languages=["en"],
        description={"en": "adit test countries"},
    )
    for cidr, code in (countries or COUNTRIES).items():
        writer.insert_network(IPSet([cidr]), {"country": {"iso_code": code}})
    writer.to_db_file(str(path))
    return path
