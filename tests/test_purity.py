"""The pure core imports nothing that does I/O (STYLE.md: a pure core in a thin shell)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "pithcrawl"
PURE = [
    "canon",
    "divergence",
    "entries",
    "judge",
    "fetch/__init__",
    "fetch/decode",
    "text",
    "findings",
    "keys",
    "merge",
    "pith",
    "schedule",
    "schema",
    "timeline",
    "timestamps",
    "verify/__init__",
    "verify/report",
    "verify/complete",
    "verify/timestamp_rules",
    "verify/clean",
]
SHELL_LIBS = {
    "aiohttp",
    "anyio",
    "asyncio",
    "aiosqlite",
    "sqlite3",
    "structlog",
    "socket",
    "subprocess",
    "os",
    "pathlib",
    "io",
    "shutil",
    "urllib",
    "http",
    "requests",
    "time",
    "random",
    "logging",
    "signal",
    "tempfile",
    "importlib",
    "builtins",
}
SHELL_MODULES = {
    "fetch.client",
    "store",
    "alert",
    "serve",
    "crawl",
    "daemon",
    "sync",
    "cli",
    "config",
    "log",
    "trust",
}


def _imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_io(module: str):
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    for name in _imports(tree):
        top = name.split(".")[0]
        assert top not in SHELL_LIBS, f"{module} imports {name}"
        if top == "pithcrawl" and "." in name:
            parts = name.split(".")
            # A shell module may sit in a package that is pure itself (`fetch.client`).
            inside = {parts[1], ".".join(parts[1:3])}
            assert not inside & SHELL_MODULES, f"{module} imports {name}"
    calls = {
        n.func.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    }
    assert not calls & {"open", "print", "input"}, f"{module} calls {calls & {'open', 'print'}}"
