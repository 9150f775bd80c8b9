"""A store whose write lock another process holds (issue 13 item 17): reads go on, writes
give up in bounded time having written nothing, the event loop never waits."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adit.edge.store import STORE_FILE, Store, StoreBusy


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open_in(tmp_path, write_timeout=0.3)
    yield s
    s.close()


@pytest.fixture
def locked(tmp_path: Path, store: Store) -> Iterator[sqlite3.Connection]:
    """Another connection (as another process would) holding BEGIN IMMEDIATE."""
    other = sqlite3.connect(tmp_path / STORE_FILE, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    yield other
    other.execute("ROLLBACK")
    other.close()


def test_reads_go_on_while_another_process_writes(store: Store, tmp_path: Path) -> None:
    account = store.create_account("a")
    token = store.create_api_token(account.tag)
    tunnel = store.create_tunnel(account.tag, "t")
    other = sqlite3.connect(tmp_path / STORE_FILE, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    assert store.authenticate(token.token) == account.tag
    assert store.get_tunnel(account.tag, tunnel.id) == tunnel
    assert [t.id for t in store.list_tunnels(account.tag)] == [tunnel.id]
    assert store.match_tunnel_secret(tunnel.id, account.tag, tunnel.secret).value == "current"
    assert store.tunnel_for_hostname("nothing.example") is None
    assert store.refresh_routes() is False
    assert time.monotonic() - started < 0.25  # no read waited for the lock
    other.execute("ROLLBACK")
    other.close()


def test_a_write_gives_up_at_its_deadline_having_written_nothing(
    store: Store, locked: sqlite3.Connection
) -> None:
    started = time.monotonic()
    with pytest.raises(StoreBusy):
        store.create_account("late")
    assert 0.25 <= time.monotonic() - started < 5
    locked.execute("ROLLBACK")
    locked.execute("BEGIN IMMEDIATE")  # the fixture rolls back once more
    assert [a.name for a in store.list_accounts()] == []


def test_off_loop_writes_never_block_the_loop(store: Store, locked: sqlite3.Connection) -> None:
    async def main() -> tuple[int, list[BaseException | str]]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        # Three writes queued behind each other: each deadline counts from its request, so
        # all three are refused within one write_timeout, not three.
        started = time.monotonic()
        results = await asyncio.gather(
            *(store.off_loop(store.create_account, f"a{i}") for i in range(3)),
            return_exceptions=True,
        )
        assert time.monotonic() - started < 0.3 * 2
        ticker.cancel()
        return ticks, [r if isinstance(r, BaseException) else "written" for r in results]

    ticks, results = asyncio.run(main())
    assert all(isinstance(r, StoreBusy) for r in results), results
    assert ticks >= 10  # the loop ran all along


def test_off_loop_writes_happen_once_the_lock_is_gone(store: Store, tmp_path: Path) -> None:
    other = sqlite3.connect(tmp_path / STORE_FILE, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    threading.Timer(0.1, other.execute, ("ROLLBACK",)).start()

    async def main() -> str:
        account = await store.off_loop(store.create_account, "patient")
        return account.name

    assert asyncio.run(main()) == "patient"
    other.close()


def test_opening_an_existing_store_takes_no_write_lock(
    tmp_path: Path, store: Store, locked: sqlite3.Connection
) -> None:
    again = Store.open_in(tmp_path, write_timeout=0.1)
    assert again.list_accounts() == []
    again.close()
