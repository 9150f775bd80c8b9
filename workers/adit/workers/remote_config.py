"""A worker's side of remotely managed configuration: the edge's pushes, answered.

A push (``updateConfiguration`` over QUIC, the ``update-configuration`` stream over HTTP/2)
reaches one connection of one worker, but must change what every worker serves. So the worker
checks it (a version newer than the one in force, a configuration that builds), then hands it
to the supervisor (:class:`~adit.ipc.messages.RemoteConfigReceived`), which makes it the next
ingress snapshot and sends it to every worker with ``ApplyIngress``, the path of a SIGHUP
reload. The answer to the edge waits for that snapshot to arrive here: then every worker has
it or is about to (it is one message away), and the answer is true.

As cloudflared's orchestrator (orchestration/orchestrator.go ``UpdateConfig``): only a version
newer than the one in force is applied (an older or equal one is answered with the version in
force and no error); an invalid one leaves the rules in force and its error goes back in the
answer. A connector with ingress of its own (config file, ``--url``, ``--hello-world``) takes
a push too, as cloudflared does (its remote version starts at -1 so that a tunnel moved from
local to remote management is taken over by the edge's first version): from then on the edge
decides the ingress, across reloads, until the process ends (the supervisor keeps it).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from adit.ipc.messages import IngressSnapshot
from adit.logs import fields

__all__ = ["APPLY_TIMEOUT", "RemoteConfigs"]

log = logging.getLogger("adit.workers.config")

#: How long a push waits for the supervisor's snapshot (the edge's RPC timeout is 5 s).
APPLY_TIMEOUT = 4.0


class RemoteConfigs:
    """Answers a worker's pushes; :meth:`applied` is told each snapshot the worker installs."""

    def __init__(
        self,
        snapshot: IngressSnapshot,
        forward: Callable[[int, bytes], None],
        *,
        timeout: float = APPLY_TIMEOUT,
    ) -> None:
        self.version = snapshot.remote_version
        self._forward = forward
        self._timeout = timeout
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def applied(self, snapshot: IngressSnapshot) -> None:
        """The worker now serves ``snapshot``: wake the pushes it fulfils."""
        self.version = snapshot.remote_version
        waiting = []
        for version, waiter in self._waiters:
            if version <= self.version:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                waiting.append((version, waiter))
        self._waiters = waiting

    async def update(self, version: int, config: bytes) -> tuple[int, str | None]:
        """Answer a push: the remote version in force afterwards and the error, if any."""
        if version <= self.version:
            return self.version, None
        # Imported here: the config modules load off the first dial's path (runtime.run).
        from adit.config.errors import ConfigError
        from adit.config.ingress import ingress_from_json

        try:
            obj = json.loads(config)
            if not isinstance(obj, dict):
                raise ConfigError(None, "", "the configuration is not a JSON object")
            ingress_from_json(obj)
        except (ValueError, ConfigError) as exc:
            log.error(
                "Failed to update ingress",
                extra=fields(version=version, error=str(exc)),
            )
            return self.version, f"invalid configuration version {version}: {exc}"
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((version, waiter))
        self._forward(version, config)
        try:
            async with asyncio.timeout(self._timeout):
                await waiter
        except TimeoutError:
            return self.version, f"version {version} was not applied in {self._timeout:g}s"
        finally:
            self._waiters = [(v, w) for v, w in self._waiters if w is not waiter]
        return self.version, None
