"""Security suite: every comparison of a secret is constant-time (``hmac.compare_digest``),
checked on the source's syntax tree rather than with a stopwatch (contract §3.1, §3.3)."""

from __future__ import annotations

import ast
from pathlib import Path

import ccr_box
from ccr_box.config import SECRET_KEYS

# -- constant-time comparisons -----------------------------------------------------------------

# Identifiers that hold a secret value (the API key, webhook secrets, bot token).
SECRET_NAMES = {
    "api_key",
    "apikey",
    "bot_token",
    "webhook_secret",
    "webhook_path_secret",
    "path_secret",
    "secret",
    "expected",
    "presented",
}
# Reviewed exceptions: (file, source of the comparison) -> why it is not an authentication check.
REVIEWED = {
    (
        "ccr_box/ops/webhook_state.py",
        "tg.webhook_path_secret in url",
    ): "doctor: is our path secret in the URL Telegram reports; nothing an attacker controls",
}


def _identifiers(node: ast.AST) -> set[str]:
    found = set()
    for each in ast.walk(node):
        if isinstance(each, ast.Name):
            found.add(each.id.lower())
        elif isinstance(each, ast.Attribute):
            found.add(each.attr.lower())
    return found


def timing_unsafe_comparisons(source: str) -> list[str]:
    """Comparisons of a secret with ``==``/``!=``/``in``/``startswith``... (anything but a
    constant): each is a timing oracle where ``hmac.compare_digest`` belongs."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(
            isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops
        ):
            operands = [node.left, *node.comparators]
            if all(isinstance(o, ast.Constant) for o in operands[1:]) and not isinstance(
                node.left, ast.Constant
            ):
                continue  # `secret == ""`: emptiness, not content
            if any(_identifiers(o) & SECRET_NAMES for o in operands):
                found.append(ast.unparse(node))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("startswith", "endswith", "find", "index", "count")
            and _identifiers(node) & SECRET_NAMES
        ):
            found.append(ast.unparse(node))
    return found


def test_the_scanner_catches_a_plain_comparison() -> None:
    bad = (
        "def ok(request, config):\n"
        "    if request.headers.get('X-API-Key') == config.server.api_key:\n"
        "        return True\n"
        "    return presented.startswith(expected) or secret != token\n"
    )
    assert len(timing_unsafe_comparisons(bad)) == 3
    assert timing_unsafe_comparisons("if api_key == '':\n    pass\n") == []


def test_every_secret_comparison_is_constant_time() -> None:
    root = Path(ccr_box.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = str(path.relative_to(root.parent))
        for comparison in timing_unsafe_comparisons(path.read_text(encoding="utf-8")):
            if (rel, comparison) not in REVIEWED:
                found.append(f"{rel}: {comparison}")
    assert found == []
    # And the one place that does compare secrets uses hmac.compare_digest.
    auth = (root / "server" / "auth.py").read_text(encoding="utf-8")
    tree = ast.parse(auth)
    equals = next(
        n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "secret_equals"
    )
    assert "hmac.compare_digest" in ast.unparse(equals)
    # Every request handler that reads a configured secret checks it through auth's helpers.
    helpers = {"secret_equals", "header_key_ok", "subprotocol_key_ok", "require_api_key"}
    handlers = 0
    for path in sorted((root / "server").glob("*.py")):
        if path.name == "auth.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            ids = _identifiers(node)
            if "request" in ids and ids & {"api_key", "webhook_secret", "webhook_path_secret"}:
                handlers += 1
                assert ids & helpers, (
                    f"{path.name}:{node.name} reads a secret without auth's helpers"
                )
    assert handlers >= 3  # /ws, the webhook and the event stream at least


def test_config_secrets_are_the_ones_this_suite_checks() -> None:
    names = {key for _, key in SECRET_KEYS}
    assert names <= SECRET_NAMES, names - SECRET_NAMES
