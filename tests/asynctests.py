"""Async test functions run on a fresh event loop each (the suite has no asyncio plugin)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec

import uvloop

P = ParamSpec("P")


def _on(
    run: Callable[[Coroutine[Any, Any, None]], None],
) -> Callable[[Callable[P, Coroutine[Any, Any, None]]], Callable[P, None]]:
    def decorate(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
        @functools.wraps(test)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
            run(test(*args, **kwargs))

        return wrapper

    return decorate


#: On asyncio's default loop.
asynctest = _on(asyncio.run)
#: On uvloop, the loop adit's processes use (its transports are not asyncio's classes).
uvloop_test = _on(uvloop.run)
