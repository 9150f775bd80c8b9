"""Access in the edge's store: tables, writes, and the in-memory snapshot requests read.

Every row is account-scoped; every lookup by id names the account too, so one account never
reads or changes another's. Service-token secrets are kept as SHA-256 only; identity
providers' secrets (OIDC client secret, SMTP password) live in the store file (mode 0600) and
are never answered by the API (:meth:`~adit.edge.access.model.IdentityProvider.json`).

Requests are served from an immutable :class:`AccessTable` kept by a
:class:`~adit.edge.live_table.LiveTable` on the ``access`` counter, bumped by every write here:
this process sees its writes at once, another edge process on the same store within the
watcher's interval.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import secrets
import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from adit.edge.access.jwt_keys import SigningKey, new_signing_key
from adit.edge.access.login_state import SCHEMA as LOGIN_STATE_SCHEMA
from adit.edge.access.login_state import TABLES as LOGIN_STATE_TABLES
from adit.edge.access.model import (
    DECISIONS,
    Application,
    IdentityProvider,
    InvalidAccess,
    Policy,
    ServiceToken,
    ordered,
    parse_duration,
    parse_rules,
)
from adit.edge.access.oidc_client import check_ca_pem
from adit.edge.database import Database, encode_time
from adit.edge.errors import StoreError
from adit.edge.live_table import LiveTable
from adit.protocol.hostnames import InvalidHostname, check_hostname, is_within

__all__ = [
    "ACCESS_COUNTER",
    "SCHEMA",
    "TABLES",
    "AccessConflict",
    "AccessNotFound",
    "AccessStore",
    "AccessTable",
    "IssuedServiceToken",
]

T = TypeVar("T")

ACCESS_COUNTER: Final = "access"
#: Cloudflare's default application session.
DEFAULT_SESSION = 24 * 3600
#: Cloudflare's default service token lifetime (one year).
DEFAULT_TOKEN_DURATION = "8760h"  # noqa: S105 (a duration)
#: Days between automatic signing-key rotations (Cloudflare rotates every six weeks), and
#: the range an account may choose (Cloudflare's ``key_rotation_interval_days``).
DEFAULT_ROTATION_DAYS = 42
ROTATION_DAYS_RANGE = (21, 365)
#: How long a rotated-out signing key stays in the key set: longer than any session, so a
#: token signed just before a rotation verifies until it expires.
KEY_OVERLAP = datetime.timedelta(days=7)
_SECRET_FIELDS: Final = {"oidc": ("client_secret",), "onetimepin": ("smtp_password",)}
_IDP_FIELDS: Final = {
    "oidc": (
        "discovery_url",
        "client_id",
        "client_secret",
        "scopes",
        "email_claim_name",
        "groups_claim_name",
        # adit's own (Cloudflare's providers are public): CAs the provider's TLS chains to.
        "ca_pem",
    ),
    "onetimepin": (
        "smtp_host",
        "smtp_port",
        "smtp_starttls",
        "smtp_username",
        "smtp_password",
        "smtp_from",
    ),
}

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS access_apps (
    id TEXT PRIMARY KEY,
    account_tag TEXT NOT NULL REFERENCES accounts(tag),
    name TEXT NOT NULL,
    domain TEXT NOT NULL,
    path TEXT NOT NULL,
    aud TEXT NOT NULL UNIQUE,
    session_duration INTEGER NOT NULL,
    allowed_idps TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (domain, path)
)""",
    """CREATE TABLE IF NOT EXISTS access_policies (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL REFERENCES access_apps(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    decision TEXT NOT NULL,
    precedence INTEGER NOT NULL,
    rules TEXT NOT NULL,
    created_at TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS access_idps (
    id TEXT PRIMARY KEY,
    account_tag TEXT NOT NULL REFERENCES accounts(tag),
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    config TEXT NOT NULL,
    secrets TEXT NOT NULL,
    created_at TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS access_service_tokens (
    id TEXT PRIMARY KEY,
    account_tag TEXT NOT NULL REFERENCES accounts(tag),
    name TEXT NOT NULL,
    client_id TEXT NOT NULL UNIQUE,
    secret_sha256 BLOB NOT NULL,
    duration TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS access_keys (
    kid TEXT PRIMARY KEY,
    account_tag TEXT NOT NULL REFERENCES accounts(tag),
    private_pem BLOB NOT NULL,
    cert_pem TEXT NOT NULL,
    created_at TEXT NOT NULL,
    retired_at TEXT
)""",
    """CREATE TABLE IF NOT EXISTS access_orgs (
    account_tag TEXT PRIMARY KEY REFERENCES accounts(tag),
    auth_domain TEXT NOT NULL UNIQUE
)""",
    """CREATE TABLE IF NOT EXISTS access_key_settings (
    account_tag TEXT PRIMARY KEY REFERENCES accounts(tag),
    rotation_days INTEGER NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS access_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account_tag TEXT NOT NULL,
    at TEXT NOT NULL,
    app_id TEXT NOT NULL,
    app_domain TEXT NOT NULL,
    user_email TEXT NOT NULL,
    idp TEXT NOT NULL,
    country TEXT NOT NULL,
    ip TEXT NOT NULL,
    action TEXT NOT NULL,
    allowed INTEGER NOT NULL,
    policy_id TEXT NOT NULL,
    ray_id TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS access_log_by_time ON access_log(account_tag, at)",
    # Sessions ended by logout (their identity_nonce), until their tokens expire anyway.
    """CREATE TABLE IF NOT EXISTS access_revoked (
    nonce TEXT PRIMARY KEY,
    account_tag TEXT NOT NULL,
    expires_at REAL NOT NULL
)""",
    # Logins in progress, shared by the edge processes of one store (:mod:`.login_state`).
    *LOGIN_STATE_SCHEMA,
    f"INSERT OR IGNORE INTO counters (name, value) VALUES ('{ACCESS_COUNTER}', 0)",  # noqa: S608 (a constant)
)
TABLES = frozenset(
    {
        "access_apps",
        "access_policies",
        "access_idps",
        "access_service_tokens",
        "access_keys",
        "access_orgs",
        "access_key_settings",
        "access_log",
        "access_revoked",
    }
    | LOGIN_STATE_TABLES
)
_BUMP = f"UPDATE counters SET value = value + 1 WHERE name = '{ACCESS_COUNTER}'"  # noqa: S608


class AccessNotFound(StoreError):
    """No such application, policy, identity provider or service token in this account."""


class AccessConflict(StoreError):
    """A hostname/path another application guards, or a team domain another account uses."""


class InvalidAccessSetup(StoreError):
    """The store's face of :class:`~adit.edge.access.model.InvalidAccess` (a 400)."""


