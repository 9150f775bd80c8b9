"""The test's MaxMind country database is what the edge's reader (maxminddb) expects."""

from __future__ import annotations

from pathlib import Path

import maxminddb

from access_support.geoip import write_country_db


def test_test_addresses_map_to_countries(tmp_path: Path) -> None:
    path = write_country_db(tmp_path / "countries.mmdb")
    with maxminddb.open_database(str(path)) as reader:
        assert reader.metadata().database_type == "GeoLite2-Country"
        found = {
            address: reader.get(address)
            for address in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.1.77", "::1")
        }
        assert found == {
            "127.0.0.2": {"country": {"iso_code": "DE"}},
            "127.0.0.3": {"country": {"iso_code": "US"}},
            "127.0.0.4": {"country": {"iso_code": "AT"}},
            "127.0.1.77": {"country": {"iso_code": "DE"}},
            "::1": {"country": {"iso_code": "AT"}},
        }
        assert reader.get("127.0.0.1") is None
