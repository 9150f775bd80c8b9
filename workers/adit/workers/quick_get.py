"""The callback path for the simple request: no task, no coroutine, no future.

Most requests through a tunnel are a GET that arrives whole (END_STREAM on its HEADERS) for
a plain-HTTP origin the worker already holds an idle keep-alive connection to, answered by a
small response that arrives with its head. For those the general path (a task per stream and
a chain of five coroutines, each wake-up a future and a loop iteration) was a quarter of the
worker's Python per request. Here the request head is written to the pooled connection from
the tunnel's read, and the answer goes back to the tunnel from the origin's read, in the
callback that received it (as the edge's own fast path does for the public side).

Anything else at any point — a dial, a body, a response that is large, streamed or a 101, an
error, a pooled connection the origin closed meanwhile — hands the exchange to the general
path in a task, from where it stands (:meth:`~adit.workers.proxy.OriginProxy.quick_resumed`),
so every failure is answered as the general path answers it.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from adit.workers.stream import TunnelStream

if TYPE_CHECKING:
    from adit.config.origin import Rule
    from adit.workers.origins.dialer import OriginKey
    from adit.workers.origins.http1 import OriginConnection, OriginResponse
    from adit.workers.origins.request import OriginRequestHead
    from adit.workers.proxy import OriginProxy

__all__ = ["QuickExchange", "QuickOwner", "QuickStream"]


class QuickStream(TunnelStream, Protocol):
    """A tunnel stream that can also take a whole response synchronously (HTTP/2's)."""

    @property
    def stream_id(self) -> int: ...

    def send_whole(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """Head, body and end of stream at once; raises when the stream is gone."""


class QuickOwner(Protocol):
    """The tunnel connection the stream belongs to: tracks exchanges in flight (a drain
    waits for them, an edge's reset cancels them) and runs the ones handed over."""

    def quick_begin(self, exchange: QuickExchange) -> None: ...

    def quick_end(self, exchange: QuickExchange) -> None: ...

    def quick_handoff(self, exchange: QuickExchange, work: Coroutine[Any, Any, None]) -> None: ...


class QuickExchange:
    """One request written to a pooled origin connection, waiting for its answer."""

    __slots__ = ("connection", "head", "key", "owner", "proxy", "response", "rule", "stream")

    def __init__(
        self,
        proxy: OriginProxy,
        stream: QuickStream,
        rule: Rule,
        key: OriginKey,
        head: OriginRequestHead,
        connection: OriginConnection,
        owner: QuickOwner,
    ) -> None:
        self.proxy = proxy
        self.stream = stream
        self.rule = rule
        self.key = key
        self.head = head
        self.connection = connection
        self.owner = owner
        #: The origin's response head, once the whole response is in.
        self.response: OriginResponse | None = None
        connection.listener = self._changed
        owner.quick_begin(self)

    @property
    def stream_id(self) -> int:
        """The tunnel stream's id."""
        return self.stream.stream_id

    def _changed(self) -> None:
        # Called from the origin connection's callbacks: bytes arrived, or it ended.
        connection = self.connection
        if not connection.head_received and not connection.failed:
            return  # more of the head to come (or an interim 1xx)
        connection.listener = None
        response = connection.complete_response
        if response is not None:
            whole = connection.whole_body(self.proxy.whole_body_limit)
            if whole is not None:
                self.response = response
                self.owner.quick_end(self)
                self.proxy.quick_done(self, whole)
                return
        self.owner.quick_handoff(self, self.proxy.quick_resumed(self))

    def cancel(self) -> None:
        """The edge reset the stream: stop waiting, drop the origin connection."""
        self.connection.listener = None
        self.owner.quick_end(self)
        self.proxy.quick_cancelled(self)
