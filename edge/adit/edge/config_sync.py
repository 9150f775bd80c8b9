"""Configurations stored by another edge process reach this one's connections.

Edge processes that share a store (locations on one host, a shared database) each push a PUT
only to their own connections. So each process watches the store's ``tunnel_configs`` counter
(one single-row read per interval) and, when it moved, pushes every stored version newer than
what each of its connections was pushed. This process's own PUTs move the counter too: their
connections are found already pushed and are skipped.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from adit.edge.registry import ConnectionRegistry, LiveConnection
from adit.edge.store import Store, StoreError

__all__ = ["SYNC_INTERVAL", "sync_configs"]

log = logging.getLogger("adit.edge.config")

#: How often the counter is read.
SYNC_INTERVAL = 1.0


def push_newer(store: Store, registry: ConnectionRegistry) -> int:
    """Push each connected tunnel's stored version to its connections that were not pushed it
    (nor a newer one); returns how many pushes were queued."""
    by_tunnel: dict[uuid.UUID, list[LiveConnection]] = {}
    for conn in registry.all_connections():
        if not conn.draining:
            by_tunnel.setdefault(conn.tunnel_id, []).append(conn)
    queued = 0
    for tunnel_id, conns in by_tunnel.items():
        stored = store.configs.get(tunnel_id)
        if stored is None:
            continue
        for conn in conns:
            if registry.config_pusher.newest(conn) < stored.version:
                registry.config_pusher.push(conn, stored.version, stored.config.encode())
                queued += 1
    return queued


async def sync_configs(store: Store, registry: ConnectionRegistry, interval: float) -> None:
    """Run :func:`push_newer` whenever the store's counter moved, until cancelled."""
    seen: int | None = None
    while True:
        await asyncio.sleep(interval)
        try:
            counter = store.configs.counter()
            if counter == seen:
                continue
            seen = counter
            queued = push_newer(store, registry)
        except StoreError as exc:
            log.warning("cannot read tunnel configurations from the store: %s", exc)
            continue
        if queued:
            log.info("pushing %d stored configuration(s) another edge process stored", queued)
