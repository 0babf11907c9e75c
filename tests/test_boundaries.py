"""Architecture boundaries, checked on the source with ``ast`` (layout: server, agent, db, tui).

- Nothing outside ``ccr_box/tui`` imports Textual (the server and the agent run headless).
- The agent talks to the server only over HTTP/WebSocket: it never imports ``ccr_box.db`` or
  ``ccr_box.server``.
- Importing ``ccr_box`` has no side effects.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ccr_box"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    return imports_of(
        path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py"
    )


def imports_of(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module ``source`` (the text of ``module``) imports, anywhere (lazy imports count),
    made absolute.

    ``from a import b`` yields both ``a`` and ``a.b`` (``b`` may be a submodule); string arguments of
    ``importlib.import_module(...)`` and ``__import__(...)`` count too.
    """
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if name in ("import_module", "__import__") and isinstance(first, ast.Constant):
                if isinstance(first.value, str):
                    found.add(first.value)
    return found


def sources(*parts: str) -> list[Path]:
    where = PACKAGE.joinpath(*parts)
    return sorted(where.rglob("*.py")) if where.is_dir() else []


def is_under(module: str, top: str) -> bool:
    return module == top or module.startswith(top + ".")


HEADLESS = [
    *sources("server"),
    *sources("agent"),
    *sources("db"),
    *sorted(PACKAGE.glob("*.py")),  # cli, config, logs, protocol, ...: shared by every mode
    *[p for p in [PACKAGE / "tui" / "client.py"] if p.exists()],  # the console's API client
]


def test_the_walk_sees_the_package() -> None:
    names = {module_name(p) for p in HEADLESS}
    assert {"ccr_box", "ccr_box.cli", "ccr_box.server.app", "ccr_box.db"} <= names
    assert "ccr_box.server.ws" in names and "ccr_box.agent" in names
    # The import finder itself: relative imports resolve, lazy imports count.
    assert "ccr_box.db.queue" in imported_modules(PACKAGE / "server" / "hub.py")
    assert "ccr_box.server.runner" in imported_modules(PACKAGE / "cli.py")


@pytest.mark.parametrize("path", HEADLESS, ids=lambda p: module_name(p))
def test_headless_modules_never_import_textual(path: Path) -> None:
    textual = sorted(m for m in imported_modules(path) if is_under(m, "textual"))
    assert textual == [], f"{module_name(path)} imports {textual}"


@pytest.mark.parametrize("path", sources("agent") or [None], ids=str)
def test_agent_never_imports_the_server_or_its_database(path: Path | None) -> None:
    if path is None:
        pytest.skip("no ccr_box/agent sources yet")
    forbidden = sorted(
        m
        for m in imported_modules(path)
        if is_under(m, "ccr_box.db") or is_under(m, "ccr_box.server")
    )
    assert forbidden == [], f"{module_name(path)} imports {forbidden}"


def test_import_finder_catches_every_form() -> None:
    """The checks above are only as good as the finder: prove it sees each spelling."""
    source = textwrap.dedent(
        """
        import textual.app
        from ..db import queue
        from . import inbox
        from ccr_box import server
        def lazy():
            import importlib
            importlib.import_module("textual.widgets")
        """
    )
    found = imports_of(source, "ccr_box.agent.probe")
    assert {"textual.app", "textual.widgets", "ccr_box.db.queue", "ccr_box.server"} <= found
    assert "ccr_box.agent.inbox" in found
    assert imports_of("from .. import db", "ccr_box.agent", is_package=True) >= {"ccr_box.db"}


CHECK_IMPORT = """
import logging, sys, os
before = set(os.listdir("."))
import ccr_box
print("textual" in sys.modules, "aiohttp" in sys.modules, logging.getLogger().handlers)
print(sorted(set(os.listdir(".")) - before))
import ccr_box.cli, ccr_box.config, ccr_box.logs, ccr_box.server.app, ccr_box.db
print("textual" in sys.modules, logging.getLogger().handlers)
"""


def test_importing_ccr_box_has_no_side_effects(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHECK_IMPORT],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(PACKAGE.parent)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines() == [
        "False False []",  # no Textual, no server stack, no logging set-up
        "[]",  # no files written
        "False []",  # not even the CLI or the server imports Textual at import time
    ]
    assert list(tmp_path.iterdir()) == []
