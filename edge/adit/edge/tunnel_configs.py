"""Remotely managed tunnel configurations: one stored document per tunnel, versioned.

Cloudflare's ``PUT/GET /accounts/{a}/cfd_tunnel/{id}/configurations``: the body's ``config``
(``ingress``, ``originRequest``, ``warp-routing``, the keys of a config.yml in JSON form with
durations in seconds) is validated by the API, then kept here with a version that grows by one
per PUT of that tunnel, in the same transaction as the read of the previous one (two edge
processes sharing the store never hand out one version twice). Only the latest is kept: a
connector applies only a version newer than the one it runs, so older ones are never sent.
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from adit.edge.database import Database
from adit.edge.database import decode_time as _parse_ts
from adit.edge.database import encode_time as _ts
from adit.edge.errors import TunnelDeleted, TunnelNotFound

__all__ = ["CONFIGS_COUNTER", "SCHEMA", "TABLES", "StoredConfig", "TunnelConfigs"]

#: Bumped by every PUT in its transaction: another edge process sharing the store notices a
#: new version by reading one row (:meth:`TunnelConfigs.counter`).
CONFIGS_COUNTER = "tunnel_configs"
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS tunnel_configs (
    tunnel_id TEXT PRIMARY KEY REFERENCES tunnels(id),
    version INTEGER NOT NULL,
    config TEXT NOT NULL,
    created_at TEXT NOT NULL
)""",
    f"INSERT OR IGNORE INTO counters (name, value) VALUES ('{CONFIGS_COUNTER}', 0)",  # noqa: S608 (a constant)
)
TABLES = frozenset({"tunnel_configs"})


@dataclass(frozen=True)
class StoredConfig:
    """The latest configuration of a tunnel."""

    tunnel_id: uuid.UUID
    version: int
    #: The JSON text of the ``config`` object, as pushed to connectors.
    config: str
    created_at: datetime.datetime

    def config_object(self) -> dict[str, object]:
        """The ``config`` object itself."""
        loaded: dict[str, object] = json.loads(self.config)
        return loaded


class TunnelConfigs:
    """The ``tunnel_configs`` table (reached as ``Store.configs``)."""

    def __init__(self, db: Database, clock: Callable[[], datetime.datetime]) -> None:
        self._db = db
        self._clock = clock

    def put(self, account_tag: str, tunnel_id: uuid.UUID, config: str) -> StoredConfig:
        """Store ``config`` (validated JSON text) as the tunnel's next version; marks the
        tunnel remotely managed. :class:`TunnelNotFound` / :class:`TunnelDeleted` otherwise."""
        now = self._clock()
        with self._db.write() as db:
            row = db.execute(
                "SELECT deleted_at FROM tunnels WHERE id = ? AND account_tag = ?",
                (str(tunnel_id), account_tag),
            ).fetchone()
            if row is None:
                raise TunnelNotFound(f"Tunnel {tunnel_id} not found")
            if row[0] is not None:
                raise TunnelDeleted(f"Tunnel {tunnel_id} has been deleted")
            previous = db.execute(
                "SELECT version FROM tunnel_configs WHERE tunnel_id = ?", (str(tunnel_id),)
            ).fetchone()
            version = 1 if previous is None else int(previous[0]) + 1
            db.execute(
                "INSERT INTO tunnel_configs (tunnel_id, version, config, created_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (tunnel_id) DO UPDATE SET"
                " version = excluded.version, config = excluded.config,"
                " created_at = excluded.created_at",
                (str(tunnel_id), version, config, _ts(now)),
            )
            db.execute("UPDATE tunnels SET remote_config = 1 WHERE id = ?", (str(tunnel_id),))
            db.execute("UPDATE counters SET value = value + 1 WHERE name = ?", (CONFIGS_COUNTER,))
        return StoredConfig(tunnel_id, version, config, now)

    def counter(self) -> int:
        """How many PUTs the store has seen (any process's): one single-row read."""
        row = self._db.read(
            "SELECT value FROM counters WHERE name = ?", (CONFIGS_COUNTER,)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def get(self, tunnel_id: uuid.UUID) -> StoredConfig | None:
        """The tunnel's latest configuration, or None if none was ever stored."""
        row = self._db.read(
            "SELECT version, config, created_at FROM tunnel_configs WHERE tunnel_id = ?",
            (str(tunnel_id),),
        ).fetchone()
        if row is None:
            return None
        created = _parse_ts(row[2])
        assert created is not None
        return StoredConfig(tunnel_id, int(row[0]), str(row[1]), created)
