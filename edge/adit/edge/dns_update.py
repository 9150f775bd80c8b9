"""RFC 2136 dynamic updates of a zone's authoritative server, signed with TSIG (dnspython).

What a route's record is (:func:`wanted_records`), what to send to get there from what the
server holds (:func:`plan_update`, pure: rdata texts in, an update message out) and the I/O
(:class:`DnsClient`: TCP, a bounded timeout a message and a budget for all of one operation's
messages) are kept apart, so the decisions are
tested without a server and the server is only asked what it must be asked.

Safety (RFC 2136 §2.4, §3.2): every update that creates or replaces a record carries
prerequisites naming exactly what was seen when the decision was made (the name unused, or the
very rrsets that are replaced), so a record someone changed in between is never clobbered: the
server answers YXDOMAIN/YXRRSET/NXRRSET and nothing changes. A removal deletes only the
records adit wrote (one RR each, RFC 2136 §2.5.4), so it needs no prerequisite and cannot
remove someone else's record.

The TSIG secret lives in :class:`DnsTarget` only (repr hidden); dnspython's ``tsig.Key`` puts
the secret in its repr, so keys are built per message and never logged or kept.
"""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.tsig
import dns.update

from adit.edge.errors import DnsRecordConflict, DnsUpdateFailed

__all__ = [
    "ACME_CHALLENGE_TTL",
    "DEFAULT_TSIG_ALGORITHM",
    "DNS_BUDGET",
    "DNS_TIMEOUT",
    "RECORD_TTL",
    "TSIG_ALGORITHMS",
    "DnsClient",
    "DnsTarget",
    "RecordChange",
    "check_tsig_name",
    "parse_server",
    "parse_tsig_secret",
    "plan_update",
    "wanted_records",
]

#: Seconds one message (query or update) may take...
DNS_TIMEOUT = 5.0
#: ...and all the messages of one client (one route command: up to six), well inside the CLI's
#: 15 s wait for the API, so the user reads the server's failure, not a timed-out request.
DNS_BUDGET = 10.0
#: TTL of a route's record: Cloudflare's "auto" TTL.
RECORD_TTL = 300
#: TTL of a DNS-01 TXT record: short, it lives for one validation (RFC 8555 §8.4).
ACME_CHALLENGE_TTL = 60
DEFAULT_TSIG_ALGORITHM = "hmac-sha256"
#: The HMAC algorithms RFC 8945 §6 lists as mandatory or recommended (no MD5).
TSIG_ALGORITHMS = ("hmac-sha1", "hmac-sha224", "hmac-sha256", "hmac-sha384", "hmac-sha512")
#: The types a route's record may be; any of them at the name is "a record with that host".
ROUTE_TYPES = ("CNAME", "A", "AAAA")


@dataclass(frozen=True)
class DnsTarget:
    """Where and how a zone is updated: its primary server and a TSIG key."""

    host: str
    port: int
    tsig_name: str
    tsig_algorithm: str = DEFAULT_TSIG_ALGORITHM
    tsig_secret: bytes = field(default=b"", repr=False)

    @property
    def server(self) -> str:
        """``host:port`` as error messages name it."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class RecordChange(enum.StrEnum):
    """What an update did to a route's record."""

    NEW = "new"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


