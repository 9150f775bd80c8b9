"""What a supervisor upgrading in place (SIGUSR2) hands to the installed code it ``exec``\\ s.

The running supervisor writes one :class:`UpgradeHandover` (msgpack, 0600, in its 0700
runtime directory) and ``exec``\\ s ``python -m adit.supervisor.lean --upgrade FILE``: the
process keeps its pid and its children, so the new code adopts the live workers (their pid,
slot, the write end of their stdin, their connection indexes) and replaces them slot by slot
(``adit.supervisor.predecessors``).

The file is written by one version and read by another, in either direction (an upgrade, a
downgrade). So it carries :data:`UPGRADE_FORMAT` and is read strictly: a format this code does
not know, or a field it does not know, is refused with a message instead of being half
understood (msgspec ignores unknown fields by default; these structs forbid them). The
running supervisor has the *installed* code read the file before it ``exec``\\ s
(``adit.supervisor.upgrade_check``), so a version that cannot read it refuses the upgrade and
the running one keeps serving. The settings travel as the installed parser wrote them (bytes
this module does not decode): the old code never reinterprets the new code's settings.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "UPGRADE_FORMAT",
    "HandoverUnreadable",
    "InheritedWorker",
    "UpgradeHandover",
    "decode_handover",
]

#: The hand-over format this code writes and the newest it reads. Raise it with any change a
#: reader of the previous format would misread (a new field is one: the structs forbid it).
UPGRADE_FORMAT = 1


class HandoverUnreadable(Exception):
    """The hand-over file is of a format or shape this code cannot read."""


class InheritedWorker(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A live worker of the supervisor that upgraded: the new code adopts it, then drains it."""

    slot: int
    pid: int
    #: The write end of its stdin (inherited across the ``exec``): closing it drains the worker.
    stdin: int | None
    conn_indexes: list[int]
    #: The connection indexes it had registered at the ``exec``.
    registered: list[int]


class UpgradeHandover(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The running supervisor's state for the installed code it ``exec``\\ s."""

    format: int
    #: The version that wrote it (the one being replaced).
    from_version: str
    #: ``SupervisorSettings`` as the installed code's parser printed them (msgpack).
    settings: bytes
    #: ``adit``'s arguments, for the parser child of later reloads and upgrades.
    args: list[str]
    #: The replaced supervisor's runtime directory: its workers' ZeroMQ endpoints.
    inherited_dir: str
    workers: list[InheritedWorker]
    #: The metrics listener, kept open across the ``exec`` (same address, no refused scrape).
    metrics_fd: int | None = None
    #: Signals that arrived during the ``exec`` (they are blocked across it).
    early_signals: list[int] = []


class _Format(msgspec.Struct):
    format: int


def decode_handover(data: bytes) -> UpgradeHandover:
    """Read a hand-over; :class:`HandoverUnreadable` says why it cannot be."""
    try:
        found = msgspec.msgpack.decode(data, type=_Format).format
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise HandoverUnreadable(f"the upgrade hand-over is not readable: {exc}") from None
    if found != UPGRADE_FORMAT:
        raise HandoverUnreadable(
            f"the upgrade hand-over has format {found}; this adit reads format {UPGRADE_FORMAT}"
        )
    try:
        return msgspec.msgpack.decode(data, type=UpgradeHandover)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise HandoverUnreadable(
            f"the upgrade hand-over (format {found}) is not readable by this adit: {exc}"
        ) from None
