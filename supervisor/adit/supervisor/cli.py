"""``adit-supervisor``: the connector's main process as its own console script.

The same as ``adit tunnel run`` (flags, env vars, config file), for unit files that prefer a
binary named for the process role.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """Run ``adit tunnel run`` with ``argv`` (default: this process's arguments)."""
    from adit.cli.main import run_cli
    from adit.supervisor.spawn import prestart

    args = ["tunnel", "run", *(sys.argv[1:] if argv is None else argv)]
    if argv is None:
        prestart(args)
    run_cli(args)