def parse_server(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` (port 53 when absent) → (host, port); ValueError."""
    text = text.strip()
    host, port = text, "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r} is not HOST:PORT")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (a port from 1 to 65535)")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{host!r} is not an IP address: name the server by address, so an update never "
            "depends on the DNS it changes"
        ) from None
    return host, int(port)


_KEY_NAME = re.compile(r"[A-Za-z0-9_][-A-Za-z0-9_]*(\.[A-Za-z0-9_][-A-Za-z0-9_]*)*\.?")


def check_tsig_name(name: str) -> str:
    """A TSIG key name as servers spell them (``adit-edge``, ``key.example.com``); ValueError."""
    if len(name) > 253 or not _KEY_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is no TSIG key name (letters, digits, -, _ and dots)")
    return name.rstrip(".")


_KEY_CLAUSE = re.compile(r'key\s+"?([^"\s{]+)"?\s*\{')
_ALGORITHM_CLAUSE = re.compile(r"algorithm\s+\"?([-\w.]+)\"?\s*;")
_SECRET_CLAUSE = re.compile(r'secret\s+"([^"]+)"\s*;')


def parse_tsig_secret(text: str) -> tuple[bytes, str | None, str | None]:
    """A TSIG secret file: either the base64 secret alone, or a BIND ``key "NAME" { algorithm
    A; secret "..."; };`` clause (what ``tsig-keygen`` prints). Returns (secret, name or None,
    algorithm or None); ValueError without a usable secret."""
    name = algorithm = None
    found = _SECRET_CLAUSE.search(text)
    if found is not None:
        encoded = found.group(1)
        key = _KEY_CLAUSE.search(text)
        name = key.group(1) if key else None
        alg = _ALGORITHM_CLAUSE.search(text)
        algorithm = alg.group(1).lower() if alg else None
    else:
        encoded = "".join(text.split())
    try:
        secret = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            "the secret is not base64 (tsig-keygen's key file, or its secret)"
        ) from None
    if len(secret) < 16:
        raise ValueError("the secret is shorter than 16 bytes (make one with tsig-keygen)")
    return secret, name, algorithm


def wanted_records(
    host: str, zone: str, public_name: str, public_addresses: Sequence[str]
) -> dict[str, tuple[str, ...]]:
    """The records that route ``host`` to the edge: a CNAME to its public name, or at the
    zone's apex (where a CNAME cannot be, RFC 1034 §3.6.2) A and AAAA of its public addresses.
    ValueError when the edge has not been told the name or addresses it needs."""
    if host != zone:
        if not public_name:
            raise ValueError("the edge has no --public-name for its routes' CNAME records")
        return {"CNAME": (_absolute(public_name),)}
    addresses = [ipaddress.ip_address(a) for a in public_addresses]
    if not addresses:
        raise ValueError(
            f"{host} is the zone's apex, where a CNAME cannot be: the edge needs "
            "--public-address for its A/AAAA records"
        )
    wanted: dict[str, tuple[str, ...]] = {}
    v4 = sorted({str(a) for a in addresses if a.version == 4})
    v6 = sorted({str(a) for a in addresses if a.version == 6})
    if v4:
        wanted["A"] = tuple(v4)
    if v6:
        wanted["AAAA"] = tuple(v6)
    return wanted


def _absolute(name: str) -> str:
    return dns.name.from_text(name).to_text().lower()


def _normalised(rdtype: str, values: Sequence[str]) -> tuple[str, ...]:
    if rdtype == "CNAME":
        return tuple(sorted({_absolute(v) for v in values}))
    return tuple(sorted({str(ipaddress.ip_address(v)) for v in values}))


def plan_update(
    zone: str,
    host: str,
    existing: Mapping[str, Sequence[str]],
    wanted: Mapping[str, Sequence[str]],
    *,
    overwrite: bool,
) -> tuple[RecordChange, dns.update.UpdateMessage | None]:
    """What to send so that ``host`` holds ``wanted`` given the CNAME/A/AAAA rrsets the server
    holds (``existing``); None when nothing is to be sent. :class:`DnsRecordConflict` when
    another record is there and ``overwrite`` was not asked."""
    have = {t: _normalised(t, existing.get(t, ())) for t in ROUTE_TYPES}
    want = {t: _normalised(t, wanted.get(t, ())) for t in ROUTE_TYPES}
    if have == want:
        return RecordChange.UNCHANGED, None
    update = dns.update.UpdateMessage(_absolute(zone))
    name = _absolute(host)
    apex = _absolute(host) == _absolute(zone)
    if not any(have.values()):
        if apex:
            # SOA and NS live at an apex: only the route's own types must be missing.
            for rdtype in ROUTE_TYPES:
                update.absent(name, rdtype)
        else:
            # Nothing at all may be at the name: a CNAME shares it with no other record, and a
            # server ignores a CNAME added next to one (RFC 2136 §3.4.2.2) rather than refuse.
            update.absent(name)
        change = RecordChange.NEW
    else:
        if not overwrite:
            shown = ", ".join(f"{t} {' '.join(v)}" for t, v in have.items() if v)
            raise DnsRecordConflict(
                f"An A, AAAA, or CNAME record with that host already exists: {host} has "
                f"{shown} (use --overwrite-dns to replace it)"
            )
        # Exactly what was seen, or the server changes nothing (§2.4.2, §2.4.3).
        for rdtype, values in have.items():
            if values:
                update.present(name, _rdataset(rdtype, values, 0))
            else:
                update.absent(name, rdtype)
            update.delete(name, rdtype)
        change = RecordChange.UPDATED
    for rdtype, values in want.items():
        if values:
            update.add(name, _rdataset(rdtype, values, RECORD_TTL))
    return change, update


def _rdataset(rdtype: str, values: Sequence[str], ttl: int) -> dns.rdataset.Rdataset:
    return dns.rdataset.from_text_list(dns.rdataclass.IN, rdtype, ttl, list(values))


_TSIG_ERRORS = {
    dns.tsig.PeerBadKey: "BADKEY: the server does not know the TSIG key name (or algorithm)",
    dns.tsig.PeerBadSignature: "BADSIG: the TSIG secret is not the server's",
    dns.tsig.PeerBadTime: "BADTIME: this host's clock and the server's differ too much",
    dns.tsig.PeerBadTruncation: "BADTRUNC: the server refused the TSIG MAC's length",
}

_RCODE_HINTS = {
    dns.rcode.NOTAUTH: "NOTAUTH: the server is not authoritative for the zone, or refused "
    "the TSIG key",
    dns.rcode.REFUSED: "REFUSED: the server's policy (allow-update / update-policy) does not "
    "let this key update the zone",
    dns.rcode.NOTZONE: "NOTZONE: the name is outside the zone",
    dns.rcode.SERVFAIL: "SERVFAIL: the server failed to apply the update",
}


_QUERY_HINTS = {
    **_RCODE_HINTS,
    dns.rcode.REFUSED: "REFUSED: the server does not serve that zone to this host (not one of "
    "its zones, or allow-query)",
}


class DnsClient:
    """Queries and updates one zone at its target server."""

    def __init__(
        self,
        target: DnsTarget,
        zone: str,
        *,
        timeout: float = DNS_TIMEOUT,
        budget: float = DNS_BUDGET,
    ) -> None:
        self.target = target
        self.zone = _absolute(zone)
        self.timeout = timeout
        self.budget = budget
        self._deadline: float | None = None  # set by the first message

    def _sign(self, message: dns.message.Message) -> None:
        # A key object per message: tsig.Key's repr prints the secret, so none is kept.
        key = dns.tsig.Key(
            self.target.tsig_name, self.target.tsig_secret, self.target.tsig_algorithm
        )
        message.use_tsig(key)

    async def _exchange(self, message: dns.message.Message, what: str) -> dns.message.Message:
        self._sign(message)
        where = f"DNS server {self.target.server} (zone {self.zone.rstrip('.')})"
        now = time.monotonic()
        if self._deadline is None:
            self._deadline = now + self.budget
        timeout = min(self.timeout, self._deadline - now)
        if timeout <= 0:
            raise DnsUpdateFailed(f"{where} did not finish its answers within {self.budget:g}s")
        # Imported here: dnspython's asyncquery brings its QUIC and HTTPS clients (a tenth of
        # a second), which every `adit edge` command would pay for otherwise.
        import dns.asyncquery

        try:
            reply = await dns.asyncquery.tcp(
                message, self.target.host, timeout=timeout, port=self.target.port
            )
        except dns.exception.Timeout:
            raise DnsUpdateFailed(f"{where} did not answer {what} within {timeout:g}s") from None
        except dns.tsig.PeerError as exc:
            reason = next((r for k, r in _TSIG_ERRORS.items() if isinstance(exc, k)), "TSIG error")
            raise DnsUpdateFailed(f"{where} refused {what}: {reason}") from None
        except (dns.tsig.BadSignature, dns.tsig.BadKey, dns.tsig.BadTime):
            raise DnsUpdateFailed(
                f"{where} answered {what} with a TSIG signature that does not check out"
            ) from None
        except (OSError, EOFError, dns.exception.DNSException) as exc:
            reason = (
                exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            )
            raise DnsUpdateFailed(f"{where} could not be reached for {what}: {reason}") from None
        return reply

    async def records(
        self, host: str, rdtypes: Sequence[str] = ROUTE_TYPES
    ) -> dict[str, tuple[str, ...]]:
        """The rrsets the server holds at ``host``, by type (its own answer, not a cache's)."""
        name = _absolute(host)
        found: dict[str, tuple[str, ...]] = {}
        for rdtype in rdtypes:
            query = dns.message.make_query(name, rdtype)
            query.flags &= ~dns.flags.RD
            reply = await self._exchange(query, f"a query for {host.rstrip('.')} {rdtype}")
            rcode = reply.rcode()
            if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                reason = _QUERY_HINTS.get(rcode, dns.rcode.to_text(rcode))
                raise DnsUpdateFailed(
                    f"DNS server {self.target.server} (zone {self.zone.rstrip('.')}) refused "
                    f"a query for {host.rstrip('.')} {rdtype}: {reason}"
                )
            wanted_type = dns.rdatatype.from_text(rdtype)
            found[rdtype] = tuple(
                rdata.to_text()
                for rrset in reply.answer
                if rrset.name == dns.name.from_text(name) and rrset.rdtype == wanted_type
                for rdata in rrset
            )
        return found

    async def check_zone(self) -> None:
        """Ask for the zone's SOA with the key: the server answers, knows the key and serves
        the zone (whether the key may update it shows at the first update)."""
        soa = await self.records(self.zone, ["SOA"])
        if not soa["SOA"]:
            raise DnsUpdateFailed(
                f"DNS server {self.target.server} does not serve zone {self.zone.rstrip('.')}"
                " (no SOA record in its answer)"
            )

    async def send(self, update: dns.update.UpdateMessage, what: str) -> None:
        """Send one update; :class:`DnsUpdateFailed` (or :class:`DnsRecordConflict` when a
        prerequisite failed) naming the server and its reason."""
        reply = await self._exchange(update, what)
        rcode = reply.rcode()
        if rcode == dns.rcode.NOERROR:
            return
        if rcode in (dns.rcode.YXDOMAIN, dns.rcode.YXRRSET, dns.rcode.NXRRSET, dns.rcode.NXDOMAIN):
            raise DnsRecordConflict(
                f"DNS server {self.target.server} refused {what}: "
                f"{dns.rcode.to_text(rcode)}: the name holds records other than adit "
                "expected (another record, or one changed meanwhile); look at them and try again"
                " (--overwrite-dns replaces CNAME, A and AAAA records)"
            )
        raise DnsUpdateFailed(
            f"DNS server {self.target.server} (zone {self.zone.rstrip('.')}) refused {what}: "
            f"{_RCODE_HINTS.get(rcode, dns.rcode.to_text(rcode))}"
        )

    async def put_route(
        self, host: str, wanted: Mapping[str, Sequence[str]], *, overwrite: bool
    ) -> RecordChange:
        """Make ``host`` hold ``wanted`` (and no other CNAME/A/AAAA)."""
        existing = await self.records(host)
        change, update = plan_update(self.zone, host, existing, wanted, overwrite=overwrite)
        if update is None:
            return change
        await self.send(update, f"the update of {host}")
        # A server applies an update it accepts whole; a CNAME next to other data is the one
        # case it skips silently (RFC 2136 §3.4.2.2), so look.
        after = await self.records(host, list(wanted))
        if any(_normalised(t, after.get(t, ())) != _normalised(t, v) for t, v in wanted.items()):
            raise DnsRecordConflict(
                f"DNS server {self.target.server} accepted the update of {host} but does not "
                "hold its record: other records at that name keep a CNAME out; remove them"
            )
        return change

    async def remove_route(self, host: str, records: Mapping[str, Sequence[str]]) -> None:
        """Delete the given records at ``host``, one RR each: others stay."""
        update = dns.update.UpdateMessage(self.zone)
        name = _absolute(host)
        for rdtype, values in records.items():
            for value in values:
                update.delete(name, _rdataset(rdtype, [value], 0)[0])
        await self.send(update, f"the removal of {host}'s record")

    async def add_txt(self, name: str, value: str, ttl: int = ACME_CHALLENGE_TTL) -> None:
        """Add one TXT record (others at the name stay: an apex and its wildcard validate
        with two values at one name, RFC 8555 §8.4)."""
        update = dns.update.UpdateMessage(self.zone)
        update.add(_absolute(name), ttl, "TXT", _txt(value))
        await self.send(update, f"the TXT record at {name}")

    async def remove_txt(self, name: str, value: str) -> None:
        """Delete one TXT record (a no-op when it is not there)."""
        update = dns.update.UpdateMessage(self.zone)
        update.delete(_absolute(name), "TXT", _txt(value))
        await self.send(update, f"the removal of the TXT record at {name}")


def _txt(value: str) -> str:
    if not value.isascii() or '"' in value or "\\" in value or len(value) > 255:
        raise ValueError("a TXT value here is at most 255 printable ASCII characters, no quotes")
    return f'"{value}"'
