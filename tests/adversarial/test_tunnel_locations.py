"""A location that comes back gets its connections back (issue 13, item 14).

Two ``adit edge`` processes are two locations (one store and CA, as in test_ha_locations),
each with two tunnel listeners; the connector knows all four addresses and keeps two
connections, one per location. When location b dies, its connection moves to the free
address of location a within a second. The old connector then stayed there for good (46+ s
of 530 through b once it was back), because it had another address to stay on: the HA test
in tests/process had none, so it never saw this.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from adversary import SteadyLoad
from harness import (
    Edge,
    Origin,
    Processes,
    create_tunnel,
    login,
    request,
    start_connector,
    start_location,
    write_config,
)

pytestmark = pytest.mark.process

HOST = "home.example.test"
REGISTERED = r"Registered tunnel connection tunnelID=\S+ connIndex=(\d+)"
#: A generous bound on the time until the moved connection is back on its home address.
BACK_WITHIN = 30.0


def _indexes(edge: Edge) -> list[int]:
    return [int(i) for i in re.findall(REGISTERED, edge.proc.text())]


def test_a_connection_moves_back_when_its_location_returns(
    processes: Processes, origin: Origin, tmp_path: Path
) -> None:
    two = ["127.0.0.1:0", "127.0.0.1:0"]
    edge_a = start_location(processes, "edge-a", "a", two)
    edge_b = start_location(processes, "edge-b", "b", two, edge_a)
    account = login(edge_a, tmp_path / "home")
    tunnel = create_tunnel(account, "home", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    # Interleaved: a plain --edge list is split alternately into two locations (cloudflared's
    # rule), so connection 0's home is a's first address and connection 1's is b's first.
    addresses: list[str] = []
    for pair in zip(edge_a.tunnel, edge_b.tunnel, strict=True):
        for address in pair:
            addresses += ["--edge", address]
    start_connector(
        processes,
        tunnel,
        config,
        extra=[*addresses, "--ha-connections", "2", "--workers", "2"],
        wait=0,
    )
    edge_a.proc.wait_for_log(REGISTERED, count=1)
    edge_b.proc.wait_for_log(REGISTERED, count=1)
    (home_of_b,) = _indexes(edge_b)

    with SteadyLoad(edge_a, HOST, rate=20) as load:
        # Location b dies: its connection moves to location a's free address.
        edge_b.proc.popen.kill()
        edge_b.proc.popen.wait(timeout=10)
        edge_a.proc.wait_for_log(REGISTERED, count=2, timeout=20)
        assert sorted(_indexes(edge_a)) == sorted([*_indexes(edge_a)[:1], home_of_b])

        # Back on the same addresses: the connection returns, rolling (registered at b
        # before it is unregistered at a), while a's requests go on.
        edge_b2 = start_location(processes, "edge-b2", "b", edge_b.tunnel, edge_a)
        back_since = time.monotonic()
        edge_b2.proc.wait_for_log(REGISTERED, count=1, timeout=BACK_WITHIN)
        took = time.monotonic() - back_since
        assert _indexes(edge_b2) == [home_of_b]
        edge_a.proc.wait_for_log(rf"connector unregistered tunnelID=\S+ connIndex={home_of_b}")
        time.sleep(1.0)

    assert load.failures() == [], load.failures()[:5]
    assert request(edge_b2, HOST).status == 200
    print(f"back home {took:.1f}s after location b restarted")