def secret_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


@dataclass(frozen=True)
class IssuedServiceToken:
    """A service token as created or rotated: the only time its secret exists in clear."""

    token: ServiceToken
    client_secret: str

    def json(self) -> dict[str, Any]:
        return {**self.token.json(), "client_secret": self.client_secret}


@dataclass(frozen=True)
class AccessTable:
    """Everything a request needs, at one value of the ``access`` counter."""

    version: int = -1
    #: hostname → its applications, longest path first.
    apps: Mapping[str, tuple[Application, ...]] = field(default_factory=dict)
    policies: Mapping[str, tuple[Policy, ...]] = field(default_factory=dict)
    tokens: Mapping[str, ServiceToken] = field(default_factory=dict)
    #: account → issuer (``https://<auth_domain>``).
    issuers: Mapping[str, str] = field(default_factory=dict)
    #: team hostname → account.
    team_hosts: Mapping[str, str] = field(default_factory=dict)
    #: account → its signing keys, the current one first.
    keys: Mapping[str, tuple[SigningKey, ...]] = field(default_factory=dict)
    #: app hostname → account (for the key set served on application hostnames).
    accounts_by_host: Mapping[str, str] = field(default_factory=dict)
    #: account → days between automatic key rotations (absent: the default).
    rotation_days: Mapping[str, int] = field(default_factory=dict)
    #: identity_nonce of every session ended by logout and not yet expired.
    revoked: frozenset[str] = frozenset()

    def __len__(self) -> int:
        return sum(len(a) for a in self.apps.values())

    def application(self, host: str, path: str) -> Application | None:
        """The application guarding ``path`` on ``host`` (the most specific), or None."""
        for app in self.apps.get(host, ()):
            if app.covers(path):
                return app
        return None

    def rotation_interval(self, account: str) -> float:
        """Seconds between automatic rotations of the account's signing key."""
        return self.rotation_days.get(account, DEFAULT_ROTATION_DAYS) * 86400.0

    def issuer(self, account: str) -> str:
        return self.issuers.get(account) or f"https://{account}.cloudflareaccess.com"


def _policy(row: sqlite3.Row | tuple[Any, ...]) -> Policy:
    pid, app_id, name, decision, precedence, rules = row
    parsed = json.loads(rules)
    return Policy(
        pid,
        app_id,
        name,
        decision,
        precedence,
        parse_rules(parsed.get("include"), "include"),
        parse_rules(parsed.get("require"), "require"),
        parse_rules(parsed.get("exclude"), "exclude"),
    )


def _app(row: tuple[Any, ...]) -> Application:
    aid, account, name, domain, path, aud, session, idps = row
    return Application(aid, account, name, domain, path, aud, session, tuple(json.loads(idps)))


def _token(row: tuple[Any, ...]) -> ServiceToken:
    tid, account, name, client_id, digest, duration, created, expires = row
    return ServiceToken(tid, account, name, client_id, bytes(digest), created, expires, duration)


