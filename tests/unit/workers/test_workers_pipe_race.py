"""``race`` (one task per piped stream) and ``pipe`` over a real loopback origin socket."""

from __future__ import annotations

import asyncio

import pytest

from adit.workers.origins.pipe import pipe, race
from adit.workers.stream import IncomingRequest, ResponseSource, StreamKind


async def _forever(log: list[str], name: str) -> None:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        log.append(f"{name} cancelled")
        raise


async def _after(delay_steps: int, log: list[str], name: str, fail: bool = False) -> None:
    for _ in range(delay_steps):
        await asyncio.sleep(0)
    log.append(f"{name} ended")
    if fail:
        raise RuntimeError(name)


async def _still_usable() -> None:
    """The calling task carries no leftover cancellation after a race."""
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.sleep(0.001), 1)


def test_race_here_ends_first_stops_there() -> None:
    async def main() -> list[str]:
        log: list[str] = []
        await race(_after(1, log, "here"), _forever(log, "there"))
        await _still_usable()
        return log

    assert asyncio.run(main()) == ["here ended", "there cancelled"]


def test_race_there_ends_first_interrupts_here() -> None:
    async def main() -> list[str]:
        log: list[str] = []
        await race(_forever(log, "here"), _after(1, log, "there"))
        await _still_usable()
        return log

    assert asyncio.run(main()) == ["there ended", "here cancelled"]


def test_race_errors_end_it_quietly() -> None:
    async def main() -> list[str]:
        log: list[str] = []
        await race(_forever(log, "here"), _after(0, log, "there", fail=True))
        await race(_after(1, log, "here2", fail=True), _forever(log, "there2"))
        await _still_usable()
        return log

    expected = ["there ended", "here cancelled", "here2 ended", "there2 cancelled"]
    assert asyncio.run(main()) == expected


def test_race_both_ending_together_leaves_no_cancellation() -> None:
    async def main() -> None:
        for steps in range(4):
            log: list[str] = []
            await race(_after(steps, log, "here"), _after(steps, log, "there"))
            await _still_usable()
            log.clear()
            await race(_after(steps + 1, log, "here"), _after(steps, log, "there"))
            await _still_usable()

    asyncio.run(main())


def test_race_outside_cancellation_propagates() -> None:
    async def main() -> list[str]:
        log: list[str] = []
        task = asyncio.ensure_future(race(_forever(log, "here"), _forever(log, "there")))
        for _ in range(3):
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            log.append("race cancelled")
        return log

    assert asyncio.run(main()) == ["here cancelled", "there cancelled", "race cancelled"]


class _Stream:
    """The edge side of a tunnel stream: what the test sends, what the pipe wrote back."""

    def __init__(self) -> None:
        self.request = IncomingRequest(StreamKind.WEBSOCKET, "GET", "/", "h", "h", ())
        self.inbound: asyncio.Queue[bytes] = asyncio.Queue()
        self.written: asyncio.Queue[bytes] = asyncio.Queue()

    @property
    def response_started(self) -> bool:
        return True

    async def read(self) -> bytes:
        return await self.inbound.get()

    async def send_response(
        self,
        status: int,
        headers: list[tuple[str, str]],
        *,
        source: ResponseSource = ResponseSource.ORIGIN,
        end_stream: bool = False,
        body: bytes = b"",
    ) -> None:
        raise AssertionError("not used by pipe")

    async def write(self, data: bytes) -> None:
        await self.written.put(data)

    async def end(self) -> None:
        pass

    def reset(self) -> None:
        pass


def test_pipe_copies_both_ways_and_ends_with_the_origin() -> None:
    async def main() -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = await reader.read(100)
            writer.write(data.upper())
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await asyncio.get_running_loop().create_connection(
            asyncio.Protocol, "127.0.0.1", port
        )
        stream = _Stream()
        await stream.inbound.put(b"hello")
        await asyncio.wait_for(pipe(stream, transport, initial=b"first:"), 5)
        received = b""
        while not stream.written.empty():
            received += stream.written.get_nowait()
        assert received == b"first:HELLO"
        await _still_usable()
        transport.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_pipe_ends_when_the_edge_ends() -> None:
    async def main() -> None:
        closed = asyncio.Event()
        origin_side: list[asyncio.StreamWriter] = []

        async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # The origin never closes first: the edge's end alone ends the pipe.
            origin_side.append(writer)
            assert await reader.read() == b"bye"  # EOF after the bytes: write_eof reached us
            closed.set()

        server = await asyncio.start_server(sink, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await asyncio.get_running_loop().create_connection(
            asyncio.Protocol, "127.0.0.1", port
        )
        stream = _Stream()
        await stream.inbound.put(b"bye")
        await stream.inbound.put(b"")
        await asyncio.wait_for(pipe(stream, transport), 5)
        await asyncio.wait_for(closed.wait(), 5)
        await _still_usable()
        transport.close()
        for each in origin_side:
            each.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


class _SlowStream(_Stream):
    """A tunnel that takes each write only when the test lets it (a closed flow window)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def write(self, data: bytes) -> None:
        await self.gate.wait()
        await super().write(data)


@pytest.mark.parametrize(
    "size",
    [
        100 * 1024,  # all of it and the origin's end arrive while the tunnel holds a write
        3 * 1024 * 1024,  # several times READ_LIMIT: reading pauses meanwhile
    ],
)
def test_pipe_holds_the_origin_back_and_sends_all_of_it_before_its_end(size: int) -> None:
    async def main() -> None:
        payload = bytes(range(256)) * (size // 256)

        async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # The origin sends it all, then ends its side, while the tunnel takes nothing yet.
            writer.write(payload)
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(flood, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await asyncio.get_running_loop().create_connection(
            asyncio.Protocol, "127.0.0.1", port
        )
        stream = _SlowStream()
        piping = asyncio.ensure_future(pipe(stream, transport, initial=b"first:"))
        for _ in range(50):
            await asyncio.sleep(0.01)
        assert not piping.done()  # the origin's end waits for its bytes to be written
        stream.gate.set()
        await asyncio.wait_for(piping, 5)
        received = b""
        while not stream.written.empty():
            received += stream.written.get_nowait()
        assert received == b"first:" + payload
        await _still_usable()
        transport.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())
