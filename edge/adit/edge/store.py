"""The edge's state: accounts, API tokens, tunnels and hostname routes, in one SQLite file.

Invariants:

* An API token belongs to exactly one account; only a SHA-256 of its secret part is stored and
  comparison is constant-time. The plaintext exists once, in ``IssuedToken``.
* Every tunnel and route query is scoped by account tag; nothing here returns another
  account's rows to a caller that names an account.
* A tunnel name is unique per account among non-deleted tunnels (a partial unique index).
* A hostname routes to at most one tunnel (hostnames are global on the edge); the account is
  the DNS "zone", so ``zoneID`` = account tag.

Calls are short and synchronous; the edge calls them from its event loop.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "STORE_FILE",
    "Account",
    "AccountNotFound",
    "HostnameConflict",
    "HostnameTaken",
    "IssuedToken",
    "RouteChange",
    "RouteResult",
    "SecretMatch",
    "SecretRotation",
    "Store",
    "StoreError",
    "Tunnel",
    "TunnelDeleted",
    "TunnelNameConflict",
    "TunnelNotFound",
]

STORE_FILE = "adit-edge.sqlite3"

_TOKEN_PREFIX = "adit"  # noqa: S105 (a format marker, not a secret)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    tag TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY,
    account_tag TEXT NOT NULL REFERENCES accounts(tag),
    secret_sha256 BLOB NOT NULL,
    label TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE TABLE IF NOT EXISTS tunnels (
    id TEXT PRIMARY KEY,
    account_tag TEXT NOT NULL REFERENCES accounts(tag),
    name TEXT NOT NULL,
    secret BLOB NOT NULL,
    created_at TEXT NOT NULL,
    deleted_at TEXT,
    remote_config INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS tunnels_live_name
    ON tunnels(account_tag, name) WHERE deleted_at IS NULL;
CREATE TABLE IF NOT EXISTS secret_rotations (
    tunnel_id TEXT PRIMARY KEY REFERENCES tunnels(id),
    previous_secret BLOB NOT NULL,
    started_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS routes (
    hostname TEXT PRIMARY KEY,
    account_tag TEXT NOT NULL REFERENCES accounts(tag),
    tunnel_id TEXT NOT NULL REFERENCES tunnels(id),
    created_at TEXT NOT NULL
);
"""


#: How long an answer of :meth:`Store.tunnel_for_hostname` is reused.
ROUTE_CACHE_SECONDS = 1.0
ROUTE_CACHE_SIZE = 10_000


class StoreError(Exception):
    """Base of the store's refusals; ``str()`` is a message fit for an API error."""


class AccountNotFound(StoreError):
    """No account with that tag."""


class TunnelNotFound(StoreError):
    """No tunnel with that ID in the caller's account."""


class TunnelDeleted(StoreError):
    """The tunnel exists but was deleted."""


class TunnelNameConflict(StoreError):
    """A non-deleted tunnel of the account already has that name."""


class HostnameConflict(StoreError):
    """The hostname routes to another tunnel of the account and overwrite was not asked."""


class HostnameTaken(StoreError):
    """The hostname is routed by another account."""


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


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _ts(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).isoformat()


def _parse_ts(text: str | None) -> datetime.datetime | None:
    return None if text is None else datetime.datetime.fromisoformat(text)


def _secret_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def normalize_hostname(hostname: str) -> str:
    """Hostnames compare case-insensitively and without a trailing dot."""
    return hostname.strip().rstrip(".").lower()