_APP_COLUMNS = "id, account_tag, name, domain, path, aud, session_duration, allowed_idps"
_POLICY_COLUMNS = "id, app_id, name, decision, precedence, rules"
_SERVICE_COLUMNS = (
    "id, account_tag, name, client_id, secret_sha256, duration, created_at, expires_at"
)


def _load(db: sqlite3.Connection, version: int) -> AccessTable:
    apps: dict[str, list[Application]] = {}
    by_host: dict[str, str] = {}
    for row in db.execute(f"SELECT {_APP_COLUMNS} FROM access_apps"):  # noqa: S608
        app = _app(row)
        apps.setdefault(app.domain, []).append(app)
        by_host[app.domain] = app.account
    policies: dict[str, list[Policy]] = {}
    for row in db.execute(f"SELECT {_POLICY_COLUMNS} FROM access_policies"):  # noqa: S608
        policy = _policy(row)
        policies.setdefault(policy.app_id, []).append(policy)
    tokens = {
        t.client_id: t
        for t in map(
            _token,
            db.execute(f"SELECT {_SERVICE_COLUMNS} FROM access_service_tokens"),  # noqa: S608
        )
    }
    issuers: dict[str, str] = {}
    team_hosts: dict[str, str] = {}
    for account, domain in db.execute("SELECT account_tag, auth_domain FROM access_orgs"):
        issuers[account] = f"https://{domain}"
        team_hosts[domain.rsplit(":", 1)[0] if ":" in domain else domain] = account
    keys: dict[str, list[SigningKey]] = {}
    for account, kid, pem, cert, retired, created in db.execute(
        "SELECT account_tag, kid, private_pem, cert_pem, retired_at, created_at"
        " FROM access_keys ORDER BY retired_at IS NOT NULL, created_at DESC"
    ):
        made = datetime.datetime.fromisoformat(created).timestamp()
        keys.setdefault(account, []).append(
            SigningKey.load(kid, bytes(pem), cert, retired is not None, made)
        )
    rotation = dict(db.execute("SELECT account_tag, rotation_days FROM access_key_settings"))
    revoked = frozenset(
        nonce
        for (nonce,) in db.execute(
            "SELECT nonce FROM access_revoked WHERE expires_at > ?", (time.time(),)
        )
    )
    return AccessTable(
        version,
        {h: tuple(sorted(a, key=lambda x: -len(x.path))) for h, a in apps.items()},
        {a: tuple(ordered(p)) for a, p in policies.items()},
        tokens,
        issuers,
        team_hosts,
        {a: tuple(k) for a, k in keys.items()},
        by_host,
        rotation,
        revoked,
    )


class LiveAccess(LiveTable[AccessTable]):
    """The current :class:`AccessTable`."""

    def __init__(self, db: Database) -> None:
        super().__init__(db, ACCESS_COUNTER, _load, "access applications")


def _id() -> str:
    return str(uuid.uuid4())


def _string(raw: Mapping[str, Any], key: str, where: str, *, default: str | None = None) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise InvalidAccess(f"{where}: {key} is required (a non-empty string)")
    return value.strip()


