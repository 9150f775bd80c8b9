"""The worker's origin proxy is imported off the start-up path and built on first use."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from adit.ipc.messages import EdgeTarget, IngressSnapshot, WorkerSettings
from adit.workers.runtime import LazyProxy, WorkerRuntime

_SLOW_MODULE = """
import time

time.sleep(0.2)  # an import that takes a while, as the real one does
served = []


class OriginProxy:
    def __init__(self, connector_id, tags):
        self.connector_id = connector_id
        self.tags = tags

    async def serve(self, stream, rule):
        served.append((stream, rule))
"""


def test_lazy_proxy_builds_the_real_origin_proxy() -> None:
    from adit.workers.proxy import OriginProxy

    async def main() -> None:
        lazy = LazyProxy(uuid.UUID(int=7), {"a": "b"})
        before = lazy.loaded
        await lazy.preload()
        imported_only = lazy.loaded  # imported, not built: nothing asked for it yet
        proxy = lazy.get()
        assert before is None and imported_only is None
        assert isinstance(proxy, OriginProxy)
        assert lazy.get() is proxy
        await proxy.aclose()

    asyncio.run(main())


@pytest.fixture
def slow_module(tmp_path: Path) -> Any:
    name = f"adit_test_slow_proxy_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(_SLOW_MODULE)
    sys.path.insert(0, str(tmp_path))
    try:
        yield name
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


def test_a_stream_before_the_import_finished_waits_for_it(slow_module: str) -> None:
    class SlowLazyProxy(LazyProxy):
        MODULE = slow_module

    async def main() -> None:
        lazy = SlowLazyProxy(uuid.UUID(int=1), {})
        loading = lazy.preload()
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while not loading.done():
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.ensure_future(tick())
        stream: Any = object()
        rule: Any = object()
        await asyncio.wait_for(lazy.serve(stream, rule), 10)  # before the import ended
        await ticker
        assert loading.done()
        assert ticks > 3  # the loop kept running while the module imported in a thread
        module = sys.modules[slow_module]
        assert module.served == [(stream, rule)]
        built: Any = lazy.loaded
        assert built.connector_id == uuid.UUID(int=1)

    asyncio.run(main())


def _settings(ingress: IngressSnapshot) -> WorkerSettings:
    return WorkerSettings(
        slot=0,
        connector_id=str(uuid.UUID(int=3)),
        account_tag="acct",
        tunnel_secret=b"s" * 32,
        tunnel_id=str(uuid.UUID(int=4)),
        conn_indexes=[0],
        edges=[EdgeTarget("127.0.0.1", 1)],  # refused: the connection just keeps retrying
        edge_ca_pem="",
        ingress=ingress,
    )


def test_rules_are_built_off_the_start_path_and_a_bad_snapshot_ends_the_worker() -> None:
    async def main() -> WorkerRuntime:
        # No catch-all rule: what the supervisor would have refused (a version skew).
        bad = IngressSnapshot(version=1, rules=[{"hostname": "a.example.com", "service": "x"}])
        runtime = WorkerRuntime(_settings(bad), lambda _event: None)
        await asyncio.wait_for(runtime.run(), 20)  # ends by itself
        return runtime

    runtime = asyncio.run(main())
    assert runtime.fatal is not None and "ingress" in runtime.fatal


def test_good_rules_are_ready_without_a_request() -> None:
    async def main() -> None:
        good = IngressSnapshot(version=1, cli_hello_world=True)
        runtime = WorkerRuntime(_settings(good), lambda _event: None)
        task = asyncio.ensure_future(runtime.run())
        for _ in range(1000):
            if runtime._ingress is not None:
                break
            await asyncio.sleep(0.01)
        built = runtime._ingress  # by the runtime itself, after the background import
        assert built is not None
        rules = runtime.ingress()
        assert rules is built
        assert rules is runtime.ingress()  # built once
        runtime.begin_drain(0.0)
        await asyncio.wait_for(task, 20)
        assert runtime.fatal is None

    asyncio.run(main())
