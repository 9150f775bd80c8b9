"""Where a process's memory goes at import: RSS and Python heap after each step.

    .venv/bin/python loadtests/import_footprint.py supervisor|worker|parser

Each role runs in a fresh interpreter (this script re-executes itself per role) and imports,
in the order the real process does, one step at a time; after each step it prints the
resident set (``/proc/self/statm``: shared-library pages the step mapped and touched count in
full) and the Python heap tracemalloc attributes to the step (objects: code, functions,
classes, dicts). The difference is native: extension modules' code and data, OpenSSL's
tables, libzmq. ``parser`` is what ``adit tunnel run`` imports to parse flags and config, which
the lean supervisor leaves out (``adit.supervisor.lean``).
"""

from __future__ import annotations

import importlib
import os
import sys
import tracemalloc

#: (label, modules imported in that step), in the real process's order.
STEPS: dict[str, list[tuple[str, list[str]]]] = {
    "supervisor": [
        ("msgspec", ["msgspec"]),
        ("adit.ipc.messages (Structs)", ["adit.ipc.messages"]),
        (
            "settings, signals, logs",
            ["adit.supervisor.settings", "adit.supervisor.signals", "adit.logs"],
        ),
        ("launch, spawn, state", ["adit.supervisor.launch", "adit.supervisor.state"]),
        ("asyncio", ["asyncio"]),
        ("uvloop", ["uvloop"]),
        ("zmq + zmq.asyncio", ["zmq", "zmq.asyncio"]),
        ("app (metrics server, diag, channels)", ["adit.supervisor.app"]),
        ("psutil (first worker sample)", ["psutil"]),
    ],
    "parser": [
        ("click", ["click"]),
        ("adit.cli.root", ["adit.cli.root"]),
        ("adit.cli.run (yaml, config, credentials)", ["adit.cli.run"]),
    ],
    "worker": [
        ("msgspec, uvloop, asyncio", ["msgspec", "uvloop", "asyncio"]),
        ("adit.ipc.messages, logs", ["adit.ipc.messages", "adit.logs"]),
        ("ssl", ["ssl"]),
        ("adit.workers.runtime (h2 tunnel, registration)", ["adit.workers.runtime"]),
        ("adit.workers.process", ["adit.workers.process"]),
        ("zmq + zmq.asyncio", ["zmq", "zmq.asyncio"]),
        ("proxy + HTTP/1.1 origins", ["adit.workers.proxy"]),
        ("QUIC (aioquic, quic_dial)", ["adit.workers.quic_dial"]),
    ],
}


def _rss_kib() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _run(role: str, trace: bool) -> None:
    """One line per step: RSS delta, heap delta (KiB; heap only when ``trace``), RSS after."""
    if trace:
        tracemalloc.start()
    print(f"interpreter {_rss_kib()} 0 {_rss_kib()}")
    for label, modules in STEPS[role]:
        before_rss = _rss_kib()
        before_heap = tracemalloc.get_traced_memory()[0] if trace else 0
        for name in modules:
            importlib.import_module(name)
        rss = _rss_kib()
        heap = (tracemalloc.get_traced_memory()[0] - before_heap) // 1024 if trace else 0
        print(f"{label.replace(' ', '_')} {rss - before_rss} {heap} {rss}")


def _table(role: str) -> None:
    """Two fresh interpreters: RSS without tracemalloc (it inflates RSS), then the heap."""
    import subprocess  # here: the measured interpreters should not have it imported

    runs = [
        subprocess.run(
            [sys.executable, __file__, "--in-process", role, flag],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split("\n")
        for flag in ("rss", "heap")
    ]
    print(f"{role}:\n")
    print("| step | RSS + MiB | Python heap + MiB (tracemalloc) | RSS after, MiB |")
    print("|---|---|---|---|")
    for plain, traced in zip(runs[0], runs[1], strict=True):
        if not plain:
            continue
        label, rss, _, after = plain.split()
        heap = traced.split()[2]
        print(
            f"| {label.replace('_', ' ')} | {int(rss) / 1024:.1f} | {int(heap) / 1024:.1f}"
            f" | {int(after) / 1024:.1f} |"
        )
    print()


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "--in-process":
        _run(argv[1], argv[2] == "heap")
        return 0
    for role in argv or list(STEPS):
        _table(role)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
