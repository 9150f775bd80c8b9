"""Start-up before the supervisor's loop: the garbage collector, the first worker alone."""

from __future__ import annotations

import gc
from pathlib import Path

from adit.ipc.messages import EdgeTarget, IngressSnapshot
from adit.ipc.rendezvous import remove_runtime_directory
from adit.logs import LogSettings
from adit.supervisor.launch import collect_again, start_workers
from adit.supervisor.settings import SupervisorSettings


def test_collect_again_turns_the_collector_on_with_the_survivors_frozen() -> None:
    gc.disable()
    try:
        kept: list[list[int]] = [
            [] for _ in range(10)
        ]  # tracked objects alive when the collector comes back
        collect_again()
        assert gc.isenabled()
        assert gc.get_freeze_count() >= len(kept)
    finally:
        gc.unfreeze()
        gc.enable()


def test_collect_again_leaves_an_enabled_collector_alone() -> None:
    assert gc.isenabled()
    before = gc.get_freeze_count()
    collect_again()
    assert gc.isenabled()
    assert gc.get_freeze_count() == before


def test_only_the_first_worker_starts_before_the_loop(tmp_path: Path) -> None:
    settings = SupervisorSettings(
        tunnel_id="00000000-0000-0000-0000-000000000001",
        account_tag="acct",
        tunnel_secret=b"s" * 32,
        edges=(EdgeTarget("127.0.0.1", 1),),
        edge_ca_pem="",
        ingress=IngressSnapshot(version=1),
        log=LogSettings(),
        workers=2,
    )
    early = start_workers(settings, [0, 1])
    try:
        assert sorted(early.processes) == [0]  # slot 1 is the loop's to start
        assert early.processes[0].booted
    finally:
        early.discard()
        remove_runtime_directory(early.runtime_dir)
