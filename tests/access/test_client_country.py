"""The visitor's address and country as Access sees them: ``--trusted-proxies`` decides
whether ``X-Forwarded-For`` counts at all, ``--geoip-db`` maps the address to a country, and a
bad value of either stops the edge with a one-line error naming the flag."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from access_support.geoip import write_country_db
from adit.edge.access.client_address import TrustedProxies, parse_trusted_proxies
from adit.edge.access.geoip import CountryDb, GeoIpError
from harness import adit_command

XFF = b"x-forwarded-for"


def test_forwarded_for_counts_only_from_a_trusted_proxy() -> None:
    address = TrustedProxies(parse_trusted_proxies(["10.0.0.0/8, 127.0.0.1"]))
    # A visitor that sends the header itself chooses nothing.
    assert address("203.0.113.9", [(XFF, b"127.0.0.2")]) == "203.0.113.9"
    # Through the proxy: the right-most address that is not a trusted proxy.
    assert address("127.0.0.1", [(XFF, b"127.0.0.2")]) == "127.0.0.2"
    headers = [(XFF, b"198.51.100.1, 127.0.0.2"), (b"X-Forwarded-For", b"10.1.2.3")]
    assert address("10.9.9.9", headers) == "127.0.0.2"
    # Ports and brackets are dropped; a garbled chain leaves the proxy's own address.
    assert address("127.0.0.1", [(XFF, b"[2001:db8::1]:443")]) == "2001:db8::1"
    assert address("127.0.0.1", [(XFF, b"not-an-address")]) == "127.0.0.1"
    # No header, or only proxies in it: the peer.
    assert address("127.0.0.1", []) == "127.0.0.1"
    assert address("127.0.0.1", [(XFF, b"10.0.0.1")]) == "127.0.0.1"
    # No trusted proxies: the peer, always.
    assert TrustedProxies(())("127.0.0.1", [(XFF, b"127.0.0.2")]) == "127.0.0.1"


def test_bad_trusted_proxies_name_the_flag() -> None:
    with pytest.raises(ValueError, match=r"--trusted-proxies: 'ten\.0/8' is not an address"):
        parse_trusted_proxies(["127.0.0.1,ten.0/8"])


def test_country_from_the_database(tmp_path: Path) -> None:
    countries = CountryDb(write_country_db(tmp_path / "countries.mmdb"))
    try:
        assert countries("127.0.0.2") == "DE"
        assert countries("127.0.0.4") == "AT"
        assert countries("::1") == "AT"
        assert countries("127.0.0.1") is None  # not in the database: no country
        assert countries("garbage") is None
    finally:
        countries.close()
    (tmp_path / "bad.mmdb").write_bytes(b"not a database")
    with pytest.raises(GeoIpError, match=r"--geoip-db .*bad\.mmdb: not a readable MaxMind"):
        CountryDb(tmp_path / "bad.mmdb")


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--geoip-db", "missing.mmdb", "not a readable MaxMind database"),
        ("--trusted-proxies", "10.0.0.0/33", "is not an address or CIDR range"),
    ],
)
def test_the_edge_refuses_a_bad_flag_in_one_line(
    tmp_path: Path, flag: str, value: str, message: str
) -> None:
    if flag == "--geoip-db":
        value = str(tmp_path / value)
    done = subprocess.run(
        [*adit_command(), "edge", "--state-dir", str(tmp_path / "state"), flag, value],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(tmp_path)},
        check=False,
    )
    assert done.returncode != 0, done
    (line,) = [x for x in done.stderr.splitlines() if message in x]
    assert line.count(flag) == 1, line
