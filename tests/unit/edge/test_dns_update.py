"""RFC 2136 decisions without a server: which records a route wants, what an update holds
(prerequisites first), the admin's inputs; and the bounded timeout against a silent peer."""

from __future__ import annotations

import asyncio
import base64
import socket

import dns.rdataclass
import dns.rdatatype
import pytest

from adit.edge.dns_update import (
    DnsClient,
    DnsTarget,
    RecordChange,
    parse_server,
    parse_tsig_secret,
    plan_update,
    wanted_records,
)
from adit.edge.errors import DnsRecordConflict, DnsUpdateFailed

ZONE = "example.com"
CNAME = {"CNAME": ("edge.example.net.",)}


def _sections(update: object) -> tuple[list[str], list[str]]:
    prerequisite = [r.to_text() for r in update.prerequisite]  # type: ignore[attr-defined]
    changes = [r.to_text() for r in update.update]  # type: ignore[attr-defined]
    return prerequisite, changes


def test_wanted_records_cname_below_apex_and_addresses_at_apex() -> None:
    assert wanted_records("app.example.com", ZONE, "Edge.Example.NET", ()) == CNAME
    assert wanted_records(
        "example.com", ZONE, "edge.example.net", ["2001:db8::1", "192.0.2.1"]
    ) == {
        "A": ("192.0.2.1",),
        "AAAA": ("2001:db8::1",),
    }
    with pytest.raises(ValueError, match="--public-name"):
        wanted_records("app.example.com", ZONE, "", ["192.0.2.1"])
    with pytest.raises(ValueError, match="--public-address"):
        wanted_records("example.com", ZONE, "edge.example.net", [])


def test_new_record_requires_the_name_unused() -> None:
    change, update = plan_update(ZONE, "app.example.com", {}, CNAME, overwrite=False)
    assert change is RecordChange.NEW and update is not None
    prerequisite, changes = _sections(update)
    # RFC 2136 §2.4.5: "Name Is Not In Use" is class NONE, type ANY.
    assert prerequisite == ["app.example.com. NONE ANY"]
    assert changes == ["app.example.com. 300 IN CNAME edge.example.net."]


def test_new_apex_records_require_only_their_types_absent() -> None:
    wanted = wanted_records(ZONE, ZONE, "", ["192.0.2.1"])
    _, update = plan_update(ZONE, ZONE, {}, wanted, overwrite=False)
    prerequisite, changes = _sections(update)
    assert prerequisite == [f"{ZONE}. NONE {t}" for t in ("CNAME", "A", "AAAA")]
    assert changes == [f"{ZONE}. 300 IN A 192.0.2.1"]


def test_same_records_send_nothing() -> None:
    assert plan_update(
        ZONE, "app.example.com", {"CNAME": ["EDGE.example.net."]}, CNAME, overwrite=False
    ) == (RecordChange.UNCHANGED, None)


def test_other_record_refused_without_overwrite() -> None:
    with pytest.raises(DnsRecordConflict, match=r"already exists: app.example.com has A 192\.0"):
        plan_update(ZONE, "app.example.com", {"A": ["192.0.2.99"]}, CNAME, overwrite=False)


def test_overwrite_requires_exactly_what_was_seen() -> None:
    change, update = plan_update(
        ZONE, "app.example.com", {"A": ["192.0.2.99"]}, CNAME, overwrite=True
    )
    assert change is RecordChange.UPDATED
    prerequisite, changes = _sections(update)
    # §2.4.2 value-dependent for the A rrset seen, §2.4.3 absent for the types that were not.
    assert prerequisite == [
        "app.example.com. NONE CNAME",
        "app.example.com. 0 IN A 192.0.2.99",
        "app.example.com. NONE AAAA",
    ]
    assert changes == [
        "app.example.com. ANY CNAME",
        "app.example.com. ANY A",
        "app.example.com. ANY AAAA",
        "app.example.com. 300 IN CNAME edge.example.net.",
    ]
    assert update is not None
    assert all(
        r.rdclass != dns.rdataclass.ANY or r.rdtype != dns.rdatatype.ANY for r in update.update
    )


def test_parse_server() -> None:
    assert parse_server("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_server("192.0.2.1") == ("192.0.2.1", 53)
    assert parse_server("[2001:db8::1]:53") == ("2001:db8::1", 53)
    assert parse_server("2001:db8::1") == ("2001:db8::1", 53)
    for bad in ("ns1.example.com:53", "127.0.0.1:0", "127.0.0.1:x", ":53"):
        with pytest.raises(ValueError, match=r"HOST:PORT|not an IP address"):
            parse_server(bad)


def test_parse_tsig_secret_reads_tsig_keygen_output_or_the_secret_alone() -> None:
    secret = bytes(range(32))
    encoded = base64.b64encode(secret).decode()
    keygen = f'key "adit-edge" {{\n\talgorithm hmac-sha512;\n\tsecret "{encoded}";\n}};\n'
    assert parse_tsig_secret(keygen) == (secret, "adit-edge", "hmac-sha512")
    assert parse_tsig_secret(encoded + "\n") == (secret, None, None)
    with pytest.raises(ValueError, match="base64"):
        parse_tsig_secret("not base64!")
    with pytest.raises(ValueError, match="shorter"):
        parse_tsig_secret(base64.b64encode(b"short").decode())


def test_target_repr_hides_the_secret() -> None:
    target = DnsTarget("127.0.0.1", 53, "k", tsig_secret=b"s3cr3t-bytes-here")
    assert "s3cr3t" not in repr(target)


def test_a_silent_server_times_out_with_its_address() -> None:
    # A TCP listener that never accepts: the connection is made (the backlog) and no answer
    # ever comes, so only the timeout ends the exchange.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        target = DnsTarget("127.0.0.1", port, "k", tsig_secret=b"0" * 32)
        client = DnsClient(target, ZONE, timeout=0.5)
        with pytest.raises(DnsUpdateFailed, match=rf"127\.0\.0\.1:{port}.*did not answer.*0\.5s"):
            asyncio.run(client.records("app.example.com"))
        # One operation's messages share a budget: the first one here gets all of it, and a
        # second could not start.
        client = DnsClient(target, ZONE, timeout=5, budget=0.3)
        with pytest.raises(DnsUpdateFailed, match=r"did not answer .* within 0\.3s"):
            asyncio.run(client.records("app.example.com"))
        with pytest.raises(DnsUpdateFailed, match=r"did not finish its answers within 0\.3s"):
            asyncio.run(client.records("app.example.com"))
