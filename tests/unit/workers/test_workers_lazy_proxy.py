"""The worker's origin proxy is imported off the start-up path and built on first use."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from adit.workers.runtime import LazyProxy

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
