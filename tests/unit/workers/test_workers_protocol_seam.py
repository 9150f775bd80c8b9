"""The connect loop asks the protocol choice before each dial and reports each outcome to it.

The dials are stand-ins (adit has no QUIC transport yet): a QUIC dial whose handshake hears
nothing, an HTTP/2 dial that is refused.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest

from adit.ipc.messages import (
    ConnectionLost,
    ConnectionRegistered,
    EdgeTarget,
    Event,
    IngressSnapshot,
    RecordRegistration,
    Start,
    WorkerSettings,
    decode_command,
    decode_event,
    encode,
)
from adit.protocol.registration import DuplicateConnection, PermanentRefusal, TemporaryRefusal
from adit.workers import runtime
from adit.workers.edge_connection import EdgeConnection, Registration
from adit.workers.process import WorkerProcess
from adit.workers.protocol_choice import UDP_BLOCKED_WARNING, Outcome, Protocol
from adit.workers.runtime import ConnectionSlot, DialFailure, WorkerRuntime


def _settings(protocol: str) -> WorkerSettings:
    return WorkerSettings(
        slot=0,
        connector_id=str(uuid.UUID(int=3)),
        account_tag="acct",
        tunnel_secret=b"s" * 32,
        tunnel_id=str(uuid.UUID(int=4)),
        conn_indexes=[0],
        edges=[EdgeTarget("127.0.0.1", 1)],
        edge_ca_pem="",
        ingress=IngressSnapshot(version=1, cli_hello_world=True),
        # --retries 0 and --max-edge-addr-retries 0: the first dial error may fall back, and
        # the backoff stays under a second.
        retries=0,
        protocol=protocol,
        max_edge_addr_retries=0,
    )


class StandInDials(WorkerRuntime):
    """Records which transport each dial used; drains after ``dials_wanted`` dials."""

    dials_wanted = 2

    def __init__(self, settings: WorkerSettings, publish: Any) -> None:
        super().__init__(settings, publish)
        self.dials: list[Protocol] = []

    def _dialled(self, protocol: Protocol) -> None:
        self.dials.append(protocol)
        if len(self.dials) >= self.dials_wanted:
            self.begin_drain(0.0)

    async def _dial_quic(
        self, slot: ConnectionSlot, edge: EdgeTarget, registration: Registration
    ) -> EdgeConnection | DialFailure:
        self._dialled(Protocol.QUIC)
        return DialFailure(
            "timeout: no recent network activity",
            dial=True,
            outcome=Outcome.QUIC_HANDSHAKE_IDLE,
        )

    async def _dial_http2(
        self, edge: EdgeTarget, registration: Registration
    ) -> EdgeConnection | DialFailure:
        self._dialled(Protocol.HTTP2)
        return DialFailure("connection refused", dial=True, outcome=Outcome.DIAL_FAILED)


def _run(settings: WorkerSettings) -> tuple[StandInDials, list[Event]]:
    events: list[Event] = []

    async def main() -> StandInDials:
        worker = StandInDials(settings, events.append)
        await asyncio.wait_for(worker.run(), 20)
        return worker

    return asyncio.run(main()), events


def test_auto_falls_back_to_http2_after_a_silent_quic_handshake(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="adit.workers"):
        worker, events = _run(_settings("auto"))
    assert worker.dials == [Protocol.QUIC, Protocol.HTTP2]
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert (logging.WARNING, UDP_BLOCKED_WARNING) in lines
    assert (logging.INFO, "Switching to fallback protocol http2") in lines
    assert any(isinstance(e, ConnectionLost) for e in events)


def test_static_quic_keeps_dialling_quic(monkeypatch: pytest.MonkeyPatch) -> None:
    worker, _ = _run(_settings("quic"))
    assert worker.dials == [Protocol.QUIC, Protocol.QUIC]


def test_refusals_count_as_cloudflared_counts_them() -> None:
    assert runtime._refusal_outcome(DuplicateConnection("dup")) is Outcome.DUPLICATE
    assert runtime._refusal_outcome(PermanentRefusal("no")) is Outcome.REFUSED_FOR_GOOD
    assert runtime._refusal_outcome(TemporaryRefusal("later")) is Outcome.FAILED


def test_a_relayed_registration_reaches_the_protocol_choice(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    worker = WorkerRuntime(_settings("auto"), lambda _event: None)
    worker.record_registration(1, "quic")
    assert worker.protocols.registered_with(1) is Protocol.QUIC
    worker.record_registration(2, "h3")  # a newer supervisor's protocol: ignored
    assert worker.protocols.registered_with(2) is None
    assert "unknown protocol 'h3'" in caplog.text


def test_the_worker_process_hands_relayed_registrations_to_its_runtime(tmp_path: Path) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.registrations: list[tuple[int, str]] = []

        def record_registration(self, conn_index: int, protocol: str) -> None:
            self.registrations.append((conn_index, protocol))

    async def main() -> list[tuple[int, str]]:
        process = WorkerProcess(Start(_settings("auto")), tmp_path, watch_stdin=False)
        recorder = Recorder()
        dispatch = asyncio.ensure_future(process._dispatch(recorder))  # type: ignore[arg-type]
        process._commands.put_nowait(RecordRegistration(3, "quic"))
        while not recorder.registrations:
            await asyncio.sleep(0.01)
        dispatch.cancel()
        return recorder.registrations

    assert asyncio.run(main()) == [(3, "quic")]


def test_the_relay_and_a_registrations_protocol_survive_the_wire() -> None:
    relay = RecordRegistration(3, "quic")
    assert decode_command(encode(relay)) == relay
    event = ConnectionRegistered(0, 1, "c1", "TST", "127.0.0.1:7844", "quic")
    assert decode_event(encode(event)) == event
    # An older worker's event (no protocol) is an http2 registration.
    assert ConnectionRegistered(0, 1, "c1", "TST", "127.0.0.1:7844").protocol == "http2"
