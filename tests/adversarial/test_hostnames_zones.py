"""Issue 13 item 16: hostname ownership. Any account could route any name: ``*.test``,
``localhost``, a wildcard over another account's names, a name below another account's route.

Zones belong to accounts (the edge's admin gives them: ``adit edge zone add``); a route lies
inside a zone of its account; a wildcard never reaches outside it; single-label names and
public suffixes are no zones and no routes.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from adversary import RawOrigin, exchange, start_tenant, status_of
from harness import Account, Edge, Processes, login, run_cli

pytestmark = pytest.mark.process

VICTIM = "app.example.test"


def _admin(edge: Edge, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    home = edge.state_dir.parent / "admin-home"
    home.mkdir(exist_ok=True)
    return run_cli(["edge", *args, "--state-dir", str(edge.state_dir)], home=home, check=check)


def _get(edge: Edge, host: str, timeout: float = 10.0) -> bytes:
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    return exchange(edge.http, request, timeout)


def _status_soon(edge: Edge, host: str, expected: int, within: float = 10.0) -> int:
    """The status for ``host`` once it is ``expected`` (the edge's route watcher looks every
    half second for changes an admin command made), else the last one seen."""
    deadline = time.monotonic() + within
    status = 0
    while time.monotonic() < deadline:
        status = status_of(_get(edge, host, timeout=2))
        if status == expected:
            break
        time.sleep(0.2)
    return status


@pytest.mark.parametrize(
    "name",
    [
        "*.example.test",  # a wildcard over the victim's neighbours
        "x.app.example.test",  # a name below the victim's route
        "example.test",
        "*.test",
        "test",
        "localhost",
        "*.localhost",
        "other.example.com",
    ],
)
def test_an_account_without_zones_routes_nothing(
    processes: Processes, edge: Edge, recorder: RawOrigin, name: str
) -> None:
    start_tenant(processes, edge, "victim", VICTIM, recorder.url)
    mallory = login(edge, processes.tmp / "home-mallory", "mallory")
    mallory.cli("tunnel", "create", "grab")
    refused = mallory.cli("tunnel", "route", "dns", "grab", name, check=False)
    assert refused.returncode != 0, f"{name} was routed:\n{refused.stdout}{refused.stderr}"
    # Cloudflare's shape: an error code, and what to do about it.
    assert re.search(r"code: \d+", refused.stderr), refused.stderr
    reasons = ("administrator", "public suffix", "single label")
    assert any(reason in refused.stderr for reason in reasons), refused.stderr
    probe_name = name.replace("*", "probe")
    if probe_name != VICTIM:
        assert status_of(_get(edge, probe_name)) in (400, 404)
    assert status_of(_get(edge, VICTIM)) == 200


def _route(account: Account, tunnel: str, name: str) -> subprocess.CompletedProcess[str]:
    return account.cli("tunnel", "route", "dns", tunnel, name, check=False)


def test_zones_belong_to_one_account_and_bound_its_routes(
    processes: Processes, edge: Edge, recorder: RawOrigin
) -> None:
    # Zones that are no zones: single labels, public suffixes (the list ships with the edge).
    owner = login(edge, processes.tmp / "home-owner", "owner")
    for bad in ("test", "com", "co.uk", "github.io", "*.example.com", "-x.example.com"):
        refused = _admin(edge, "zone", "add", "--account", owner.tag, bad, check=False)
        assert refused.returncode != 0, f"zone {bad} was accepted"
    assert _admin(edge, "zone", "add", "--account", owner.tag, "Example.Test.").returncode == 0
    # Adding it again for the same account is a no-op; for another account it is refused,
    # and so is any zone that overlaps it, above or below.
    assert _admin(edge, "zone", "add", "--account", owner.tag, "example.test").returncode == 0
    other = login(edge, processes.tmp / "home-other", "other")
    for overlap in ("example.test", "deep.example.test"):
        refused = _admin(edge, "zone", "add", "--account", other.tag, overlap, check=False)
        assert refused.returncode != 0, f"{overlap} given to a second account"
        assert "another account" in refused.stderr, refused.stderr
    assert _admin(edge, "zone", "add", "--account", other.tag, "example.org").returncode == 0
    refused = _admin(edge, "zone", "add", "--account", owner.tag, "sub.example.org", check=False)
    assert refused.returncode != 0
    listed = _admin(edge, "zone", "list").stdout
    assert re.search(rf"^example\.test\s+{owner.tag}\b", listed, re.M), listed
    assert re.search(rf"^example\.org\s+{other.tag}\b", listed, re.M), listed

    # Inside the zone: the apex, names below it, a wildcard at its apex.
    owner.cli("tunnel", "create", "web")
    for name in ("example.test", "app.example.test", "*.example.test", "*.deep.example.test"):
        assert _route(owner, "web", name).returncode == 0, name
    # Outside: another account's zone, a wildcard reaching above the zone.
    for name in ("example.org", "x.example.org", "*.test", "*.org"):
        assert _route(owner, "web", name).returncode != 0, name

    # The owner's tenant serves names under the wildcard; the zone's removal takes the routes
    # with it.
    tenant = start_tenant(processes, edge, "tenant", "svc.example.net", recorder.url)
    assert status_of(_get(edge, tenant.hostname)) == 200
    removed = _admin(edge, "zone", "remove", "svc.example.net")  # the harness's zone for it
    assert "with 1 route" in removed.stdout, removed.stdout
    assert _status_soon(edge, tenant.hostname, 404) == 404
    assert "svc.example.net" not in _admin(edge, "zone", "list").stdout
