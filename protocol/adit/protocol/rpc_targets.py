"""Where a Cap'n Proto RPC ``Call`` is addressed (rpc.capnp ``MessageTarget``, PROTOCOL.md §3.4).

Kept apart from :mod:`adit.protocol.rpc_messages` so that the client sessions can choose a target
without importing pycapnp (see :mod:`adit.protocol.rpc_client`).
"""

from __future__ import annotations

from adit.protocol.values import Value

__all__ = ["CallTarget", "ImportedCapTarget", "PromisedAnswerTarget"]


class ImportedCapTarget(Value, frozen=True):
    """A call addressed to a capability the callee exported earlier."""

    import_id: int


class PromisedAnswerTarget(Value, frozen=True):
    """A pipelined call addressed to the (future) result of an earlier question.

    ``transform`` lists the operations applied to that result: ``None`` for a no-op, an int for
    "take that pointer field".
    """

    question_id: int
    transform: tuple[int | None, ...]


CallTarget = ImportedCapTarget | PromisedAnswerTarget
