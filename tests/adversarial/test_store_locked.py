"""Issue 13 item 17: the store never blocks the data plane.

Every API call took ``BEGIN IMMEDIATE`` on the event loop: while another process held the
store's write lock (``adit edge token create``, a second edge on the same state dir), one API
call froze all routing for 5 s and then failed without a response, and so did a connector's
registration. Reads take no write lock, writes run on a thread with a bounded wait, a locked
store answers the API caller 503 (v4 envelope), connectors register, and routing goes on from
memory.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from adversary import SteadyLoad, Tenant, api_call, start_tenant
from harness import Edge, Origin, Proc, Processes, start_connector

pytestmark = pytest.mark.process

HOLD_SECONDS = 12.0

_LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("ROLLBACK")
print("released", flush=True)
"""


def _hold_write_lock(processes: Processes, edge: Edge, seconds: float) -> Proc:
    """Another process holding the store's write lock, as an admin command would."""
    store = next(edge.state_dir.glob("*.sqlite3"))
    locker = processes.start("locker", [sys.executable, "-c", _LOCKER, str(store), str(seconds)])
    locker.wait_for_log("locked")
    return locker


@pytest.fixture
def served(processes: Processes, edge: Edge, origin: Origin) -> Tenant:
    """A tenant in front of the harness's keep-alive origin (a SteadyLoad needs an origin
    that answers every request of a reused connection; RawOrigin answers one)."""
    return start_tenant(processes, edge, "steady", "steady.example.test", origin.url)


def test_a_locked_store_costs_api_writes_a_503_and_routing_nothing(
    processes: Processes, edge: Edge, served: Tenant, tmp_path: Path
) -> None:
    tenant = served
    account = tenant.account
    config = tmp_path / "config-steady.yml"  # start_tenant wrote it
    path = f"/client/v4/accounts/{account.tag}/cfd_tunnel"
    with SteadyLoad(edge, tenant.hostname, rate=20, timeout=3) as load:
        time.sleep(0.5)
        locker = _hold_write_lock(processes, edge, HOLD_SECONDS)
        locked_at = time.monotonic()
        # A read needs no write lock: answered as usual.
        status, body = api_call(account, "GET", path)
        assert status == 200, body
        # A write cannot happen now: a 503 in the v4 envelope, in bounded time.
        status, body = api_call(account, "POST", path, json.dumps({"name": "late"}).encode())
        answered_in = time.monotonic() - locked_at
        assert status == 503, body
        reply = json.loads(body)
        assert reply["success"] is False and reply["errors"][0]["code"], reply
        assert answered_in < HOLD_SECONDS, "the API waited for the lock to go"
        # A connector registers meanwhile: registration only reads the store.
        second = start_connector(
            processes, tenant.tunnel, config, name="connector-during-lock", wait=0
        )
        second.wait_for_log(r"Registered tunnel connection", timeout=HOLD_SECONDS)
        assert "released" not in locker.text(), "registered only once the lock was gone"
        locker.wait_for_log("released", timeout=HOLD_SECONDS + 10)
        time.sleep(0.5)
    # The refused write did not happen behind the caller's back.
    status, body = api_call(account, "GET", path + "?name=late")
    assert status == 200 and json.loads(body)["result"] == [], body
    # Once the lock is gone, writes work again.
    status, body = api_call(account, "POST", path, json.dumps({"name": "later"}).encode())
    assert status == 200, body
    assert load.outcomes and load.failures() == [], load.failures()[:3]
    # Routing went on all along: the load kept its rate while the lock was held.
    during = load.between(locked_at, locked_at + HOLD_SECONDS - 1)
    assert len(during) >= 20 * (HOLD_SECONDS - 1) * 0.5, len(during)
    assert all(o.status == 200 for o in during)
