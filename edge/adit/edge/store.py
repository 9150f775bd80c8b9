"""The edge's state: accounts, API tokens, tunnels, zones, hostname routes and private-network
(IP) routes, in one SQLite file.

Invariants:

* An API token belongs to exactly one account; only a SHA-256 of its secret part is stored and
  comparison is constant-time. The plaintext exists once, in ``IssuedToken``.
* Every tunnel and route query is scoped by account tag; nothing here returns another
  account's rows to a caller that names an account.
* A tunnel name is unique per account among non-deleted tunnels (a partial unique index).
* A zone (``example.com``) belongs to one account and overlaps no other account's zone; the
  edge's admin gives zones (:mod:`adit.edge.names` says which names can be zones). A route lies
  inside a zone of its account; a hostname routes to at most one tunnel. The one exception is
  the edge's own quick tunnel (:meth:`Store.route_quick_tunnel`).
* Routes are served from memory (:class:`~adit.edge.route_table.RouteTable`): loaded once,
  rebuilt at once after this process changes routes, and by :meth:`Store.watch_routes` when
  another process did (the ``routes`` counter, bumped in the same transaction as the change).
* Virtual networks and IP routes follow Cloudflare's rules (:mod:`adit.edge.private_networks`,
  reached as :attr:`Store.private`) and are served from memory the same way
  (:meth:`Store.private_route`, the ``private_routes`` counter). A tunnel with live IP routes
  is deleted only with ``cascade``, which deletes its routes too.

Threads (see :mod:`adit.edge.database`): reads run on the caller's thread and take no write
lock; every write is one ``BEGIN IMMEDIATE`` transaction bounded by a deadline, and the edge's
event loop hands writes to :meth:`Store.off_loop`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import hashlib
import hmac
import os
import secrets
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ParamSpec, TypeVar

from adit.edge.access.ssh_ca import SCHEMA as SSH_CA_SCHEMA
from adit.edge.access.ssh_ca import TABLES as SSH_CA_TABLES
from adit.edge.access.store import SCHEMA as ACCESS_SCHEMA
from adit.edge.access.store import TABLES as ACCESS_TABLES
from adit.edge.access.store import AccessStore
from adit.edge.database import DEFAULT_WRITE_TIMEOUT, Database
from adit.edge.database import decode_time as _parse_ts
from adit.edge.database import encode_time as _ts
from adit.edge.errors import (
    AccountNotFound,
    HostnameConflict,
    HostnameNotRouted,
    HostnameOutsideZones,
    HostnameRefused,
    HostnameTaken,
    InvalidName,
    IpRouteConflict,
    IpRouteNotFound,
    NetworkRefused,
    StoreBusy,
    StoreError,
    TunnelDeleted,
    TunnelHasRoutes,
    TunnelNameConflict,
    TunnelNotFound,
    VirtualNetworkInUse,
    VirtualNetworkIsDefault,
    VirtualNetworkNameConflict,
    VirtualNetworkNotFound,
    WeakSecret,
    ZoneNotFound,
    ZoneRefused,
    ZoneTaken,
)
from adit.edge.live_table import TableWatcher
from adit.edge.names import (
    QUICK_TUNNEL_DOMAIN,
    check_name,
    check_route_name,
    check_secret,
    check_zone_name,
    zone_for_route,
)
from adit.edge.private_networks import SCHEMA as PRIVATE_NETWORKS_SCHEMA
from adit.edge.private_networks import TABLES as PRIVATE_NETWORKS_TABLES
from adit.edge.private_networks import (
    IpRoute,
    PrivateNetworks,
    VirtualNetwork,
    retire_tunnel_routes,
)
from adit.edge.private_routes import (
    PRIVATE_ROUTES_COUNTER,
    LivePrivateRoutes,
    PrivateRouteTable,
)
from adit.edge.route_table import ROUTES_COUNTER, LiveRoutes, Route, RouteTable
from adit.edge.tunnel_configs import SCHEMA as TUNNEL_CONFIGS_SCHEMA
from adit.edge.tunnel_configs import TABLES as TUNNEL_CONFIGS_TABLES
from adit.edge.tunnel_configs import TunnelConfigs
from adit.edge.zone_dns import SCHEMA as ZONE_DNS_SCHEMA
from adit.edge.zone_dns import TABLES as ZONE_DNS_TABLES
from adit.edge.zone_dns import Records, ZoneDnsTargets, forget_records, remember_records
from adit.edge.zone_options import SCHEMA as ZONE_OPTIONS_SCHEMA
from adit.edge.zone_options import TABLES as ZONE_OPTIONS_TABLES
from adit.edge.zone_options import LiveZoneOptions, ZoneOptions, write_zone_options
from adit.protocol.cidr import IPAddress
from adit.protocol.hostnames import (
    InvalidHostname,
    check_hostname,
    is_within,
    normalize_hostname,
)

__all__ = [
    "STORE_FILE",
    "Account",
    "AccountNotFound",
    "HostnameConflict",
    "HostnameNotRouted",
    "HostnameOutsideZones",
    "HostnameRefused",
    "HostnameTaken",
    "InvalidName",
    "IpRoute",
    "IpRouteConflict",
    "IpRouteNotFound",
    "IssuedToken",
    "NetworkRefused",
    "PrivateNetworks",
    "Route",
    "RouteChange",
    "RouteResult",
    "SecretMatch",
    "SecretRotation",
    "Store",
    "StoreBusy",
    "StoreError",
    "Tunnel",
    "TunnelDeleted",
    "TunnelHasRoutes",
    "TunnelNameConflict",
    "TunnelNotFound",
    "VirtualNetwork",
    "VirtualNetworkInUse",
    "VirtualNetworkIsDefault",
    "VirtualNetworkNameConflict",
    "VirtualNetworkNotFound",
    "WeakSecret",
    "Zone",
    "ZoneNotFound",
    "ZoneRefused",
    "ZoneTaken",
]

STORE_FILE = "adit-edge.sqlite3"

_TOKEN_PREFIX = "adit"  # noqa: S105 (a format marker, not a secret)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS accounts (
    tag TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY,
    account_tag TEXT NOT NULL REFERENCES accounts(tag),
    secret_sha256 BLOB NOT NULL,
    label TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
)""",
    """CREATE TABLE IF NOT EXISTS tunnels (
    id TEXT PRIMARY KEY,
    account_tag TEXT NOT NULL REFERENCES accounts(tag),
    name TEXT NOT NULL,
    secret BLOB NOT NULL,
    created_at TEXT NOT NULL,
    deleted_at TEXT,
    remote_config INTEGER NOT NULL DEFAULT 0
)""",
    """CREATE UNIQUE INDEX IF NOT EXISTS tunnels_live_name
    ON tunnels(account_tag, name) WHERE deleted_at IS NULL""",
    """CREATE TABLE IF NOT EXISTS secret_rotations (
    tunnel_id TEXT PRIMARY KEY REFERENCES tunnels(id),
    previous_secret BLOB NOT NULL,
    started_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS routes (
    hostname TEXT PRIMARY KEY,
    account_tag TEXT NOT NULL REFERENCES accounts(tag),
    tunnel_id TEXT NOT NULL REFERENCES tunnels(id),
    created_at TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS zones (
    name TEXT PRIMARY KEY,
    account_tag TEXT NOT NULL REFERENCES accounts(tag),
    created_at TEXT NOT NULL
)""",
    # Bumped by every write that changes what a hostname routes to, in the same transaction:
    # another process's edge sees that its route table is stale by reading one row.
    """CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
)""",
    f"INSERT OR IGNORE INTO counters (name, value) VALUES ('{ROUTES_COUNTER}', 0)",  # noqa: S608 (a constant)
    *PRIVATE_NETWORKS_SCHEMA,
    *TUNNEL_CONFIGS_SCHEMA,
    *ZONE_DNS_SCHEMA,
    *ZONE_OPTIONS_SCHEMA,
    *ACCESS_SCHEMA,
    *SSH_CA_SCHEMA,
)
_TABLES = frozenset(
    {"accounts", "api_tokens", "tunnels", "secret_rotations", "routes", "zones", "counters"}
    | PRIVATE_NETWORKS_TABLES
    | TUNNEL_CONFIGS_TABLES
    | ZONE_DNS_TABLES
    | ZONE_OPTIONS_TABLES
    | ACCESS_TABLES
    | SSH_CA_TABLES
)
_COUNTERS = (ROUTES_COUNTER, PRIVATE_ROUTES_COUNTER)
_BUMP_ROUTES = f"UPDATE counters SET value = value + 1 WHERE name = '{ROUTES_COUNTER}'"  # noqa: S608

