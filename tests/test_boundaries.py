"""Architecture boundaries, checked on the source with ``ast``.

Layout: ``server/`` (and ``db/``, its SQL) runs the router; ``agent/`` runs on each machine;
``client/`` is everything that talks to a server over HTTP/WebSocket (admin API, agent API,
event stream, probe); ``tui/`` is the Textual console; ``ops/`` and the top-level modules
(``cli``, ``admin_cli``, ``config``, ...) are shared.

- Textual is imported only in ``ccr_box/tui`` (the server, the agent, the clients and the CLI run
  without it), and ``ccr_box.tui`` only by itself and ``ccr_box/cli.py`` (which starts it).
- The agent talks to the server only over HTTP/WebSocket: it never imports ``ccr_box.db`` or
  ``ccr_box.server``.
- ``ccr_box/client`` imports none of the programs it serves (server, db, agent, tui, ops, the
  CLI); the server imports no client, agent, console or ops code.
- No private name (``_x``) is imported across packages: what one package shares with another is
  public (a top-level module such as ``admin_cli`` counts as its own package).
- Importing ``ccr_box`` has no side effects.
- ``aiosqlite`` (a dev extra: the baseline of ``scripts/bench_sqlite_writer.py``) is imported by
  no ``ccr_box`` module: the server's writer and both SQLite threads use plain ``sqlite3``.
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


def _from_base(node: ast.ImportFrom, package: str) -> str:
    """The absolute module of ``from <base> import ...``."""
    if not node.level:
        return node.module or ""
    base_parts = package.split(".")
    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
    return ".".join(base_parts + ([node.module] if node.module else []))


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
            base = _from_base(node, package)
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


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def unit_of(module: str) -> str:
    """The package a module belongs to for the privacy rule: ``ccr_box.tui.app`` -> ``tui``,
    ``ccr_box.admin_cli`` -> ``admin_cli`` (a top-level module is its own), ``ccr_box`` -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def private_imports_of(source: str, module: str, is_package: bool = False) -> list[str]:
    """``ccr_box`` names with a private part (``_x``) that ``module`` imports from another package."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(node, package)
            names.extend(f"{base}.{alias.name}" for alias in node.names)
    return sorted(
        name
        for name in names
        if is_under(name, "ccr_box")
        and any(_is_private(part) for part in name.split("."))
        and unit_of(name) != unit_of(module)
    )


def sources(*parts: str) -> list[Path]:
    where = PACKAGE.joinpath(*parts)
    return sorted(where.rglob("*.py")) if where.is_dir() else []


def is_under(module: str, top: str) -> bool:
    return module == top or module.startswith(top + ".")


ALL = sources()
CONSOLE = set(sources("tui"))
HEADLESS = [p for p in ALL if p not in CONSOLE]  # server, agent, client, ops, cli, config, ...


def forbidden_imports(path: Path, *tops: str) -> list[str]:
    return sorted(m for m in imported_modules(path) if any(is_under(m, top) for top in tops))


def test_the_walk_sees_the_package() -> None:
    names = {module_name(p) for p in HEADLESS}
    assert {"ccr_box", "ccr_box.cli", "ccr_box.server.app", "ccr_box.db"} <= names
    assert "ccr_box.server.ws" in names and "ccr_box.agent" in names
    assert {"ccr_box.client.admin", "ccr_box.client.agent", "ccr_box.client.events"} <= names
    assert "ccr_box.tui.app" in {module_name(p) for p in CONSOLE}
    # The import finder itself: relative imports resolve, lazy imports count.
    assert "ccr_box.db.queue" in imported_modules(PACKAGE / "server" / "hub.py")
    assert "ccr_box.server.runner" in imported_modules(PACKAGE / "cli.py")


@pytest.mark.parametrize("path", HEADLESS, ids=lambda p: module_name(p))
def test_textual_is_imported_only_by_the_console(path: Path) -> None:
    textual = forbidden_imports(path, "textual")
    assert textual == [], f"{module_name(path)} imports {textual}"


@pytest.mark.parametrize("path", [p for p in HEADLESS if p != PACKAGE / "cli.py"], ids=module_name)
def test_the_console_is_imported_only_by_itself_and_the_cli(path: Path) -> None:
    console = forbidden_imports(path, "ccr_box.tui")
    assert console == [], f"{module_name(path)} imports {console}"


@pytest.mark.parametrize("path", sources("agent"), ids=module_name)
def test_agent_never_imports_the_server_or_its_database(path: Path) -> None:
    forbidden = forbidden_imports(path, "ccr_box.db", "ccr_box.server")
    assert forbidden == [], f"{module_name(path)} imports {forbidden}"


CLIENT_MUST_NOT = (
    "ccr_box.server",
    "ccr_box.db",
    "ccr_box.agent",
    "ccr_box.tui",
    "ccr_box.ops",
    "ccr_box.cli",
    "ccr_box.admin_cli",
)


@pytest.mark.parametrize("path", sources("client"), ids=module_name)
def test_clients_import_none_of_the_programs_they_serve(path: Path) -> None:
    forbidden = forbidden_imports(path, *CLIENT_MUST_NOT)
    assert forbidden == [], f"{module_name(path)} imports {forbidden}"


@pytest.mark.parametrize("path", sources("server"), ids=module_name)
def test_the_server_imports_no_client_agent_console_or_ops_code(path: Path) -> None:
    forbidden = forbidden_imports(
        path, "ccr_box.client", "ccr_box.agent", "ccr_box.tui", "ccr_box.ops", "ccr_box.admin_cli"
    )
    assert forbidden == [], f"{module_name(path)} imports {forbidden}"


@pytest.mark.parametrize("path", ALL, ids=module_name)
def test_aiosqlite_is_only_the_benchmarks_baseline(path: Path) -> None:
    found = forbidden_imports(path, "aiosqlite")
    assert found == [], f"{module_name(path)} imports {found}"


@pytest.mark.parametrize("path", ALL, ids=module_name)
def test_no_private_name_is_imported_across_packages(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    private = private_imports_of(source, module_name(path), path.name == "__init__.py")
    assert private == [], f"{module_name(path)} imports private names of another package: {private}"


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


def test_private_finder_catches_every_form() -> None:
    source = textwrap.dedent(
        """
        from __future__ import annotations
        from ccr_box.admin_cli import _plain, age
        from ..client.http import _helper
        from . import _own
        from .widgets import _cell
        import ccr_box.server._internal
        def lazy():
            from ccr_box.agent.commands import _require
        """
    )
    assert private_imports_of(source, "ccr_box.tui.app") == [
        "ccr_box.admin_cli._plain",
        "ccr_box.agent.commands._require",
        "ccr_box.client.http._helper",
        "ccr_box.server._internal",
    ]  # not the console's own ``_own`` / ``widgets._cell``, nor public names or dunders
    assert private_imports_of("from ccr_box.config import _x", "ccr_box.cli") == [
        "ccr_box.config._x"
    ]
    assert private_imports_of("from . import _x", "ccr_box.client", is_package=True) == []


CHECK_IMPORT = """
import logging, sys, os
before = set(os.listdir("."))
import ccr_box
print("textual" in sys.modules, "aiohttp" in sys.modules, logging.getLogger().handlers)
print(sorted(set(os.listdir(".")) - before))
import ccr_box.cli, ccr_box.config, ccr_box.logs, ccr_box.server.app, ccr_box.db
import ccr_box.admin_cli, ccr_box.client.admin, ccr_box.client.agent, ccr_box.client.probe
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