def _refuse_unknown(raw: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise InvalidAccess(f"{where}: unknown field {unknown[0]!r}; known: {', '.join(known)}")


class AccessStore:
    """The Access tables of one store's database."""

    def __init__(self, db: Database, clock: Callable[[], datetime.datetime]) -> None:
        self._db = db
        self._clock = clock
        self.live = LiveAccess(db)

    @property
    def db(self) -> Database:
        """The database (the access log writes there too)."""
        return self._db

    def table(self) -> AccessTable:
        return self.live.current()

    def revoke_session(self, account: str, nonce: str, expires_at: float) -> None:
        """End a session for every edge process of this store: its ``identity_nonce`` is
        refused until ``expires_at`` (epoch seconds), when its token would be anyway."""
        with self._db.write() as db:
            db.execute("DELETE FROM access_revoked WHERE expires_at <= ?", (time.time(),))
            db.execute(
                "INSERT OR IGNORE INTO access_revoked (nonce, account_tag, expires_at)"
                " VALUES (?, ?, ?)",
                (nonce, account, expires_at),
            )
            db.execute(_BUMP)
        self.live.changed()

    # -- applications ----------------------------------------------------------------------

    def _check_domain(
        self, db: sqlite3.Connection, account: str, raw: str, where: str
    ) -> tuple[str, str]:
        host, slash, path = raw.strip().partition("/")
        try:
            host = check_hostname(host)
        except InvalidHostname as exc:
            raise InvalidAccess(f"{where}: domain: {exc}") from None
        path = ("/" + path).rstrip("/") if slash else ""
        zones = [
            z for (z,) in db.execute("SELECT name FROM zones WHERE account_tag = ?", (account,))
        ]
        for (team,) in db.execute(
            "SELECT auth_domain FROM access_orgs WHERE account_tag != ?", (account,)
        ):
            if team.partition(":")[0] == host:
                raise InvalidAccess(f"{where}: domain {host} is another account's team domain")
        if not any(is_within(host, zone) for zone in zones):
            raise InvalidAccess(
                f"{where}: domain {host} is in none of this account's zones; "
                "ask the edge's admin for the zone (adit edge zone add)"
            )
        return host, path

    def _app_fields(
        self, db: sqlite3.Connection, account: str, raw: Mapping[str, Any], where: str
    ) -> tuple[str, str, str, int, list[str]]:
        _refuse_unknown(
            raw,
            ("name", "domain", "type", "session_duration", "allowed_idps", "id", "uid", "aud"),
            where,
        )
        kind = raw.get("type", "self_hosted")
        if kind != "self_hosted":
            raise InvalidAccess(f"{where}: type: only self_hosted applications are served")
        name = _string(raw, "name", where)
        host, path = self._check_domain(db, account, _string(raw, "domain", where), where)
        session = parse_duration(raw.get("session_duration", "24h"), f"{where}: session_duration")
        idps = raw.get("allowed_idps") or []
        if not isinstance(idps, list) or not all(isinstance(i, str) for i in idps):
            raise InvalidAccess(f"{where}: allowed_idps must be a list of identity provider ids")
        known = {
            i for (i,) in db.execute("SELECT id FROM access_idps WHERE account_tag = ?", (account,))
        }
        missing = [i for i in idps if i not in known]
        if missing:
            raise InvalidAccess(f"{where}: allowed_idps: no identity provider {missing[0]}")
        return name, host, path, session, idps

    def create_app(self, account: str, raw: Mapping[str, Any]) -> Application:
        with self._db.write() as db:
            name, host, path, session, idps = self._guard(
                lambda: self._app_fields(db, account, raw, "application")
            )
            aid = _id()
            aud = secrets.token_hex(32)
            try:
                db.execute(
                    f"INSERT INTO access_apps ({_APP_COLUMNS}, created_at)"  # noqa: S608
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (aid, account, name, host, path, aud, session, json.dumps(idps), self._now()),
                )
            except sqlite3.IntegrityError:
                raise AccessConflict(
                    f"an application already guards {host}{path}; update or delete it"
                ) from None
            self._first_key(db, account)
            db.execute(_BUMP)
        self.live.changed()
        return Application(aid, account, name, host, path, aud, session, tuple(idps))

    def update_app(self, account: str, app_id: str, raw: Mapping[str, Any]) -> Application:
        with self._db.write() as db:
            current = self._get_app(db, account, app_id)
            merged = {**current.json(), **raw}
            merged.pop("aud", None)
            name, host, path, session, idps = self._guard(
                lambda: self._app_fields(db, account, merged, "application")
            )
            try:
                db.execute(
                    "UPDATE access_apps SET name = ?, domain = ?, path = ?, session_duration = ?,"
                    " allowed_idps = ? WHERE id = ? AND account_tag = ?",
                    (name, host, path, session, json.dumps(idps), app_id, account),
                )
            except sqlite3.IntegrityError:
                raise AccessConflict(f"an application already guards {host}{path}") from None
            db.execute(_BUMP)
        self.live.changed()
        return Application(app_id, account, name, host, path, current.aud, session, tuple(idps))

    def delete_app(self, account: str, app_id: str) -> None:
        with self._db.write() as db:
            self._get_app(db, account, app_id)
            db.execute("DELETE FROM access_apps WHERE id = ?", (app_id,))
            db.execute(_BUMP)
        self.live.changed()

    def apps(self, account: str) -> list[Application]:
        rows = self._db.read(
            f"SELECT {_APP_COLUMNS} FROM access_apps WHERE account_tag = ? ORDER BY created_at",  # noqa: S608
            (account,),
        )
        return [_app(r) for r in rows]

    def app(self, account: str, app_id: str) -> Application:
        return self._get_app(self._db.connection(), account, app_id)

    def _get_app(self, db: sqlite3.Connection, account: str, app_id: str) -> Application:
        row = db.execute(
            f"SELECT {_APP_COLUMNS} FROM access_apps WHERE id = ? AND account_tag = ?",  # noqa: S608
            (app_id, account),
        ).fetchone()
        if row is None:
            raise AccessNotFound(f"access application {app_id} not found")
        return _app(row)

    # -- policies --------------------------------------------------------------------------

    @staticmethod
    def _policy_fields(
        raw: Mapping[str, Any], where: str, next_precedence: int
    ) -> tuple[str, str, int, str]:
        _refuse_unknown(
            raw, ("name", "decision", "precedence", "include", "require", "exclude", "id"), where
        )
        name = _string(raw, "name", where)
        decision = raw.get("decision")
        if decision not in DECISIONS:
            raise InvalidAccess(f"{where}: decision must be one of {', '.join(DECISIONS)}")
        precedence = raw.get("precedence", next_precedence)
        if not isinstance(precedence, int) or isinstance(precedence, bool) or precedence < 0:
            raise InvalidAccess(f"{where}: precedence must be a whole number >= 0")
        rules = {
            part: [r.json() for r in parse_rules(raw.get(part), f"{where}.{part}")]
            for part in ("include", "require", "exclude")
        }
        if not rules["include"]:
            raise InvalidAccess(f"{where}: include needs at least one rule")
        return name, decision, precedence, json.dumps(rules)

    def normal_policy(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """``raw`` as :meth:`Policy.json` would show it once stored (without its id)."""
        name, decision, precedence, rules = self._policy_fields(raw, "policy", 1)
        shown = _policy(("", "", name, decision, precedence, rules)).json()
        del shown["id"]
        return shown

    def create_policy(self, account: str, app_id: str, raw: Mapping[str, Any]) -> Policy:
        with self._db.write() as db:
            self._get_app(db, account, app_id)
            (top,) = db.execute(
                "SELECT COALESCE(MAX(precedence), 0) FROM access_policies WHERE app_id = ?",
                (app_id,),
            ).fetchone()
            name, decision, precedence, rules = self._guard(
                lambda: self._policy_fields(raw, "policy", top + 1)
            )
            pid = _id()
            db.execute(
                f"INSERT INTO access_policies ({_POLICY_COLUMNS}, created_at)"  # noqa: S608
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (pid, app_id, name, decision, precedence, rules, self._now()),
            )
            db.execute(_BUMP)
        self.live.changed()
        return _policy((pid, app_id, name, decision, precedence, rules))

    def update_policy(
        self, account: str, app_id: str, policy_id: str, raw: Mapping[str, Any]
    ) -> Policy:
        with self._db.write() as db:
            current = self._get_policy(db, account, app_id, policy_id)
            merged = {**current.json(), **raw}
            name, decision, precedence, rules = self._guard(
                lambda: self._policy_fields(merged, "policy", current.precedence)
            )
            db.execute(
                "UPDATE access_policies SET name = ?, decision = ?, precedence = ?, rules = ?"
                " WHERE id = ?",
                (name, decision, precedence, rules, policy_id),
            )
            db.execute(_BUMP)
        self.live.changed()
        return _policy((policy_id, app_id, name, decision, precedence, rules))

    def delete_policy(self, account: str, app_id: str, policy_id: str) -> None:
        with self._db.write() as db:
            self._get_policy(db, account, app_id, policy_id)
            db.execute("DELETE FROM access_policies WHERE id = ?", (policy_id,))
            db.execute(_BUMP)
        self.live.changed()

    def policies(self, account: str, app_id: str) -> list[Policy]:
        db = self._db.connection()
        self._get_app(db, account, app_id)
        rows = db.execute(
            f"SELECT {_POLICY_COLUMNS} FROM access_policies WHERE app_id = ?",  # noqa: S608
            (app_id,),
        )
        return ordered([_policy(r) for r in rows])

    def policy(self, account: str, app_id: str, policy_id: str) -> Policy:
        return self._get_policy(self._db.connection(), account, app_id, policy_id)

    def _get_policy(
        self, db: sqlite3.Connection, account: str, app_id: str, policy_id: str
    ) -> Policy:
        self._get_app(db, account, app_id)
        row = db.execute(
            f"SELECT {_POLICY_COLUMNS} FROM access_policies WHERE id = ? AND app_id = ?",  # noqa: S608
            (policy_id, app_id),
        ).fetchone()
        if row is None:
            raise AccessNotFound(f"access policy {policy_id} not found")
        return _policy(row)

    # -- identity providers ----------------------------------------------------------------

    @staticmethod
    def _idp_fields(
        raw: Mapping[str, Any], where: str, old_secrets: Mapping[str, str]
    ) -> tuple[str, str, dict[str, Any], dict[str, str]]:
        _refuse_unknown(raw, ("name", "type", "config", "id"), where)
        name = _string(raw, "name", where)
        kind = raw.get("type")
        if kind not in _IDP_FIELDS:
            raise InvalidAccess(f"{where}: type must be oidc or onetimepin")
        config = raw.get("config") or {}
        if not isinstance(config, dict):
            raise InvalidAccess(f"{where}: config must be an object")
        _refuse_unknown(config, _IDP_FIELDS[kind], f"{where}.config")
        shown: dict[str, Any] = {}
        hidden: dict[str, str] = {}
        for key, value in config.items():
            if key in _SECRET_FIELDS[kind]:
                if value == "*****" and key in old_secrets:
                    hidden[key] = old_secrets[key]  # an export applied again keeps the secret
                elif not isinstance(value, str) or not value:
                    raise InvalidAccess(f"{where}.config: {key} must be a non-empty string")
                else:
                    hidden[key] = value
            else:
                shown[key] = value
        if kind == "oidc":
            for key in ("discovery_url", "client_id"):
                _string(shown, key, f"{where}.config")
            if not str(shown["discovery_url"]).startswith("https://"):
                raise InvalidAccess(f"{where}.config: discovery_url must be an https:// URL")
            scopes = shown.setdefault("scopes", ["openid", "email", "profile"])
            if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
                raise InvalidAccess(f"{where}.config: scopes must be a list of strings")
            shown.setdefault("email_claim_name", "email")
            if "ca_pem" in shown and (why := check_ca_pem(shown["ca_pem"])) is not None:
                raise InvalidAccess(f"{where}.config: ca_pem {why}")
            if "client_secret" not in hidden:
                raise InvalidAccess(f"{where}.config: client_secret is required")
        elif "smtp_host" in shown:
            port = shown.setdefault("smtp_port", 587)
            if not isinstance(port, int) or not 0 < port < 65536:
                raise InvalidAccess(f"{where}.config: smtp_port must be a port number")
            _string(shown, "smtp_from", f"{where}.config")
        return name, kind, shown, hidden

    def normal_idp(
        self, raw: Mapping[str, Any], old_secrets: Mapping[str, str]
    ) -> tuple[str, str, dict[str, Any], dict[str, str]]:
        """``raw`` as it would be stored: name, type, config, secrets."""
        return self._guard(lambda: self._idp_fields(raw, "identity provider", old_secrets))

    def create_idp(self, account: str, raw: Mapping[str, Any]) -> IdentityProvider:
        name, kind, shown, hidden = self._guard(
            lambda: self._idp_fields(raw, "identity provider", {})
        )
        iid = _id()
        with self._db.write() as db:
            db.execute(
                "INSERT INTO access_idps (id, account_tag, name, type, config, secrets, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (iid, account, name, kind, json.dumps(shown), json.dumps(hidden), self._now()),
            )
            db.execute(_BUMP)
        self.live.changed()
        return IdentityProvider(iid, account, name, kind, shown, hidden)  # type: ignore[arg-type]

    def update_idp(self, account: str, idp_id: str, raw: Mapping[str, Any]) -> IdentityProvider:
        with self._db.write() as db:
            current = self._get_idp(db, account, idp_id)
            name, kind, shown, hidden = self._guard(
                lambda: self._idp_fields(raw, "identity provider", current.secrets)
            )
            db.execute(
                "UPDATE access_idps SET name = ?, type = ?, config = ?, secrets = ? WHERE id = ?",
                (name, kind, json.dumps(shown), json.dumps(hidden), idp_id),
            )
            db.execute(_BUMP)
        self.live.changed()
        return IdentityProvider(idp_id, account, name, kind, shown, hidden)  # type: ignore[arg-type]

    def delete_idp(self, account: str, idp_id: str) -> None:
        with self._db.write() as db:
            self._get_idp(db, account, idp_id)
            used = [
                name
                for name, idps in db.execute(
                    "SELECT name, allowed_idps FROM access_apps WHERE account_tag = ?", (account,)
                )
                if idp_id in json.loads(idps)
            ]
            if used:
                raise AccessConflict(
                    f"identity provider {idp_id} is allowed by application {used[0]!r}; "
                    "remove it from the application's allowed_idps first"
                )
            db.execute("DELETE FROM access_idps WHERE id = ?", (idp_id,))
            db.execute(_BUMP)
        self.live.changed()

    def idps(self, account: str) -> list[IdentityProvider]:
        rows = self._db.read(
            "SELECT id, account_tag, name, type, config, secrets FROM access_idps"
            " WHERE account_tag = ? ORDER BY created_at",
            (account,),
        )
        return [_idp(r) for r in rows]

    def idp(self, account: str, idp_id: str) -> IdentityProvider:
        return self._get_idp(self._db.connection(), account, idp_id)

    def _get_idp(self, db: sqlite3.Connection, account: str, idp_id: str) -> IdentityProvider:
        row = db.execute(
            "SELECT id, account_tag, name, type, config, secrets FROM access_idps"
            " WHERE id = ? AND account_tag = ?",
            (idp_id, account),
        ).fetchone()
        if row is None:
            raise AccessNotFound(f"identity provider {idp_id} not found")
        return _idp(row)

    # -- service tokens --------------------------------------------------------------------

    def create_service_token(self, account: str, raw: Mapping[str, Any]) -> IssuedServiceToken:
        def fields() -> tuple[str, str, int]:
            _refuse_unknown(raw, ("name", "duration"), "service token")
            duration = raw.get("duration", DEFAULT_TOKEN_DURATION)
            return (
                _string(raw, "name", "service token"),
                duration,
                parse_duration(duration, "service token: duration"),
            )

        name, duration, seconds = self._guard(fields)
        tid = _id()
        client_id = f"{secrets.token_hex(16)}.access"
        secret = secrets.token_hex(32)
        now = self._clock()
        token = ServiceToken(
            tid,
            account,
            name,
            client_id,
            secret_digest(secret),
            encode_time(now),
            encode_time(now + datetime.timedelta(seconds=seconds)),
            duration,
        )
        with self._db.write() as db:
            db.execute(
                f"INSERT INTO access_service_tokens ({_SERVICE_COLUMNS})"  # noqa: S608
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    tid,
                    account,
                    name,
                    client_id,
                    token.secret_sha256,
                    duration,
                    token.created_at,
                    token.expires_at,
                ),
            )
            db.execute(_BUMP)
        self.live.changed()
        return IssuedServiceToken(token, secret)

    def rotate_service_token(self, account: str, token_id: str) -> IssuedServiceToken:
        """A new secret for the same client id; the old one stops working at once."""
        secret = secrets.token_hex(32)
        with self._db.write() as db:
            token = self._get_token(db, account, token_id)
            db.execute(
                "UPDATE access_service_tokens SET secret_sha256 = ? WHERE id = ?",
                (secret_digest(secret), token_id),
            )
            db.execute(_BUMP)
        self.live.changed()
        return IssuedServiceToken(
            ServiceToken(
                token.id,
                account,
                token.name,
                token.client_id,
                secret_digest(secret),
                token.created_at,
                token.expires_at,
                token.duration,
            ),
            secret,
        )

    def refresh_service_token(self, account: str, token_id: str) -> ServiceToken:
        """The same secret, valid for another ``duration`` from now (Cloudflare's refresh)."""
        with self._db.write() as db:
            token = self._get_token(db, account, token_id)
            seconds = parse_duration(token.duration, "duration")
            expires = encode_time(self._clock() + datetime.timedelta(seconds=seconds))
            db.execute(
                "UPDATE access_service_tokens SET expires_at = ? WHERE id = ?", (expires, token_id)
            )
            db.execute(_BUMP)
        self.live.changed()
        return ServiceToken(
            token.id,
            account,
            token.name,
            token.client_id,
            token.secret_sha256,
            token.created_at,
            expires,
            token.duration,
        )

    def update_service_token(
        self, account: str, token_id: str, raw: Mapping[str, Any]
    ) -> ServiceToken:
        """Rename, or set ``expires_at`` (ISO 8601; a past moment expires it now)."""
        with self._db.write() as db:
            token = self._get_token(db, account, token_id)

            def fields() -> tuple[str, str]:
                _refuse_unknown(raw, ("name", "expires_at", "duration"), "service token")
                name = _string(raw, "name", "service token", default=token.name)
                expires = raw.get("expires_at", token.expires_at)
                try:
                    moment = datetime.datetime.fromisoformat(str(expires))
                except ValueError:
                    raise InvalidAccess(
                        "service token: expires_at must be an ISO 8601 time"
                    ) from None
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=datetime.UTC)
                return name, encode_time(moment)

            name, expires = self._guard(fields)
            db.execute(
                "UPDATE access_service_tokens SET name = ?, expires_at = ? WHERE id = ?",
                (name, expires, token_id),
            )
            db.execute(_BUMP)
        self.live.changed()
        return self.service_token(account, token_id)

    def delete_service_token(self, account: str, token_id: str) -> ServiceToken:
        with self._db.write() as db:
            token = self._get_token(db, account, token_id)
            db.execute("DELETE FROM access_service_tokens WHERE id = ?", (token_id,))
            db.execute(_BUMP)
        self.live.changed()
        return token

    def service_tokens(self, account: str) -> list[ServiceToken]:
        rows = self._db.read(
            f"SELECT {_SERVICE_COLUMNS} FROM access_service_tokens WHERE account_tag = ?"  # noqa: S608
            " ORDER BY created_at",
            (account,),
        )
        return [_token(r) for r in rows]

    def service_token(self, account: str, token_id: str) -> ServiceToken:
        return self._get_token(self._db.connection(), account, token_id)

    def _get_token(self, db: sqlite3.Connection, account: str, token_id: str) -> ServiceToken:
        row = db.execute(
            f"SELECT {_SERVICE_COLUMNS} FROM access_service_tokens"  # noqa: S608
            " WHERE id = ? AND account_tag = ?",
            (token_id, account),
        ).fetchone()
        if row is None:
            raise AccessNotFound(f"service token {token_id} not found")
        return _token(row)

    # -- the organisation (team domain) and signing keys -----------------------------------

    def set_auth_domain(self, account: str, auth_domain: str) -> str:
        domain = auth_domain.strip().lower().removeprefix("https://").rstrip("/")
        host, _, port = domain.partition(":")
        try:
            check_hostname(host)
        except InvalidHostname as exc:
            raise InvalidAccessSetup(f"auth_domain: {exc}") from None
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise InvalidAccessSetup(
                "auth_domain: the port must be a number (team.example.com:8443)"
            )
        with self._db.write() as db:
            # A team domain is the issuer origins trust and gets the edge's certificate: never
            # a name of another account's zones, nor another team's hostname.
            for (zone,) in db.execute("SELECT name FROM zones WHERE account_tag != ?", (account,)):
                if is_within(host, zone):
                    raise AccessConflict(f"auth_domain {host} is in another account's zone")
            for (taken,) in db.execute(
                "SELECT auth_domain FROM access_orgs WHERE account_tag != ?", (account,)
            ):
                if taken.partition(":")[0] == host:
                    raise AccessConflict(f"auth_domain {host} is another account's")
            try:
                db.execute(
                    "INSERT INTO access_orgs (account_tag, auth_domain) VALUES (?, ?)"
                    " ON CONFLICT (account_tag) DO UPDATE SET auth_domain = excluded.auth_domain",
                    (account, domain),
                )
            except sqlite3.IntegrityError:
                raise AccessConflict(f"auth_domain {domain} is another account's") from None
            self._first_key(db, account)
            db.execute(_BUMP)
        self.live.changed()
        return domain

    def auth_domain(self, account: str) -> str:
        row = self._db.read(
            "SELECT auth_domain FROM access_orgs WHERE account_tag = ?", (account,)
        ).fetchone()
        return row[0] if row is not None else f"{account}.cloudflareaccess.com"

    def _first_key(self, db: sqlite3.Connection, account: str) -> None:
        """The account's first signing key, made with its first application (off the event
        loop, as API writes are), so no request ever waits for an RSA key to be generated."""
        if db.execute("SELECT 1 FROM access_keys WHERE account_tag = ?", (account,)).fetchone():
            return
        self._insert_key(db, account, new_signing_key(), self._clock())

    def set_key_rotation(self, account: str, days: object) -> dict[str, Any]:
        """``key_rotation_interval_days`` (21 to 365)."""
        low, high = ROTATION_DAYS_RANGE
        if not isinstance(days, int) or isinstance(days, bool) or not low <= days <= high:
            raise InvalidAccessSetup(
                f"key_rotation_interval_days must be a whole number from {low} to {high}"
            )
        with self._db.write() as db:
            db.execute(
                "INSERT INTO access_key_settings (account_tag, rotation_days) VALUES (?, ?)"
                " ON CONFLICT (account_tag) DO UPDATE SET rotation_days = excluded.rotation_days",
                (account, days),
            )
            db.execute(_BUMP)
        self.live.changed()
        return self.key_settings(account)

    def key_settings(self, account: str) -> dict[str, Any]:
        """Cloudflare's ``access/keys`` answer."""
        table = self.table()
        interval = table.rotation_interval(account)
        current = next((k for k in table.keys.get(account, ()) if not k.retired), None)
        last = current.created_at if current is not None else None
        now = self._clock().timestamp()
        return {
            "key_rotation_interval_days": int(interval // 86400),
            "last_key_rotation_at": (
                encode_time(datetime.datetime.fromtimestamp(last, datetime.UTC))
                if last is not None
                else None
            ),
            "days_until_next_rotation": (
                max(0, int((last + interval - now) // 86400)) if last is not None else 0
            ),
        }

    def ensure_key(self, account: str) -> SigningKey:
        """The account's current signing key, made on first use."""
        keys = self.table().keys.get(account, ())
        if keys and not keys[0].retired:
            return keys[0]
        return self.rotate_keys(account)

    def rotate_keys(self, account: str) -> SigningKey:
        """A new current key; the previous ones stay in the key set for :data:`KEY_OVERLAP`,
        then go."""
        key = new_signing_key()
        now = self._clock()
        with self._db.write() as db:
            db.execute(
                "DELETE FROM access_keys WHERE account_tag = ? AND retired_at < ?",
                (account, encode_time(now - KEY_OVERLAP)),
            )
            db.execute(
                "UPDATE access_keys SET retired_at = ?"
                " WHERE account_tag = ? AND retired_at IS NULL",
                (encode_time(now), account),
            )
            self._insert_key(db, account, key, now)
            db.execute(_BUMP)
        self.live.reload()
        return key

    @staticmethod
    def _insert_key(
        db: sqlite3.Connection, account: str, key: SigningKey, now: datetime.datetime
    ) -> None:
        db.execute(
            "INSERT INTO access_keys (kid, account_tag, private_pem, cert_pem, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (key.kid, account, key.private_pem(), key.cert_pem, encode_time(now)),
        )

    # -- helpers ---------------------------------------------------------------------------

    def _now(self) -> str:
        return encode_time(self._clock())

    @staticmethod
    def _guard(make: Callable[[], T]) -> T:
        try:
            return make()
        except InvalidAccess as exc:
            raise InvalidAccessSetup(str(exc)) from None


def _idp(row: tuple[Any, ...]) -> IdentityProvider:
    iid, account, name, kind, config, hidden = row
    return IdentityProvider(iid, account, name, kind, json.loads(config), json.loads(hidden))
