"""Production code has no test hooks: nothing it runs is chosen by the environment.

Test seams live in tests/ (``tests/seams/sitecustomize.py``, on a test's own PYTHONPATH); no
module under the source roots reads an ``ADIT_TEST_*`` variable or loads code from a path.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SOURCE_ROOTS = ("supervisor", "workers", "edge", "protocol", "runtime")
#: Ways of running code named at run time rather than imported by name in the source.
CODE_LOADERS = frozenset({"spec_from_file_location", "exec_module", "run_path", "SourceFileLoader"})


def _modules() -> list[Path]:
    return sorted(p for root in SOURCE_ROOTS for p in (ROOT / root / "adit").rglob("*.py"))


def test_no_module_reads_a_test_variable() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in _modules() if "ADIT_TEST_" in p.read_text()]
    assert offenders == []


def test_no_module_loads_code_from_a_path() -> None:
    offenders = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)
            if name in CODE_LOADERS:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")  # type: ignore[attr-defined]
    assert offenders == []
