"""The upgrade's preflight, run in a child by the *installed* code before anything changes.

``adit.supervisor.upgrade`` starts ``python -P -c ...`` which prints the installed version
first (so even a tree that fails to import this module is named in the refusal), then calls
:func:`main` with the hand-over the running supervisor would write on stdin. It checks what
the ``exec``\\ ed supervisor would need: the hand-over reads (format and fields), the settings
decode, every module of the supervisor and the workers imports, and the worker's entry point
(``python -m adit.workers``) runs up to its start with ``--preflight``. On success it prints
``ok``; otherwise one refusal line (``adit.supervisor.lean.REFUSAL_PREFIX``) and exit code 1.
"""

from __future__ import annotations

import importlib
import pkgutil
import runpy
import sys

__all__ = ["CHECKED_PACKAGES", "main"]

#: The packages whose every module must import: the lean supervisor's and the workers'.
CHECKED_PACKAGES = ("adit.supervisor", "adit.workers", "adit.ipc")


def _import_all(package_name: str) -> None:
    package = importlib.import_module(package_name)
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            _run_main(info.name.rsplit(".", 1)[0])
        else:
            importlib.import_module(info.name)


def _run_main(package: str) -> None:
    """``python -m PACKAGE --preflight``, in this process: the entry point's own code runs
    (the worker's ``__main__`` is what the supervisor starts, and importing its package does
    not run it), then it exits 0 before its program would start."""
    saved = sys.argv
    sys.argv = [package, "--preflight"]
    try:
        runpy.run_module(package, run_name="__main__", alter_sys=False)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise RuntimeError(f"python -m {package} exited {exc.code!r}") from None
    else:
        raise RuntimeError(f"python -m {package} does not take --preflight")
    finally:
        sys.argv = saved


def main() -> None:
    """Check the hand-over on stdin; exit 0 (``ok``) or 1 with a refusal line."""
    from adit.supervisor.lean import write_refusal

    try:
        import msgspec

        from adit.supervisor.settings import SupervisorSettings
        from adit.supervisor.upgrade_handover import HandoverUnreadable, decode_handover

        try:
            handover = decode_handover(sys.stdin.buffer.read())
            msgspec.msgpack.decode(handover.settings, type=SupervisorSettings)
        except HandoverUnreadable as exc:
            write_refusal(str(exc))
            sys.exit(1)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            write_refusal(f"its settings do not decode: {exc}")
            sys.exit(1)
        for name in CHECKED_PACKAGES:
            _import_all(name)
    except Exception as exc:  # whatever the installed code raises is the reason to refuse
        write_refusal(f"{type(exc).__name__}: {exc}")
        sys.exit(1)
    sys.stdout.write("ok\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
