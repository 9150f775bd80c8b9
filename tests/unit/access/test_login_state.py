"""Logins in progress in the store (:mod:`adit.edge.access.login_state`): what is at rest, single
use, the PIN table's limits, expiry and the sweep. Two ``Store`` objects on one file stand for
two edge processes; the cross-process races themselves are in
tests/access/test_login_across_edges.py."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from adit.edge.access.login_state import LoginState, TransfersFull
from adit.edge.access.oidc_client import FLOW_LIFETIME, FlowRefused
from adit.edge.access.pin import MAX_ATTEMPTS, MAX_ISSUES, PIN_LIFETIME, PinLocked, PinResult
from adit.edge.store import Store

NOW = 1_800_000_000.0


@pytest.fixture
def two(tmp_path: Path) -> tuple[LoginState, LoginState]:
    first = Store(tmp_path / "store.db")
    second = Store(tmp_path / "store.db")
    return LoginState(first.access.db), LoginState(second.access.db)


def _dump(path: Path) -> bytes:
    with sqlite3.connect(path) as db:
        return "\n".join(db.iterdump()).encode()


def test_the_csrf_key_is_one_for_every_process(two: tuple[LoginState, LoginState]) -> None:
    a, b = two
    key = a.shared_key("csrf")
    assert len(key) == 32
    assert b.shared_key("csrf") == key
    assert a.shared_key("other") != key


def test_a_flow_is_taken_once_and_nothing_secret_is_stored(
    two: tuple[LoginState, LoginState], tmp_path: Path
) -> None:
    a, b = two
    flow_id, flow = a.begin_flow("idp-1", "https://h/cdn-cgi/access/callback", "/back", NOW)
    assert len(flow.code_verifier) >= 43 and flow.state != flow.nonce != flow.code_verifier
    dump = _dump(tmp_path / "store.db")
    for secret in (flow_id, flow.state, flow.nonce, flow.code_verifier):
        assert secret.encode() not in dump
    idp, taken = b.take_flow(flow_id, flow.state, NOW + 1)
    assert idp == "idp-1" and taken == flow
    with pytest.raises(FlowRefused, match="no login in progress"):
        a.take_flow(flow_id, flow.state, NOW + 2)


def test_a_forged_state_or_a_late_callback_is_refused_and_ends_the_flow(
    two: tuple[LoginState, LoginState],
) -> None:
    a, b = two
    flow_id, flow = a.begin_flow("idp-1", "https://h/cb", "/", NOW)
    with pytest.raises(FlowRefused, match="state"):
        b.take_flow(flow_id, "forged", NOW)
    with pytest.raises(FlowRefused, match="no login in progress"):
        b.take_flow(flow_id, flow.state, NOW)
    late_id, late = a.begin_flow("idp-1", "https://h/cb", "/", NOW)
    with pytest.raises(FlowRefused, match="too long"):
        b.take_flow(late_id, late.state, NOW + FLOW_LIFETIME)


def test_pin_limits_hold_across_processes(
    two: tuple[LoginState, LoginState], tmp_path: Path
) -> None:
    a, b = two
    pin = a.issue_pin("idp", "x@example.com", NOW)
    assert pin.encode() not in _dump(tmp_path / "store.db")
    wrong = f"{(int(pin) + 1) % 1_000_000:06d}"
    results = [
        (a if i % 2 else b).check_pin("idp", "x@example.com", wrong, NOW)
        for i in range(MAX_ATTEMPTS)
    ]
    assert results == [PinResult.WRONG] * (MAX_ATTEMPTS - 1) + [PinResult.LOCKED]
    assert b.check_pin("idp", "x@example.com", pin, NOW) is PinResult.LOCKED
    with pytest.raises(PinLocked):
        a.issue_pin("idp", "x@example.com", NOW)
    # A new lifetime, a new PIN.
    fresh = b.issue_pin("idp", "x@example.com", NOW + PIN_LIFETIME)
    assert a.check_pin("idp", "x@example.com", fresh, NOW + PIN_LIFETIME) is PinResult.ACCEPTED
    assert b.check_pin("idp", "x@example.com", fresh, NOW + PIN_LIFETIME) is PinResult.UNKNOWN


def test_reissued_pins_replace_the_old_one_up_to_a_limit(
    two: tuple[LoginState, LoginState],
) -> None:
    a, b = two
    pins = [a.issue_pin("idp", "y@example.com", NOW + i) for i in range(MAX_ISSUES)]
    with pytest.raises(PinLocked):
        b.issue_pin("idp", "y@example.com", NOW + MAX_ISSUES)
    if pins[0] != pins[-1]:
        assert b.check_pin("idp", "y@example.com", pins[0], NOW + 10) is PinResult.WRONG
    assert b.check_pin("idp", "y@example.com", pins[-1], NOW + 10) is PinResult.ACCEPTED
    # Another provider's PIN for the same address is its own.
    other = a.issue_pin("idp-2", "y@example.com", NOW)
    assert b.check_pin("idp", "y@example.com", other, NOW) is PinResult.UNKNOWN
    later = NOW + PIN_LIFETIME
    assert a.check_pin("idp-2", "y@example.com", other, later) is PinResult.EXPIRED


def test_a_pin_raced_by_two_processes_is_accepted_once(
    two: tuple[LoginState, LoginState],
) -> None:
    a, b = two
    for round_ in range(5):
        email = f"race{round_}@example.com"
        pin = a.issue_pin("idp", email, NOW)
        with ThreadPoolExecutor(2) as pool:
            results = list(
                pool.map(
                    LoginState.check_pin, (a, b), ["idp"] * 2, [email] * 2, [pin] * 2, [NOW] * 2
                )
            )
        assert sorted(r.value for r in results) == ["accepted", "unknown"]


def test_a_transfer_is_claimed_once_and_expires(two: tuple[LoginState, LoginState]) -> None:
    a, b = two
    assert b.claim_transfer("key", NOW) is None
    a.put_transfer("key", b"sealed", NOW)
    with ThreadPoolExecutor(2) as pool:
        claims = list(pool.map(lambda s: s.claim_transfer("key", NOW), (a, b)))
    assert sorted(claims, key=lambda c: c is None) == [b"sealed", None]
    a.put_transfer("late", b"sealed", NOW)
    assert b.claim_transfer("late", NOW + 300) is None


def test_transfers_are_bounded(
    two: tuple[LoginState, LoginState], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = two
    monkeypatch.setattr("adit.edge.access.login_state.MAX_TRANSFERS", 2)
    a.put_transfer("k1", b"1", NOW)
    a.put_transfer("k2", b"2", NOW)
    with pytest.raises(TransfersFull):
        a.put_transfer("k3", b"3", NOW)
    a.put_transfer("k3", b"3", NOW + 300)  # the others expired: swept first


def test_the_sweep_deletes_expired_rows_only(two: tuple[LoginState, LoginState]) -> None:
    a, b = two
    a.begin_flow("idp", "https://h/cb", "/", NOW)
    a.issue_pin("idp", "z@example.com", NOW)
    a.put_transfer("k", b"s", NOW)
    assert b.sweep(NOW + 1) == 0
    keep_id, keep = a.begin_flow("idp", "https://h/cb", "/", NOW + 1)
    assert b.sweep(NOW + PIN_LIFETIME) == 3
    assert b.take_flow(keep_id, keep.state, NOW + PIN_LIFETIME)[1] == keep


def test_a_callback_raced_at_two_processes_is_taken_once(
    two: tuple[LoginState, LoginState],
) -> None:
    a, b = two
    for _ in range(5):
        flow_id, flow = a.begin_flow("idp", "https://h/cb", "/", NOW)

        def take(state: LoginState, flow_id: str = flow_id, good: str = flow.state) -> str:
            try:
                return state.take_flow(flow_id, good, NOW)[0]
            except FlowRefused:
                return "refused"

        with ThreadPoolExecutor(2) as pool:
            results = sorted(pool.map(take, (a, b)))
        assert results == ["idp", "refused"]