P = ParamSpec("P")
T = TypeVar("T")


class RouteChange(enum.StrEnum):
    """cloudflared's ``cname`` change values."""

    NEW = "new"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class Account:
    """An account (a tenant of the edge)."""

    tag: str
    name: str
    created_at: datetime.datetime


@dataclass(frozen=True)
class IssuedToken:
    """A freshly created API token: the only time its plaintext exists."""

    token_id: str
    account_tag: str
    token: str = field(repr=False)


@dataclass(frozen=True)
class Tunnel:
    """A named tunnel."""

    id: uuid.UUID
    account_tag: str
    name: str
    secret: bytes = field(repr=False)
    created_at: datetime.datetime
    deleted_at: datetime.datetime | None = None
    remote_config: bool = False


@dataclass(frozen=True)
class SecretRotation:
    """A rotation in progress: the previous secret is still accepted until ``expires_at``."""

    tunnel_id: uuid.UUID
    started_at: datetime.datetime
    expires_at: datetime.datetime


class SecretMatch(enum.Enum):
    """Which of a tunnel's secrets a connector presented."""

    NONE = "none"
    CURRENT = "current"
    #: The secret being rotated out, still inside its rotation window.
    PREVIOUS = "previous"


@dataclass(frozen=True)
class RouteResult:
    """What ``route_hostname`` did."""

    hostname: str
    change: RouteChange


