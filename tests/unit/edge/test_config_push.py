"""ConfigPusher: one push in flight per connection, the newest waiting one wins, every push
bounded in time; outcomes classified from the connector's answer."""

from __future__ import annotations

import asyncio
import datetime
import uuid
from dataclasses import dataclass, field

from adit.edge.config_push import ConfigPusher, PushStatus
from adit.edge.registry import LiveConnection


@dataclass
class GatedConnector:
    """Answers a push only when the test opens the gate; records what it was sent."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    seen: list[int] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    runs: int = -1
    #: Answers with the version it runs without applying anything (and without an error).
    stuck: bool = False

    def close(self, reason: str) -> None:
        pass

    def revalidate(self) -> bool:
        return True

    async def update_configuration(self, version: int, config: bytes) -> tuple[int, str | None]:
        self.seen.append(version)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.gate.wait()
        finally:
            self.in_flight -= 1
        # cloudflared's orchestrator: only a newer version is applied.
        if not self.stuck:
            self.runs = max(self.runs, version)
        return self.runs, None

    @property
    def full(self) -> bool:
        return False


def _conn(handle: GatedConnector) -> LiveConnection:
    return LiveConnection(
        tunnel_id=uuid.uuid4(),
        account_tag="a",
        connection_id=uuid.uuid4(),
        client_id=uuid.uuid4(),
        conn_index=0,
        location="test",
        origin_ip="127.0.0.1",
        opened_at=datetime.datetime.now(datetime.UTC),
        client_version="x",
        arch="x",
        features=(),
        handle=handle,
    )


def test_one_in_flight_and_the_newest_waiting_push_wins() -> None:
    async def run() -> None:
        connector = GatedConnector()
        conn = _conn(connector)
        pusher = ConfigPusher(timeout=10)
        first = pusher.push(conn, 1, b"{}")
        await asyncio.sleep(0)
        second = pusher.push(conn, 2, b"{}")
        third = pusher.push(conn, 3, b"{}")
        older = pusher.push(conn, 2, b"{}")  # behind a newer waiting one: pointless
        assert (await second).status is PushStatus.SUPERSEDED
        assert (await older).status is PushStatus.SUPERSEDED
        connector.gate.set()
        assert (await first).status is PushStatus.APPLIED
        outcome = await third
        assert (outcome.status, outcome.applied_version) == (PushStatus.APPLIED, 3)
        assert connector.seen == [1, 3]
        assert connector.most_in_flight == 1
        assert conn.config_push == outcome

    asyncio.run(run())


def test_a_push_without_an_answer_fails_in_bounded_time() -> None:
    async def run() -> None:
        connector = GatedConnector()
        conn = _conn(connector)
        pusher = ConfigPusher(timeout=0.05)
        outcome = await pusher.push(conn, 1, b"{}")
        assert outcome.status is PushStatus.FAILED
        assert outcome.error is not None and "no answer within" in outcome.error
        # The lane is free again: the next push goes out.
        connector.gate.set()
        assert (await pusher.push(conn, 2, b"{}")).status is PushStatus.APPLIED

    asyncio.run(run())


def test_outcomes_follow_the_version_the_connector_says_it_runs() -> None:
    async def run() -> None:
        newer = GatedConnector(runs=9)
        newer.gate.set()
        outcome = await ConfigPusher().push(_conn(newer), 4, b"{}")
        # It runs something at least as new: nothing to report.
        assert (outcome.status, outcome.applied_version) == (PushStatus.APPLIED, 9)
        stuck = GatedConnector(runs=2, stuck=True)
        stuck.gate.set()
        outcome = await ConfigPusher().push(_conn(stuck), 5, b"{}")
        assert outcome.status is PushStatus.REJECTED
        assert outcome.error == "the connector kept version 2"

    asyncio.run(run())


def test_push_all_reports_pending_ones_and_goes_on() -> None:
    async def run() -> None:
        slow = GatedConnector()
        conn = _conn(slow)
        pusher = ConfigPusher(timeout=10)
        outcomes = await pusher.push_all([conn], 1, b"{}", wait=0.05)
        assert [o.status for o in outcomes] == [PushStatus.PENDING]
        slow.gate.set()
        for _ in range(100):
            if conn.config_push is not None:
                break
            await asyncio.sleep(0.01)
        assert ConfigPusher.last_outcomes([conn])[0].status is PushStatus.APPLIED

    asyncio.run(run())