class Store:
    """SQLite-backed edge state (WAL mode, one file, mode 0600)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], datetime.datetime] = _utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        db_path = Path(path)
        if str(path) != ":memory:":
            db_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not db_path.exists():
                os.close(os.open(db_path, os.O_WRONLY | os.O_CREAT, 0o600))
            os.chmod(db_path, 0o600)
        self._clock = clock
        self._monotonic = monotonic
        self._route_cache: dict[str, tuple[tuple[uuid.UUID, str] | None, float]] = {}
        # One connection guarded by a lock: the edge uses it from its loop thread, tests and
        # admin commands from others.
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    @classmethod
    def open_in(cls, state_dir: str | os.PathLike[str]) -> Store:
        """The store file inside an edge state directory."""
        return cls(Path(state_dir) / STORE_FILE)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # Any write may change routing (routes, deleted tunnels): forget cached answers.
        self._route_cache.clear()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- accounts -------------------------------------------------------------------------

    def create_account(self, name: str) -> Account:
        """A new account with a random 32-hex tag."""
        account = Account(tag=secrets.token_hex(16), name=name, created_at=self._clock())
        with self._transaction() as db:
            db.execute(
                "INSERT INTO accounts (tag, name, created_at) VALUES (?, ?, ?)",
                (account.tag, account.name, _ts(account.created_at)),
            )
        return account

    def get_account(self, tag: str) -> Account | None:
        """The account with that tag, if any."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT tag, name, created_at FROM accounts WHERE tag = ?", (tag,)
            ).fetchone()
        if row is None:
            return None
        created = _parse_ts(row[2])
        assert created is not None
        return Account(tag=row[0], name=row[1], created_at=created)

    def list_accounts(self) -> list[Account]:
        """Every account, oldest first."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT tag, name, created_at FROM accounts ORDER BY created_at"
            ).fetchall()
        return [
            Account(tag=r[0], name=r[1], created_at=datetime.datetime.fromisoformat(r[2]))
            for r in rows
        ]

    # -- API tokens -----------------------------------------------------------------------

    def create_api_token(self, account_tag: str, label: str = "") -> IssuedToken:
        """A new bearer token for one account: ``adit.<id>.<secret>``; only a hash is kept."""
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        with self._transaction() as db:
            if (
                db.execute("SELECT 1 FROM accounts WHERE tag = ?", (account_tag,)).fetchone()
                is None
            ):
                raise AccountNotFound(f"account {account_tag} does not exist")
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
        with self._transaction() as db:
            row = db.execute(
                "SELECT account_tag, secret_sha256 FROM api_tokens"
                " WHERE id = ? AND revoked_at IS NULL",
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
        with self._transaction() as db:
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
        """A new tunnel; ``secret`` defaults to 32 random bytes."""
        tunnel = Tunnel(
            id=uuid.uuid4(),
            account_tag=account_tag,
            name=name,
            secret=secret if secret is not None else secrets.token_bytes(32),
            created_at=self._clock(),
            remote_config=remote_config,
        )
        with self._transaction() as db:
            if (
                db.execute("SELECT 1 FROM accounts WHERE tag = ?", (account_tag,)).fetchone()
                is None
            ):
                raise AccountNotFound(f"account {account_tag} does not exist")
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
        with self._transaction() as db:
            row = db.execute(
                "SELECT id, account_tag, name, secret, created_at, deleted_at, remote_config"
                " FROM tunnels WHERE id = ? AND account_tag = ?",
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
        with self._transaction() as db:
            rows = db.execute(
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

    def delete_tunnel(self, account_tag: str, tunnel_id: uuid.UUID) -> Tunnel:
        """Mark the tunnel deleted and drop its hostname routes."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT id, account_tag, name, secret, created_at, deleted_at, remote_config"
                " FROM tunnels WHERE id = ? AND account_tag = ?",
                (str(tunnel_id), account_tag),
            ).fetchone()
            if row is None:
                raise TunnelNotFound(f"tunnel {tunnel_id} not found")
            tunnel = self._tunnel(row)
            if tunnel.deleted_at is not None:
                raise TunnelDeleted(f"Tunnel {tunnel_id} has already been deleted")
            deleted_at = self._clock()
            db.execute(
                "UPDATE tunnels SET deleted_at = ? WHERE id = ?", (_ts(deleted_at), str(tunnel_id))
            )
            db.execute("DELETE FROM routes WHERE tunnel_id = ?", (str(tunnel_id),))
            db.execute("DELETE FROM secret_rotations WHERE tunnel_id = ?", (str(tunnel_id),))
        return Tunnel(
            id=tunnel.id,
            account_tag=tunnel.account_tag,
            name=tunnel.name,
            secret=tunnel.secret,
            created_at=tunnel.created_at,
            deleted_at=deleted_at,
            remote_config=tunnel.remote_config,
        )

    def verify_tunnel_secret(self, tunnel_id: uuid.UUID, account_tag: str, secret: bytes) -> bool:
        """Whether a connector's TunnelAuth matches a live tunnel (constant-time compare)."""
        return self.match_tunnel_secret(tunnel_id, account_tag, secret) is not SecretMatch.NONE

    def match_tunnel_secret(
        self, tunnel_id: uuid.UUID, account_tag: str, secret: bytes
    ) -> SecretMatch:
        """Which secret of a live tunnel ``secret`` is: the current one, or the previous one
        while its rotation window is open. Both comparisons always run, in constant time."""
        with self._transaction() as db:
            row = db.execute(
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
        new_secret = secret if secret is not None else secrets.token_bytes(32)
        with self._transaction() as db:
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
        with self._transaction() as db:
            row = db.execute(
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
        """Stop accepting the previous secret; False when no rotation was open."""
        open_window = self.rotation(tunnel_id) is not None
        with self._transaction() as db:
            db.execute("DELETE FROM secret_rotations WHERE tunnel_id = ?", (str(tunnel_id),))
        return open_window

    # -- hostname routes ------------------------------------------------------------------

    def route_hostname(
        self, account_tag: str, tunnel_id: uuid.UUID, hostname: str, *, overwrite: bool = False
    ) -> RouteResult:
        """Route ``hostname`` (``*.example.com`` allowed) to one of the account's tunnels."""
        host = normalize_hostname(hostname)
        with self._transaction() as db:
            tunnel = db.execute(
                "SELECT deleted_at FROM tunnels WHERE id = ? AND account_tag = ?",
                (str(tunnel_id), account_tag),
            ).fetchone()
            if tunnel is None:
                raise TunnelNotFound(f"tunnel {tunnel_id} not found")
            if tunnel[0] is not None:
                raise TunnelDeleted(f"Tunnel {tunnel_id} has already been deleted")
            existing = db.execute(
                "SELECT account_tag, tunnel_id FROM routes WHERE hostname = ?", (host,)
            ).fetchone()
            if existing is None:
                db.execute(
                    "INSERT INTO routes (hostname, account_tag, tunnel_id, created_at)"
                    " VALUES (?, ?, ?, ?)",
                    (host, account_tag, str(tunnel_id), _ts(self._clock())),
                )
                return RouteResult(host, RouteChange.NEW)
            if existing[0] != account_tag:
                raise HostnameTaken(f"{host} is already routed by another account")
            if existing[1] == str(tunnel_id):
                return RouteResult(host, RouteChange.UNCHANGED)
            if not overwrite:
                raise HostnameConflict(
                    f"An A, AAAA, or CNAME record with that host already exists: {host}"
                    " routes to another tunnel (use --overwrite-dns to move it)"
                )
            db.execute(
                "UPDATE routes SET tunnel_id = ?, created_at = ? WHERE hostname = ?",
                (str(tunnel_id), _ts(self._clock()), host),
            )
            return RouteResult(host, RouteChange.UPDATED)

    def routes(self, account_tag: str) -> list[tuple[str, uuid.UUID]]:
        """The account's ``(hostname, tunnel_id)`` routes, by hostname."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT hostname, tunnel_id FROM routes WHERE account_tag = ? ORDER BY hostname",
                (account_tag,),
            ).fetchall()
        return [(r[0], uuid.UUID(r[1])) for r in rows]

    def tunnel_for_hostname(self, hostname: str) -> tuple[uuid.UUID, str] | None:
        """``(tunnel_id, account_tag)`` serving a request's host: exact route, else the nearest
        wildcard (``*.example.com`` covers ``a.example.com`` and ``a.b.example.com``).

        Asked once per public request, so answers are kept for :data:`ROUTE_CACHE_SECONDS`;
        route changes made through this store clear them at once, changes by another process
        (an admin command, a sibling edge) show within that time.
        """
        now = self._monotonic()
        cached = self._route_cache.get(hostname)
        if cached is not None and cached[1] > now:
            return cached[0]
        found = self._lookup_route(hostname)
        if len(self._route_cache) >= ROUTE_CACHE_SIZE:
            self._route_cache.clear()
        self._route_cache[hostname] = (found, now + ROUTE_CACHE_SECONDS)
        return found

    def _lookup_route(self, hostname: str) -> tuple[uuid.UUID, str] | None:
        host = normalize_hostname(
            hostname.rsplit(":", 1)[0] if hostname.count(":") == 1 else hostname
        )
        labels = host.split(".")
        candidates = [host] + ["*." + ".".join(labels[i:]) for i in range(1, len(labels))]
        with self._lock:  # a plain read: no transaction, so the route cache stays
            for candidate in candidates:
                row = self._db.execute(
                    "SELECT r.tunnel_id, r.account_tag FROM routes r JOIN tunnels t"
                    " ON t.id = r.tunnel_id WHERE r.hostname = ? AND t.deleted_at IS NULL",
                    (candidate,),
                ).fetchone()
                if row is not None:
                    return uuid.UUID(row[0]), str(row[1])
        return None