@dataclass(frozen=True)
class Zone:
    """A DNS zone of an account: routes may name it and names below it."""

    name: str
    account_tag: str
    created_at: datetime.datetime


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _secret_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


class Store:
    """SQLite-backed edge state (WAL mode, one file, mode 0600); usable from any thread."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], datetime.datetime] = _utcnow,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
    ) -> None:
        self._clock = clock
        self._db = Database(path, write_timeout=write_timeout)
        self._migrate()
        self._routes = LiveRoutes(self._db)
        self._private_routes = LivePrivateRoutes(self._db)
        self._zone_options = LiveZoneOptions(self._db)
        #: Cloudflare Access: applications, policies, tokens, keys (:mod:`adit.edge.access`).
        self.access = AccessStore(self._db, clock)
        self._watcher = TableWatcher(
            [self._routes, self._private_routes, self._zone_options, self.access.live]
        )
        #: Virtual networks and IP routes (:class:`~adit.edge.private_networks.PrivateNetworks`).
        self.private = PrivateNetworks(self._db, clock, self._private_routes)
        #: Remotely managed configurations (:class:`~adit.edge.tunnel_configs.TunnelConfigs`).
        self.configs = TunnelConfigs(self._db, clock)
        #: Zones' RFC 2136 targets (:class:`~adit.edge.zone_dns.ZoneDnsTargets`).
        self.zone_dns = ZoneDnsTargets(self._db)

    @classmethod
    def open_in(
        cls, state_dir: str | os.PathLike[str], *, write_timeout: float = DEFAULT_WRITE_TIMEOUT
    ) -> Store:
        """The store file inside an edge state directory."""
        return cls(Path(state_dir) / STORE_FILE, write_timeout=write_timeout)

    def close(self) -> None:
        """Stop watching routes, finish queued writes, close the database."""
        self._watcher.close()
        self._db.close()

    def _migrate(self) -> None:
        names = {row[0] for row in self._db.read("SELECT name FROM sqlite_master")}
        counted = "counters" in names and len(_COUNTERS) == len(
            self._db.read("SELECT name FROM counters WHERE name IN (?, ?)", _COUNTERS).fetchall()
        )
        if names >= _TABLES and counted:
            return  # nothing to create: opening takes no write lock
        with self._db.write() as db:
            for statement in _SCHEMA:
                db.execute(statement)

    def off_loop(
        self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> asyncio.Future[T]:
        """Run a write (``store.create_tunnel`` ...) on the store's writer thread and await it
        from the event loop: the loop never waits for SQLite's write lock. Raises
        :class:`StoreBusy` if the write could not start within ``write_timeout``."""
        return self._db.off_loop(call, *args, **kwargs)

    # -- accounts -------------------------------------------------------------------------

    def create_account(self, name: str) -> Account:
        """A new account with a random 32-hex tag."""
        account = Account(
            tag=secrets.token_hex(16),
            name=check_name(name, "account name"),
            created_at=self._clock(),
        )
        with self._db.write() as db:
            db.execute(
                "INSERT INTO accounts (tag, name, created_at) VALUES (?, ?, ?)",
                (account.tag, account.name, _ts(account.created_at)),
            )
        return account

    def get_account(self, tag: str) -> Account | None:
        """The account with that tag, if any."""
        row = self._db.read(
            "SELECT tag, name, created_at FROM accounts WHERE tag = ?", (tag,)
        ).fetchone()
        if row is None:
            return None
        created = _parse_ts(row[2])
        assert created is not None
        return Account(tag=row[0], name=row[1], created_at=created)

    def list_accounts(self) -> list[Account]:
        """Every account, oldest first."""
        rows = self._db.read("SELECT tag, name, created_at FROM accounts ORDER BY created_at")
        return [
            Account(tag=r[0], name=r[1], created_at=datetime.datetime.fromisoformat(r[2]))
            for r in rows
        ]

    @staticmethod
    def _require_account(db: sqlite3.Connection, account_tag: str) -> None:
        if db.execute("SELECT 1 FROM accounts WHERE tag = ?", (account_tag,)).fetchone() is None:
            raise AccountNotFound(f"account {account_tag} does not exist")

    # -- API tokens -----------------------------------------------------------------------

    def create_api_token(self, account_tag: str, label: str = "") -> IssuedToken:
        """A new bearer token for one account: ``adit.<id>.<secret>``; only a hash is kept."""
        check_name(label, "token label", allow_empty=True)
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        with self._db.write() as db:
            self._require_account(db, account_tag)
            db.execute(
                "INSERT INTO api_tokens (id, account_tag, secret_sha256, label, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (token_id, account_tag, _secret_digest(secret), label, _ts(self._clock())),
            )
        return IssuedToken(
            token_id=token_id,
            account_tag=account_tag,
            token=f"{_TOKEN_PREFIX}.{token_id}.{secret}",
        )

    def authenticate(self, token: str) -> str | None:
        """The account tag a bearer token belongs to, or None (unknown, revoked, malformed)."""
        prefix, _, rest = token.partition(".")
        token_id, _, secret = rest.partition(".")
        digest = _secret_digest(secret)
        row = self._db.read(
            "SELECT account_tag, secret_sha256 FROM api_tokens WHERE id = ? AND revoked_at IS NULL",
            (token_id,),
        ).fetchone()
        # Compare even when the ID is unknown, so timing says nothing about which IDs exist.
        stored: bytes = row[1] if row is not None else b"\0" * len(digest)
        matches = hmac.compare_digest(digest, stored)
        if row is None or not matches or prefix != _TOKEN_PREFIX or not secret:
            return None
        account_tag: str = row[0]
        return account_tag

    def revoke_api_token(self, token_id: str) -> bool:
        """Revoke a token by ID; False when there was no such live token."""
        with self._db.write() as db:
            cursor = db.execute(
                "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (_ts(self._clock()), token_id),
            )
        return cursor.rowcount > 0

    # -- tunnels --------------------------------------------------------------------------

    _TUNNEL_COLUMNS = "id, account_tag, name, secret, created_at, deleted_at, remote_config"

    @staticmethod
    def _tunnel(row: tuple[str, str, str, bytes, str, str | None, int]) -> Tunnel:
        created = _parse_ts(row[4])
        assert created is not None
        return Tunnel(
            id=uuid.UUID(row[0]),
            account_tag=row[1],
            name=row[2],
            secret=bytes(row[3]),
            created_at=created,
            deleted_at=_parse_ts(row[5]),
            remote_config=bool(row[6]),
        )

    def create_tunnel(
        self,
        account_tag: str,
        name: str,
        secret: bytes | None = None,
        *,
        remote_config: bool = False,
    ) -> Tunnel:
        """A new tunnel; ``secret`` defaults to 32 random bytes, a given one must not be weak
        (:class:`WeakSecret`)."""
        tunnel = Tunnel(
            id=uuid.uuid4(),
            account_tag=account_tag,
            name=check_name(name, "tunnel name"),
            secret=check_secret(secret) if secret is not None else secrets.token_bytes(32),
            created_at=self._clock(),
            remote_config=remote_config,
        )
        with self._db.write() as db:
            self._require_account(db, account_tag)
            try:
                db.execute(
                    "INSERT INTO tunnels (id, account_tag, name, secret, created_at, deleted_at,"
                    " remote_config) VALUES (?, ?, ?, ?, ?, NULL, ?)",
                    (
                        str(tunnel.id),
                        account_tag,
                        name,
                        tunnel.secret,
                        _ts(tunnel.created_at),
                        int(remote_config),
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise TunnelNameConflict("tunnel with name already exists") from exc
        return tunnel

    def get_tunnel(self, account_tag: str, tunnel_id: uuid.UUID) -> Tunnel | None:
        """The account's tunnel with that ID (deleted ones included), or None."""
        row = self._db.read(
            f"SELECT {self._TUNNEL_COLUMNS} FROM tunnels WHERE id = ? AND account_tag = ?",  # noqa: S608 (fixed fragments)
            (str(tunnel_id), account_tag),
        ).fetchone()
        return None if row is None else self._tunnel(row)

    def list_tunnels(
        self,
        account_tag: str,
        *,
        name: str | None = None,
        name_prefix: str | None = None,
        exclude_prefix: str | None = None,
        is_deleted: bool | None = None,
        tunnel_id: uuid.UUID | None = None,
        existed_at: datetime.datetime | None = None,
    ) -> list[Tunnel]:
        """The account's tunnels matching every given filter, oldest first."""
        where = ["account_tag = ?"]
        args: list[object] = [account_tag]
        if name is not None:
            where.append("name = ?")
            args.append(name)
        if name_prefix is not None:
            where.append("substr(name, 1, ?) = ?")
            args.extend([len(name_prefix), name_prefix])
        if exclude_prefix is not None:
            where.append("substr(name, 1, ?) != ?")
            args.extend([len(exclude_prefix), exclude_prefix])
        if is_deleted is True:
            where.append("deleted_at IS NOT NULL")
        elif is_deleted is False:
            where.append("deleted_at IS NULL")
        if tunnel_id is not None:
            where.append("id = ?")
            args.append(str(tunnel_id))
        rows = self._db.read(
            f"SELECT {self._TUNNEL_COLUMNS} FROM tunnels WHERE {' AND '.join(where)}"  # noqa: S608 (fixed fragments)
            " ORDER BY created_at, id",
            args,
        ).fetchall()
        tunnels = [self._tunnel(r) for r in rows]
        if existed_at is not None:
            tunnels = [
                t
                for t in tunnels
                if t.created_at <= existed_at
                and (t.deleted_at is None or t.deleted_at > existed_at)
            ]
        return tunnels

    def delete_tunnel(
        self, account_tag: str, tunnel_id: uuid.UUID, *, cascade: bool = False
    ) -> Tunnel:
        """Mark the tunnel deleted and drop its hostname routes. A tunnel with live IP routes
        is refused (:class:`TunnelHasRoutes`) unless ``cascade``, which deletes them too."""
        with self._db.write() as db:
            row = db.execute(
                f"SELECT {self._TUNNEL_COLUMNS} FROM tunnels WHERE id = ? AND account_tag = ?",  # noqa: S608 (fixed fragments)
                (str(tunnel_id), account_tag),
            ).fetchone()
            if row is None:
                raise TunnelNotFound(f"tunnel {tunnel_id} not found")
            tunnel = self._tunnel(row)
            if tunnel.deleted_at is not None:
                raise TunnelDeleted(f"Tunnel {tunnel_id} has already been deleted")
            deleted_at = self._clock()
            retired = retire_tunnel_routes(db, tunnel_id, cascade=cascade, now=deleted_at)
            db.execute(
                "UPDATE tunnels SET deleted_at = ? WHERE id = ?", (_ts(deleted_at), str(tunnel_id))
            )
            dropped = db.execute("DELETE FROM routes WHERE tunnel_id = ?", (str(tunnel_id),))
            if dropped.rowcount:
                db.execute(_BUMP_ROUTES)
            db.execute("DELETE FROM secret_rotations WHERE tunnel_id = ?", (str(tunnel_id),))
        if dropped.rowcount:
            self._routes.changed()
        if retired:
            self._private_routes.changed()
        return dataclasses.replace(tunnel, deleted_at=deleted_at)

    def verify_tunnel_secret(self, tunnel_id: uuid.UUID, account_tag: str, secret: bytes) -> bool:
        """Whether a connector's TunnelAuth matches a live tunnel (constant-time compare)."""
        return self.match_tunnel_secret(tunnel_id, account_tag, secret) is not SecretMatch.NONE

    def match_tunnel_secret(
        self, tunnel_id: uuid.UUID, account_tag: str, secret: bytes
    ) -> SecretMatch:
        """Which secret of a live tunnel ``secret`` is: the current one, or the previous one
        while its rotation window is open. Both comparisons always run, in constant time.
        A read: it takes no write lock."""
        row = self._db.read(
            "SELECT t.secret, r.previous_secret, r.expires_at FROM tunnels t"
            " LEFT JOIN secret_rotations r ON r.tunnel_id = t.id"
            " WHERE t.id = ? AND t.account_tag = ? AND t.deleted_at IS NULL",
            (str(tunnel_id), account_tag),
        ).fetchone()
        current = bytes(row[0]) if row is not None else b""
        previous = bytes(row[1]) if row is not None and row[1] is not None else b""
        expires = _parse_ts(row[2]) if row is not None else None
        digest = hashlib.sha256(secret).digest()
        # Comparing digests keeps the time independent of the lengths involved.
        is_current = hmac.compare_digest(digest, hashlib.sha256(current).digest())
        is_previous = hmac.compare_digest(digest, hashlib.sha256(previous).digest())
        if row is None or not secret:
            return SecretMatch.NONE
        if is_current:
            return SecretMatch.CURRENT
        if is_previous and previous and expires is not None and self._clock() < expires:
            return SecretMatch.PREVIOUS
        return SecretMatch.NONE

    def rotate_tunnel_secret(
        self,
        account_tag: str,
        tunnel_id: uuid.UUID,
        deadline: datetime.timedelta,
        secret: bytes | None = None,
    ) -> tuple[Tunnel, SecretRotation]:
        """Give the tunnel a new secret (32 random bytes by default); the current one stays
        valid until ``deadline`` from now or :meth:`finish_rotation`. Rotating again during a
        window drops the oldest secret at once: only two secrets are ever valid."""
        new_secret = check_secret(secret) if secret is not None else secrets.token_bytes(32)
        with self._db.write() as db:
            row = db.execute(
                f"SELECT {self._TUNNEL_COLUMNS} FROM tunnels WHERE id = ? AND account_tag = ?",  # noqa: S608 (fixed fragments)
                (str(tunnel_id), account_tag),
            ).fetchone()
            if row is None:
                raise TunnelNotFound(f"tunnel {tunnel_id} not found")
            tunnel = self._tunnel(row)
            if tunnel.deleted_at is not None:
                raise TunnelDeleted(f"Tunnel {tunnel_id} has already been deleted")
            now = self._clock()
            rotation = SecretRotation(tunnel.id, now, now + deadline)
            db.execute(
                "INSERT OR REPLACE INTO secret_rotations"
                " (tunnel_id, previous_secret, started_at, expires_at) VALUES (?, ?, ?, ?)",
                (str(tunnel.id), tunnel.secret, _ts(now), _ts(rotation.expires_at)),
            )
            db.execute("UPDATE tunnels SET secret = ? WHERE id = ?", (new_secret, str(tunnel.id)))
        return dataclasses.replace(tunnel, secret=new_secret), rotation

    def rotation(self, tunnel_id: uuid.UUID) -> SecretRotation | None:
        """The tunnel's open rotation window, if any (an expired one counts as finished)."""
        row = self._db.read(
            "SELECT started_at, expires_at FROM secret_rotations WHERE tunnel_id = ?",
            (str(tunnel_id),),
        ).fetchone()
        if row is None:
            return None
        started, expires = _parse_ts(row[0]), _parse_ts(row[1])
        assert started is not None and expires is not None
        if self._clock() >= expires:
            return None
        return SecretRotation(tunnel_id, started, expires)

    def finish_rotation(self, tunnel_id: uuid.UUID) -> bool:
        """Stop accepting the previous secret; False when no rotation was open. A write: on
        the event loop, call it through :meth:`off_loop`."""
        open_window = self.rotation(tunnel_id) is not None
        with self._db.write() as db:
            db.execute("DELETE FROM secret_rotations WHERE tunnel_id = ?", (str(tunnel_id),))
        return open_window

    # -- zones ----------------------------------------------------------------------------

    def add_zone(self, account_tag: str, name: str) -> tuple[Zone, bool]:
        """Give zone ``name`` to an account: ``(zone, created)``; ``created`` is False when
        the account had it already. :class:`ZoneRefused` for names that cannot be zones,
        :class:`ZoneTaken` when it is, holds or lies in another account's zone, or holds
        another account's routes."""
        zone = Zone(check_zone_name(name), account_tag, self._clock())
        with self._db.write() as db:
            self._require_account(db, account_tag)
            for other, owner in db.execute(
                "SELECT name, account_tag FROM zones WHERE name = ?"
                " OR substr(?, -length(name) - 1) = '.' || name"
                " OR substr(name, -length(?) - 1) = '.' || ?",
                (zone.name, zone.name, zone.name, zone.name),
            ):
                if owner != account_tag:
                    raise ZoneTaken(f"{zone.name} overlaps {other}, a zone of another account")
                if other == zone.name:
                    return self._zone(db, other), False
            for (hostname,) in db.execute(
                "SELECT hostname FROM routes WHERE account_tag != ?", (account_tag,)
            ):
                if is_within(hostname.removeprefix("*."), zone.name):
                    raise ZoneTaken(f"{zone.name} holds {hostname}, routed by another account")
            db.execute(
                "INSERT INTO zones (name, account_tag, created_at) VALUES (?, ?, ?)",
                (zone.name, account_tag, _ts(zone.created_at)),
            )
        return zone, True

    @staticmethod
    def _zone(db: sqlite3.Connection, name: str) -> Zone:
        row = db.execute(
            "SELECT name, account_tag, created_at FROM zones WHERE name = ?", (name,)
        ).fetchone()
        return Zone(row[0], row[1], datetime.datetime.fromisoformat(row[2]))

    def zones(self, account_tag: str | None = None) -> list[Zone]:
        """Every zone (or one account's), by name."""
        where, args = ("WHERE account_tag = ?", (account_tag,)) if account_tag else ("", ())
        rows = self._db.read(
            f"SELECT name, account_tag, created_at FROM zones {where} ORDER BY name",  # noqa: S608 (fixed fragments)
            args,
        )
        return [Zone(r[0], r[1], datetime.datetime.fromisoformat(r[2])) for r in rows]

    def remove_zone(self, name: str) -> int:
        """Take a zone from its account, with the account's routes that no other zone of
        theirs holds (as a DNS zone's records go with it); returns how many routes went."""
        zone_name = normalize_hostname(name)
        with self._db.write() as db:
            row = db.execute(
                "SELECT account_tag FROM zones WHERE name = ?", (zone_name,)
            ).fetchone()
            if row is None:
                raise ZoneNotFound(f"no zone {zone_name}")
            account_tag = row[0]
            # Its options go too (the row cascades; the counter tells other processes).
            write_zone_options(db, zone_name, ZoneOptions())
            db.execute("DELETE FROM zones WHERE name = ?", (zone_name,))
            left = [
                z
                for (z,) in db.execute(
                    "SELECT name FROM zones WHERE account_tag = ?", (account_tag,)
                )
            ]
            dropped = [
                hostname
                for (hostname,) in db.execute(
                    "SELECT hostname FROM routes WHERE account_tag = ?", (account_tag,)
                )
                if is_within(hostname.removeprefix("*."), zone_name)
                and not any(is_within(hostname.removeprefix("*."), z) for z in left)
            ]
            db.executemany("DELETE FROM routes WHERE hostname = ?", [(h,) for h in dropped])
            if dropped:
                db.execute(_BUMP_ROUTES)
        if dropped:
            self._routes.changed()
        self._zone_options.changed()
        return len(dropped)

    def set_zone_options(self, name: str, options: ZoneOptions) -> None:
        """Set zone ``name``'s options (Always Use HTTPS, HSTS); :class:`ZoneNotFound`."""
        zone_name = normalize_hostname(name)
        with self._db.write() as db:
            if db.execute("SELECT 1 FROM zones WHERE name = ?", (zone_name,)).fetchone() is None:
                raise ZoneNotFound(f"no zone {zone_name}")
            write_zone_options(db, zone_name, options)
        self._zone_options.changed()

    def has_zone_options(self) -> bool:
        """Whether any zone has options (most edges: none, and no lookup per request)."""
        return bool(self._zone_options.current().by_zone)

    def zone_options(self, hostname: str) -> ZoneOptions:
        """The options of the zone holding normalised ``hostname`` (from memory)."""
        return self._zone_options.find(hostname)

    def refresh_zone_options(self) -> bool:
        """Rebuild the zone options if another process changed them (the watcher does this
        by itself); True when it did."""
        return self._zone_options.refresh()

    def zone_options_of(self, name: str) -> ZoneOptions:
        """Zone ``name``'s own options, read from the store."""
        return self._zone_options.reload().by_zone.get(normalize_hostname(name), ZoneOptions())

    # -- hostname routes ------------------------------------------------------------------

    def route_hostname(
        self,
        account_tag: str,
        tunnel_id: uuid.UUID,
        hostname: str,
        *,
        overwrite: bool = False,
        dns_records: Records | None = None,
    ) -> RouteResult:
        """Route ``hostname`` (``*.example.com`` allowed) to one of the account's tunnels; it
        must lie in one of the account's zones (:class:`HostnameOutsideZones`). With
        ``dns_records``, the records its zone's server holds for it are kept with the route."""
        host = check_route_name(hostname)
        with self._db.write() as db:
            zone = self._route_zone(db, account_tag, tunnel_id, host)
            change = self._put_route(db, account_tag, tunnel_id, host, overwrite)
            if dns_records:
                remember_records(db, host, zone, dns_records)
        if change is not RouteChange.UNCHANGED:
            self._routes.changed()
        return RouteResult(host, change)

    def plan_route(
        self, account_tag: str, tunnel_id: uuid.UUID, hostname: str, *, overwrite: bool = False
    ) -> tuple[RouteResult, str]:
        """What :meth:`route_hostname` would do, and the zone holding the name, without
        writing (a read): the same refusals, raised before a DNS record is made for it."""
        host = check_route_name(hostname)
        with self._db.snapshot() as db:
            zone = self._route_zone(db, account_tag, tunnel_id, host)
            change = self._route_change(db, account_tag, tunnel_id, host, overwrite)
        return RouteResult(host, change), zone

    def unroute_hostname(self, account_tag: str, tunnel_id: uuid.UUID, hostname: str) -> str:
        """Drop the route of ``hostname`` to one of the account's tunnels; the name as stored.
        :class:`HostnameNotRouted` when it does not route there."""
        host = check_route_name(hostname)
        with self._db.write() as db:
            dropped = db.execute(
                "DELETE FROM routes WHERE hostname = ? AND account_tag = ? AND tunnel_id = ?",
                (host, account_tag, str(tunnel_id)),
            )
            if not dropped.rowcount:
                raise HostnameNotRouted(f"{host} does not route to tunnel {tunnel_id}")
            db.execute(_BUMP_ROUTES)
            forget_records(db, host)  # the caller removed them from the server first
        self._routes.changed()
        return host

    def tunnel_hostnames(self, account_tag: str, tunnel_id: uuid.UUID) -> list[str]:
        """The hostnames routed to one of the account's tunnels."""
        rows = self._db.read(
            "SELECT hostname FROM routes WHERE account_tag = ? AND tunnel_id = ? ORDER BY hostname",
            (account_tag, str(tunnel_id)),
        )
        return [r[0] for r in rows]

    @staticmethod
    def _route_zone(
        db: sqlite3.Connection, account_tag: str, tunnel_id: uuid.UUID, host: str
    ) -> str:
        tunnel = db.execute(
            "SELECT deleted_at FROM tunnels WHERE id = ? AND account_tag = ?",
            (str(tunnel_id), account_tag),
        ).fetchone()
        if tunnel is None:
            raise TunnelNotFound(f"tunnel {tunnel_id} not found")
        if tunnel[0] is not None:
            raise TunnelDeleted(f"Tunnel {tunnel_id} has already been deleted")
        zones = [
            z for (z,) in db.execute("SELECT name FROM zones WHERE account_tag = ?", (account_tag,))
        ]
        return zone_for_route(host, zones, account_tag)

    def route_quick_tunnel(self, account_tag: str, tunnel_id: uuid.UUID, label: str) -> str:
        """The edge's own quick tunnel: route ``<label>.localhost`` without a zone. Only the
        edge calls this (``--quick-tunnel``), for a tunnel it just made; no account can ask
        for it, and ``localhost`` is never a zone (:func:`~adit.edge.names.check_zone_name`)."""
        host = check_hostname(f"{label}.{QUICK_TUNNEL_DOMAIN}")
        if host.count(".") != 1:
            raise HostnameRefused(f"{label!r} is not one label")
        with self._db.write() as db:
            self._put_route(db, account_tag, tunnel_id, host, overwrite=False)
        self._routes.changed()
        return host

    def _put_route(
        self,
        db: sqlite3.Connection,
        account_tag: str,
        tunnel_id: uuid.UUID,
        host: str,
        overwrite: bool,
    ) -> RouteChange:
        change = self._route_change(db, account_tag, tunnel_id, host, overwrite)
        if change is RouteChange.NEW:
            db.execute(
                "INSERT INTO routes (hostname, account_tag, tunnel_id, created_at)"
                " VALUES (?, ?, ?, ?)",
                (host, account_tag, str(tunnel_id), _ts(self._clock())),
            )
            db.execute(_BUMP_ROUTES)
        elif change is RouteChange.UPDATED:
            db.execute(
                "UPDATE routes SET tunnel_id = ?, created_at = ? WHERE hostname = ?",
                (str(tunnel_id), _ts(self._clock()), host),
            )
            db.execute(_BUMP_ROUTES)
        return change

    @staticmethod
    def _route_change(
        db: sqlite3.Connection,
        account_tag: str,
        tunnel_id: uuid.UUID,
        host: str,
        overwrite: bool,
    ) -> RouteChange:
        existing = db.execute(
            "SELECT account_tag, tunnel_id FROM routes WHERE hostname = ?", (host,)
        ).fetchone()
        if existing is None:
            return RouteChange.NEW
        if existing[0] != account_tag:
            raise HostnameTaken(f"{host} is already routed by another account")
        if existing[1] == str(tunnel_id):
            return RouteChange.UNCHANGED
        if not overwrite:
            raise HostnameConflict(
                f"An A, AAAA, or CNAME record with that host already exists: {host}"
                " routes to another tunnel (use --overwrite-dns to move it)"
            )
        return RouteChange.UPDATED

    def routes(self, account_tag: str) -> list[tuple[str, uuid.UUID]]:
        """The account's ``(hostname, tunnel_id)`` routes, by hostname."""
        rows = self._db.read(
            "SELECT hostname, tunnel_id FROM routes WHERE account_tag = ? ORDER BY hostname",
            (account_tag,),
        )
        return [(r[0], uuid.UUID(r[1])) for r in rows]

    # -- routing from memory --------------------------------------------------------------

    def tunnel_for_hostname(self, hostname: str) -> Route | None:
        """The route serving a request's host (port already removed): exact route, else the
        nearest wildcard (``*.example.com`` covers ``a.example.com`` and ``a.b.example.com``).

        Raises :class:`~adit.protocol.hostnames.InvalidHostname` (a 400 for the visitor) when
        ``hostname`` is no hostname. Answered from memory in O(labels): the table is loaded on
        first use (the edge loads it at start with :meth:`load_routes`), rebuilt at once after
        this store changes routes, and by :meth:`watch_routes` after another process did.
        """
        if not hostname.isascii():
            # A Host is ASCII (RFC 9110's reg-name; IDNs travel as A-labels): refused before
            # any IDNA work, which costs a millisecond for a long Unicode name.
            raise InvalidHostname("a request's host is ASCII")
        return self._routes.find(check_hostname(hostname))

    def route(self, name: str) -> Route | None:
        """:meth:`tunnel_for_hostname` of a name already checked and normalised
        (:func:`~adit.protocol.hostnames.check_hostname`)."""
        return self._routes.find(name)

    def routed_hostnames(self) -> list[str]:
        """Every hostname routed now, from memory (wildcards as ``*.example.com``)."""
        table = self._routes.current()
        return [*table.exact, *(f"*.{zone}" for zone in table.wildcard)]

    def load_routes(self) -> RouteTable:
        """Build the route table now (the edge does, before it serves)."""
        return self._routes.reload()

    def refresh_routes(self) -> bool:
        """Rebuild the route table if another process changed routes since it was built;
        True when it did."""
        return self._routes.refresh()

    def watch_routes(self, interval: float) -> None:
        """Look for other processes' changes of hostname and IP routes every ``interval``
        seconds, on a thread of its own (never the event loop), until :meth:`close`."""
        self._watcher.watch(interval)

    # -- private-network routing from memory ----------------------------------------------

    def private_route(
        self, account_tag: str, ip: IPAddress, vnet_id: uuid.UUID | None = None
    ) -> uuid.UUID | None:
        """The tunnel that serves private address ``ip`` for an account: the live IP route with
        the longest prefix holding ``ip`` in virtual network ``vnet_id`` (the account's
        default one when None), or None (no such route, or a virtual network that is not the
        account's).

        For the data plane, once per flow: answered from memory in at most one dict probe per
        distinct prefix length, never a query, kept current like :meth:`tunnel_for_hostname`
        (rebuilt at once after this store's writes, by :meth:`watch_routes` after another
        process's). :meth:`PrivateNetworks.route_for_ip` answers the same from the database.
        """
        route = self._private_routes.find(account_tag, ip, vnet_id)
        return None if route is None else route.tunnel_id

    def load_private_routes(self) -> PrivateRouteTable:
        """Build the private route table now (the edge does, before it serves)."""
        return self._private_routes.reload()

    def refresh_private_routes(self) -> bool:
        """Rebuild the private route table if another process changed IP routes or virtual
        networks since it was built; True when it did."""
        return self._private_routes.refresh()
