"""The source-root layout of DESIGN.md §4 and the dependency rules between the roots."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import adit

ROOT = Path(__file__).resolve().parents[3]
SOURCE_ROOTS = ("supervisor", "workers", "edge", "protocol", "runtime")


def test_adit_is_a_namespace_package_over_all_roots() -> None:
    assert getattr(adit, "__file__", None) is None
    paths = {Path(p).resolve() for p in adit.__path__}
    assert paths == {ROOT / r / "adit" for r in SOURCE_ROOTS}


def test_no_init_at_the_top_of_any_root() -> None:
    for root in SOURCE_ROOTS:
        assert not (ROOT / root / "__init__.py").exists()
        assert not (ROOT / root / "adit" / "__init__.py").exists()


def test_only_adit_is_importable_from_the_roots() -> None:
    for root in SOURCE_ROOTS:
        entries = {p.name for p in (ROOT / root).iterdir() if not p.name.startswith(".")}
        assert entries <= {"adit", "__pycache__"}, f"{root}/ holds {entries}"
    for shadow in ("supervisor", "workers", "edge", "protocol", "runtime"):
        spec = importlib.util.find_spec(shadow)
        origin = Path(spec.origin).resolve() if spec and spec.origin else None
        assert origin is None or ROOT not in origin.parents, f"{shadow} shadows via {origin}"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _modules(root: str) -> list[Path]:
    return sorted((ROOT / root / "adit").rglob("*.py"))


def test_protocol_is_sans_io_and_imports_nothing_of_ours_but_itself() -> None:
    banned = ("asyncio", "socket", "ssl", "zmq", "uvloop", "selectors", "time")
    for path in _modules("protocol"):
        for name in _imports(path):
            top = name.split(".")[0]
            assert top not in banned, f"{path.name} imports {name}"
            if top == "adit":
                assert name.startswith("adit.protocol"), f"{path.name} imports {name}"


def test_workers_and_edge_never_import_each_other_or_the_supervisor() -> None:
    for root, forbidden in (
        ("workers", ("adit.edge", "adit.supervisor")),
        ("edge", ("adit.workers", "adit.supervisor")),
    ):
        for path in _modules(root):
            for name in _imports(path):
                assert not name.startswith(forbidden), f"{path} imports {name}"


def test_supervisor_never_imports_the_data_plane() -> None:
    for path in _modules("supervisor"):
        for name in _imports(path):
            assert not name.startswith(("adit.workers", "adit.edge")), f"{path} imports {name}"


def test_module_names_do_not_shadow_the_stdlib_or_dependencies() -> None:
    shadowable = set(sys.stdlib_module_names) | {
        "h2",
        "h11",
        "zmq",
        "uvloop",
        "msgspec",
        "yaml",
        "capnp",
        "click",
        "psutil",
        "idna",
    }
    for root in SOURCE_ROOTS:
        for path in _modules(root):
            if path.stem == "__init__" or path.stem == "__main__":
                continue
            assert path.stem not in shadowable, f"{path} shadows {path.stem}"
