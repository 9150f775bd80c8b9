"""A worker's data plane: its edge connections and the streams they carry.

The worker process (``adit.workers.__main__``) owns ipc and signals; this class owns the
connections. It never touches ZeroMQ: events go out through the ``publish`` callback.
"""

from __future__ import annotations

from collections.abc import Callable

from adit.ipc.messages import Event, IngressSnapshot, WorkerSettings


class WorkerRuntime:
    """Dials the edge for each assigned connection index, registers, serves streams."""

    def __init__(self, settings: WorkerSettings, publish: Callable[[Event], None]) -> None:
        self.settings = settings
        self.publish = publish

    async def run(self) -> None:
        """Serve until :meth:`begin_drain` finished draining (or a fatal refusal)."""
        raise NotImplementedError

    def begin_drain(self, grace: float) -> None:
        """Unregister all connections, let in-flight streams finish within ``grace`` seconds."""
        raise NotImplementedError

    def apply_ingress(self, snapshot: IngressSnapshot) -> None:
        """Swap the ingress rules atomically (validated by the caller's supervisor)."""
        raise NotImplementedError

    @property
    def active_streams(self) -> int:
        """Streams in flight across all connections."""
        return 0
