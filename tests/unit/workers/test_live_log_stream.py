"""A process's log publisher: silent and free until someone subscribes, then every record at
debug while the console keeps its level; a hub hands records to sessions and counts gaps."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import zmq
import zmq.asyncio

from adit.logs.formats import event, fields
from adit.logs.live_stream import LogHub, LogPublisher, LogSession
from adit.protocol.management_logs import StreamingFilters


def _poll_until(publisher: LogPublisher, subscribed: bool) -> None:
    for _ in range(200):  # bounded: the subscription crosses a socket
        publisher.poll()
        if publisher.subscribed is subscribed:
            return
        time.sleep(0.01)
    raise AssertionError(f"subscribed never became {subscribed}")


def test_the_root_level_drops_to_debug_only_while_someone_listens(tmp_path: Path) -> None:
    root = logging.getLogger()
    console = logging.StreamHandler()
    saved_level, saved_handlers = root.level, list(root.handlers)
    root.handlers[:] = [console]
    root.setLevel(logging.INFO)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    publisher = LogPublisher.bind(context, tmp_path, {"slot": 1})
    sub = context.socket(zmq.SUB)
    try:
        publisher.poll()
        assert not publisher.subscribed and root.level == logging.INFO
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(f"ipc://{next(tmp_path.glob('logs-*'))}")
        _poll_until(publisher, True)
        assert root.level == logging.DEBUG and console.level == logging.INFO
        logging.getLogger("adit.test").debug(
            "GET %s", "/x", extra={**fields(host="h"), **event("http")}
        )
        logging.getLogger("chatty.library").debug("not ours")  # left out
        assert sub.poll(5000)
        wire = sub.recv()
        assert b'"GET /x"' in wire and b'"http"' in wire and b'"slot":1' in wire
        assert not sub.poll(100)
        sub.close(0)
        _poll_until(publisher, False)
        assert root.level == logging.INFO and console.level == logging.NOTSET
    finally:
        sub.close(0)
        publisher.shutdown()
        context.term()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    assert not list(tmp_path.glob("logs-*"))


def test_a_hub_gives_sessions_what_their_filters_pass_and_counts_gaps(tmp_path: Path) -> None:
    async def main() -> None:
        context = zmq.asyncio.Context()
        sync: zmq.Context[zmq.Socket[bytes]] = zmq.Context.shadow(context.underlying)
        root = logging.getLogger()
        saved_level, saved_handlers = root.level, list(root.handlers)
        root.handlers[:] = []
        root.setLevel(logging.INFO)
        publisher = LogPublisher.bind(sync, tmp_path, {})
        hub = LogHub(context, tmp_path)
        errors = LogSession(StreamingFilters(level="error"))
        everything = LogSession(StreamingFilters())
        try:
            hub.add(errors)
            hub.add(everything)
            for _ in range(300):  # bounded: until the subscription reached the publisher
                publisher.poll()
                if publisher.subscribed:
                    break
                await asyncio.sleep(0.01)
            assert publisher.subscribed
            log = logging.getLogger("adit.test")
            log.info("one")
            log.error("two")
            batch, dropped = await asyncio.wait_for(everything.next_batch(), 5)
            while len(batch) < 2:
                more, _ = await asyncio.wait_for(everything.next_batch(), 5)
                batch += more
            assert [e.message for e in batch] == ["one", "two"] and dropped == 0
            batch, _ = await asyncio.wait_for(errors.next_batch(), 5)
            assert [(e.level, e.message) for e in batch] == [("error", "two")]
            # A record the publisher could not send shows as a gap in its sequence numbers.
            publisher._seq += 3
            log.warning("three")
            batch, dropped = await asyncio.wait_for(everything.next_batch(), 5)
            assert [e.message for e in batch] == ["three"] and dropped == 3
        finally:
            hub.close()
            publisher.shutdown()
            root.handlers[:] = saved_handlers
            root.setLevel(saved_level)
            context.term()

    asyncio.run(main())
