"""Reading the server's own database in tests (its read-only connection: committed data only)."""

from __future__ import annotations

from typing import Any

from ccr_box.db import queue as q
from tests.conftest import Harness


async def command_row(h: Harness, command_id: str) -> dict[str, Any]:
    """The ``command_queue`` row of ``command_id`` as a dict; fails the test when there is none."""
    found = await h.db.read(lambda c: q.get(c, command_id))
    assert found is not None, f"no command_queue row for {command_id!r}"
    return found
