"""The access log: kept for its retention, filtered and paged per account."""

from __future__ import annotations

import datetime

from adit.edge.access.decisions import DecisionLog, Entry, query
from adit.edge.database import encode_time
from adit.edge.store import Store


def entry(account: str, at: datetime.datetime, action: str, email: str = "") -> Entry:
    return Entry(
        account,
        encode_time(at),
        "app",
        "app.example.test",
        email,
        "",
        "DE",
        "192.0.2.1",
        action,
        action == "allow",
        "",
        "ray",
    )


def test_old_decisions_go_and_queries_filter_and_page() -> None:
    store = Store(":memory:")
    try:
        now = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.UTC)
        log = DecisionLog(store.access.db, retention=datetime.timedelta(days=2), clock=lambda: now)
        log.record(entry("a", now - datetime.timedelta(days=3), "deny"))
        log.record(entry("b", now - datetime.timedelta(days=3), "deny"))
        log.write_now()  # past the retention when written: purged in the same batch
        for hour in range(5):
            log.record(entry("a", now - datetime.timedelta(hours=hour), "allow", "ann@example.com"))
        log.record(entry("a", now, "login"))
        log.record(entry("b", now, "allow"))
        log.write_now()
        rows, total = query(store.access.db, "a")
        assert total == 6 and all(e.account == "a" for e in rows)
        assert rows[0].at >= rows[-1].at  # newest first
        page, total = query(store.access.db, "a", action="allow", limit=2, offset=2)
        assert total == 5 and len(page) == 2
        since = encode_time(now - datetime.timedelta(hours=1, minutes=30))
        _, total = query(store.access.db, "a", since=since, email="ANN@example.com")
        assert total == 2
        # The retention: with a later clock, the next batch purges what is too old.
        later = now + datetime.timedelta(days=2) - datetime.timedelta(hours=2, minutes=30)
        log = DecisionLog(
            store.access.db, retention=datetime.timedelta(days=2), clock=lambda: later
        )
        log.record(entry("a", later, "deny"))
        log.write_now()
        rows, total = query(store.access.db, "a")
        assert total == 5  # hours 3 and 4 went (the 3-day-old rows went at once)
        assert query(store.access.db, "b")[1] == 1
    finally:
        store.close()
