"""A configuration pushed to a connector over QUIC: ``updateConfiguration`` on an RPC stream
the edge opens (PROTOCOL.md §5.6), to the unmodified cloudflared and to adit's connector.

The edge runs in the test's event loop (:mod:`udp_tunnel`) to call the push directly (the
API that makes a tunnel remotely managed is another matter). cloudflared runs in a private
network namespace holding only loopback, as in test_cloudflared_quic.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import dns_records
from adversary import CLOUDFLARED, INSIDE_NETNS, rerun_in_private_netns
from asynctests import asynctest
from harness import Proc, Processes, adit_command
from udp_tunnel import InProcessEdge, in_process_edge

pytestmark = pytest.mark.process

#: cloudflared's remote configuration JSON (CLOUDFLARED_FEATURES.md: the edge's push).
CONFIG = json.dumps({"ingress": [{"service": "http_status:418"}], "warp-routing": {}}).encode()


def _connector(
    processes: Processes,
    edge: InProcessEdge,
    tmp_path: Path,
    command: list[str],
    *,
    run: str,
    hello_world: bool = True,
) -> Proc:
    """``command`` then the edge's flags, with ``run`` before or after them (cloudflared takes
    them before ``run`` only, adit after it only, for now)."""
    credentials = edge.write_credentials(tmp_path / "credentials.json")
    return processes.start(
        Path(command[0]).name,
        [
            *command,
            *(["run"] if run == "first" else []),
            "--edge",
            edge.tunnel_address,
            "--cacert",
            str(edge.ca_path),
            "--protocol",
            "quic",
            "--metrics",
            "127.0.0.1:0",
            "--grace-period",
            "1s",
            *(["run"] if run == "last" else []),
            "--credentials-file",
            str(credentials),
            *(["--hello-world"] if hello_world else []),
            str(edge.tunnel.id),
        ],
        env={"HOME": str(tmp_path)},
    )


def _metrics_address(proc: Proc) -> str:
    text = proc.wait_for_log(r"Starting metrics server on \S+/metrics")
    match = re.search(r"Starting metrics server on (\S+)/metrics", text)
    assert match, proc.text()
    return match.group(1)


@pytest.mark.skipif(not CLOUDFLARED, reason="set ADIT_CLOUDFLARED to a cloudflared binary")
def test_in_a_loopback_only_namespace() -> None:
    rerun_in_private_netns(
        f"{Path(__file__)}::test_cloudflared_applies_a_pushed_configuration", resolver=True
    )


@pytest.fixture
def resolver() -> Iterator[None]:
    with dns_records.serving():
        yield


@pytest.mark.skipif(not INSIDE_NETNS, reason="runs inside the namespace of its twin")
def test_cloudflared_applies_a_pushed_configuration(
    processes: Processes, tmp_path: Path, resolver: None
) -> None:
    @asynctest
    async def run() -> None:
        async with in_process_edge(tmp_path / "edge") as edge:
            assert CLOUDFLARED is not None
            proc = _connector(
                processes,
                edge,
                tmp_path,
                [CLOUDFLARED, "tunnel", "--no-autoupdate", "--no-prechecks"],
                run="last",
            )
            session = await edge.session(timeout=30)
            assert await session.update_configuration(7, CONFIG) == (7, None)
            address = _metrics_address(proc)

            def read_config() -> dict[str, object]:
                with urllib.request.urlopen(f"http://{address}/config", timeout=10) as reply:
                    loaded: dict[str, object] = json.loads(reply.read())
                return loaded

            applied = await asyncio.to_thread(read_config)
            assert applied["version"] == 7, applied
            # An older version is not applied again: cloudflared answers with the one it has.
            assert await session.update_configuration(3, CONFIG) == (7, None)

    run()


def test_adits_connector_with_local_ingress_takes_a_push_as_cloudflared_does(
    processes: Processes, tmp_path: Path
) -> None:
    """cloudflared's orchestrator applies a push whatever its local ingress (a tunnel moved to
    remote management is taken over by the edge's first version): adit's connector too."""

    @asynctest
    async def run() -> None:
        async with in_process_edge(tmp_path / "edge") as edge:
            _connector(processes, edge, tmp_path, [*adit_command(), "tunnel"], run="first")
            session = await edge.session(timeout=30)
            assert await session.update_configuration(7, CONFIG) == (7, None)
            assert await session.update_configuration(3, CONFIG) == (7, None)

    run()


def test_adits_token_only_connector_applies_only_newer_valid_versions(
    processes: Processes, tmp_path: Path
) -> None:
    """Without local ingress adit's connector applies a push as cloudflared's orchestrator
    does: a newer version is applied (on every worker, through the supervisor), an older or
    equal one is answered with the version in force, an invalid one keeps it and says why."""

    @asynctest
    async def run() -> None:
        async with in_process_edge(tmp_path / "edge") as edge:
            proc = _connector(
                processes,
                edge,
                tmp_path,
                [*adit_command(), "tunnel"],
                run="first",
                hello_world=False,
            )
            session = await edge.session(timeout=30)
            assert await session.update_configuration(7, CONFIG) == (7, None)
            assert await session.update_configuration(3, CONFIG) == (7, None)
            assert await session.update_configuration(7, CONFIG) == (7, None)
            bad = json.dumps({"ingress": [{"service": "bogus"}]}).encode()
            version, error = await session.update_configuration(8, bad)
            assert version == 7
            assert error is not None and "invalid configuration version 8" in error, error
            no_catch_all = json.dumps(
                {"ingress": [{"hostname": "a.example.test", "service": "http_status:200"}]}
            ).encode()
            version, error = await session.update_configuration(9, no_catch_all)
            assert (version, error is not None) == (7, True)
            assert await session.update_configuration(10, CONFIG) == (10, None)
            await asyncio.to_thread(proc.wait_for_log, "remoteVersion", 10, 2)

    run()
