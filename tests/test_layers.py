"""The architecture as a test: imports point down the layers, pure modules do no I/O.

Reads every module's imports with :mod:`ast` (nothing is imported), so a new upward edge or an
``import sqlite3`` in a parser fails here rather than in review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "chunkd"

#: Lower number = lower layer. A module may import only modules of its own layer or below.
LAYERS: dict[str, int] = {
    "errors": 0,
    "manifest": 1,
    "pthzip": 2,
    "pickle_scan": 2,
    "pickle_rules": 2,
    "tensor_names": 2,
    "tensor_refs": 2,
    "flatindex": 2,
    "codec": 2,
    "byteplanes": 2,
    "rounds": 2,
    "retention": 2,
    "runs": 2,
    "protocol": 2,
    "tenancy": 2,
    "config": 3,
    "log": 3,
    "safepath": 3,
    "store": 4,
    "checkpoint": 5,
    "deltas": 5,
    "recent_chunks": 5,
    "filecheck": 5,
    "ingest": 6,
    "ingest_pipeline": 6,
    "ingest_result": 6,
    "restore": 6,
    "verify": 7,
    "prune": 6,
    "forget": 6,
    "export": 7,
    "summary": 7,
    "replica": 7,  # chunkd/replica/: engine level, above store and restore
    "daemon": 9,
    "cli": 9,
}

#: Pure modules: no filesystem, database, sockets, threads or clocks.
PURE = {
    "pthzip",
    "pickle_rules",
    "pickle_scan",
    "tensor_names",
    "tensor_refs",
    "flatindex",
    "codec",
    "byteplanes",
    "rounds",
    "retention",
    "runs",
    "ingest_result",
    "protocol",
    "manifest",
    "errors",
    "store.gc",
    "tenancy",
    "daemon.admission",
}
FORBIDDEN_IN_PURE = {
    "sqlite3",
    "socket",
    "threading",
    "os",
    "time",
    "subprocess",
    "mmap",
    "shutil",
    "tempfile",
    "pathlib",
    "io",
}
#: What a pure module may import all the same, and the only names it may use from it: byteplanes
#: (codec's) keeps its zstd contexts and scratch buffers per thread (``threading.local``); it
#: starts no thread.
ALLOWED_IN_PURE = {"byteplanes": {"threading": {"local"}}}
#: torch costs ~140 MiB and seconds to import: never on the ingest and restore paths.
TORCH_ALLOWED = {"export"}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return ".".join(rel.parts)


def layer_of(name: str) -> int | None:
    top = name.split(".")[0]
    return LAYERS.get(top)


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, id(node) in top_level) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, id(node) in top_level))
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_point_down(path: Path) -> None:
    name = module_name(path)
    own = layer_of(name)
    assert own is not None, f"{name} has no layer in tests/test_layers.py"
    for imported, _ in imports_of(path):
        if not imported.startswith("chunkd."):
            continue
        target = imported.removeprefix("chunkd.")
        target_layer = layer_of(target)
        assert target_layer is not None, f"{name} imports unknown chunkd module {imported}"
        if target.split(".")[0] == name.split(".")[0]:
            continue
        assert target_layer <= own, f"{name} (layer {own}) imports {imported} ({target_layer})"


@pytest.mark.parametrize(
    "path", [p for p in MODULES if module_name(p) in PURE], ids=lambda p: module_name(p)
)
def test_pure_modules_do_no_io(path: Path) -> None:
    allowed = ALLOWED_IN_PURE.get(module_name(path), {})
    for imported, _ in imports_of(path):
        if imported in allowed:
            used = {
                node.attr
                for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == imported
            }
            assert used <= allowed[imported], f"{module_name(path)} uses {imported}.{used}"
            continue
        assert imported.split(".")[0] not in FORBIDDEN_IN_PURE, (
            f"pure module {module_name(path)} imports {imported}"
        )


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_torch_stays_off_the_daemon_paths(path: Path) -> None:
    name = module_name(path)
    for imported, at_module_level in imports_of(path):
        if imported.split(".")[0] in ("torch", "safetensors"):
            assert name in TORCH_ALLOWED and not at_module_level, (
                f"{name} imports {imported}; only lazily, and only in {sorted(TORCH_ALLOWED)}"
            )


def test_no_module_unpickles_user_files() -> None:
    for path in MODULES:
        source = path.read_text()
        assert "pickle.load" not in source and "pickle.Unpickler" not in source, path
        assert "weights_only=False" not in source, path
