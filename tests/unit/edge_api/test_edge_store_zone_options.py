"""Per-zone options (Always Use HTTPS, HSTS): stored, found for names below the zone, gone with
the zone, and seen by another process's store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adit.edge.store import Store, ZoneNotFound
from adit.edge.zone_options import ZoneOptions


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open_in(tmp_path / "state")
    yield s
    s.close()


def test_options_apply_to_the_zone_and_the_names_below_it(store: Store) -> None:
    account = store.create_account("acme")
    store.add_zone(account.tag, "example.com")
    store.add_zone(account.tag, "other.org")
    assert not store.has_zone_options()
    store.set_zone_options("Example.COM", ZoneOptions(always_https=True, hsts_max_age=600))
    assert store.has_zone_options()
    assert store.zone_options("example.com") == ZoneOptions(True, 600)
    assert store.zone_options("a.b.example.com") == ZoneOptions(True, 600)
    assert store.zone_options("other.org") == ZoneOptions()
    assert store.zone_options("notexample.com") == ZoneOptions()
    assert store.zone_options_of("example.com") == ZoneOptions(True, 600)
    store.set_zone_options("example.com", ZoneOptions())
    assert store.zone_options("example.com") == ZoneOptions()
    assert not store.has_zone_options()


def test_an_unknown_zone_is_refused(store: Store) -> None:
    with pytest.raises(ZoneNotFound):
        store.set_zone_options("nowhere.example", ZoneOptions(True, 0))


def test_options_go_with_their_zone_and_another_process_sees_changes(
    store: Store, tmp_path: Path
) -> None:
    other = Store.open_in(tmp_path / "state")
    try:
        account = store.create_account("acme")
        store.add_zone(account.tag, "example.com")
        assert other.zone_options("example.com") == ZoneOptions()  # its table is built now
        store.set_zone_options("example.com", ZoneOptions(False, 60))
        assert other.refresh_zone_options()
        assert other.zone_options("www.example.com") == ZoneOptions(False, 60)
        store.remove_zone("example.com")
        assert store.zone_options("example.com") == ZoneOptions()
        assert other.refresh_zone_options()
        assert other.zone_options("example.com") == ZoneOptions()
    finally:
        other.close()
