"""Edits of the user's config file (ccr_box.config_file): tomlkit keeps what the user wrote.

Every edit is parsed back with tomllib: the values asked for changed, nothing else did, and the
text outside the changed values is byte for byte the user's.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import stat
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from ccr_box.config import load
from ccr_box.config_file import (
    assignment,
    render_template,
    set_values,
    update_file,
    write_initial,
)
from ccr_box.ops.init_common import InitRun, Prompter

POSIX = sys.platform != "win32"

# A file as a person edits it: comments everywhere, odd spacing and tabs, the tables in their own
# order, a multi-line array with inline comments, keys ccr-box does not know, trailing blanks.
USER_FILE = (
    "# My ccr-box, hand-edited.   \n"
    "\n"
    "[agent]   # this machine\n"
    'server_url="http://10.0.0.2:8787"\n'
    'machine_id =   "desk"     # as shown in Telegram\n'
    "\n"
    "[telegram]\n"
    'bot_token = "123:abc"\n'
    '  # mode = "polling"\n'
    "allowed_chat_ids = [\n"
    ' "1",   # me\n'
    ' "2",\n'
    "]\n"
    "my_note = 'unknown key, kept'\n"
    "\n"
    "\t# tab-indented comment\n"
    "[server]\n"
    "port\t=\t8787  # tabs around '='\n"
    'api_key = "k"\n'
    "extra.dotted = true\n"
    "\n"
    "\n"
)

CHANGES: dict[tuple[str, str], Any] = {
    ("telegram", "allowed_chat_ids"): [1, 2, 3],  # a multi-line array, now integers
    ("telegram", "mode"): "webhook",  # only a commented default so far
    ("server", "port"): 9000,  # tabs around '=' and an inline comment
    ("agent", "chat_id"): "-100123",  # not in the file at all
    ("agent", "machine_id"): "desk",  # already so: left exactly as written
    ("metrics", "enabled"): True,  # a section the file does not have
}

EDITED = (
    "# My ccr-box, hand-edited.   \n"
    "\n"
    "[agent]   # this machine\n"
    'server_url="http://10.0.0.2:8787"\n'
    'machine_id =   "desk"     # as shown in Telegram\n'
    'chat_id = "-100123"\n'
    "\n"
    "[telegram]\n"
    'bot_token = "123:abc"\n'
    '  mode = "webhook"\n'
    "allowed_chat_ids = [\n"
    "    1,\n"
    "    2,\n"
    "    3,\n"
    "]\n"
    "my_note = 'unknown key, kept'\n"
    "\n"
    "\t# tab-indented comment\n"
    "[server]\n"
    "port\t=\t9000  # tabs around '='\n"
    'api_key = "k"\n'
    "extra.dotted = true\n"
    "\n"
    "\n"
    "[metrics]\n"
    "enabled = true\n"
)


def changed_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    """(lines only in ``before``, lines only in ``after``), in order."""
    diff = list(difflib.ndiff(before.splitlines(keepends=True), after.splitlines(keepends=True)))
    return [d[2:] for d in diff if d[:2] == "- "], [d[2:] for d in diff if d[:2] == "+ "]


def expected_data(text: str, changes: dict[tuple[str, str], Any]) -> dict[str, Any]:
    data = tomllib.loads(text)
    for (section, key), value in changes.items():
        data.setdefault(section, {})[key] = list(value) if isinstance(value, tuple) else value
    return data


# --- set_values -----------------------------------------------------------------------------------


def test_set_values_changes_exactly_what_was_asked_and_keeps_the_users_layout() -> None:
    edited = set_values(USER_FILE, CHANGES)
    assert tomllib.loads(edited) == expected_data(USER_FILE, CHANGES)
    assert edited == EDITED
    # Outside the changed values not one byte moved: the section order, the spacing, the
    # comments (inline and full-line), the unknown keys, the trailing blank lines.
    gone, added = changed_lines(USER_FILE, edited)
    assert gone == [
        '  # mode = "polling"\n',
        ' "1",   # me\n',  # the old array's items: replaced by the new ones
        ' "2",\n',
        "port\t=\t8787  # tabs around '='\n",
    ]
    assert added == [
        'chat_id = "-100123"\n',
        '  mode = "webhook"\n',
        "    1,\n",
        "    2,\n",
        "    3,\n",
        "port\t=\t9000  # tabs around '='\n",
        "[metrics]\n",
        "enabled = true\n",
    ]


def test_set_values_to_the_values_already_there_changes_no_byte() -> None:
    same = {
        ("telegram", "allowed_chat_ids"): ("1", "2"),  # a tuple counts as the array it equals
        ("telegram", "bot_token"): "123:abc",
        ("server", "port"): 8787,
        ("agent", "machine_id"): "desk",
    }
    assert set_values(USER_FILE, same) == USER_FILE
    assert set_values(USER_FILE, {}) == USER_FILE


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("port", "8787"),  # a string is not the integer
        ("allowed_chat_ids", ["1", 2]),  # nor an integer the string
        ("flag", True),  # nor True the integer 1
    ],
)
def test_a_value_of_another_type_is_a_change(key: str, value: Any) -> None:
    text = '[s]\nport = 8787\nallowed_chat_ids = ["1", "2"]\nflag = 1\n'
    edited = set_values(text, {("s", key): value})
    assert edited != text
    assert tomllib.loads(edited)["s"][key] == value


def test_commented_default_is_replaced_in_place_and_line_endings_are_kept() -> None:
    template = render_template("k", "w", "p")
    edited = set_values(template, {("server", "port"): 9000, ("server", "host"): "0.0.0.0"})
    gone, added = changed_lines(template, edited)
    assert gone == ['# host = "127.0.0.1"\n', "# port = 8787\n"]
    assert added == ['host = "0.0.0.0"\n', "port = 9000\n"]
    assert edited.index('host = "0.0.0.0"') < edited.index("# TCP port") < edited.index("port =")

    crlf = '[server]\r\n# a comment\r\n# port = 1\r\nhost = "h"\r\n'
    edited = set_values(crlf, {("server", "port"): 2, ("server", "log_level"): "debug"})
    assert edited == '[server]\r\n# a comment\r\nport = 2\r\nhost = "h"\r\nlog_level = "debug"\n'
    assert tomllib.loads(edited)["server"] == {"port": 2, "host": "h", "log_level": "debug"}


def test_a_new_key_goes_to_the_end_of_its_own_section() -> None:
    text = "[a]\nx = 1\n\n\n[b]\ny = 2\n"
    edited = set_values(text, {("a", "z"): "new"})
    assert edited == '[a]\nx = 1\nz = "new"\n\n\n[b]\ny = 2\n'


def test_tables_written_other_ways_are_edited_where_they_are() -> None:
    dotted = 'telegram.mode = "polling"\n'
    edited = set_values(dotted, {("telegram", "bot_token"): "t"})
    assert tomllib.loads(edited) == {"telegram": {"mode": "polling", "bot_token": "t"}}
    assert edited.startswith(dotted)
    inline = 'telegram = {mode = "polling"}\n'
    edited = set_values(inline, {("telegram", "bot_token"): "t"})
    assert tomllib.loads(edited) == {"telegram": {"mode": "polling", "bot_token": "t"}}


def test_a_file_that_is_not_toml_is_refused_not_mangled() -> None:
    with pytest.raises(ValueError):
        set_values("[server\nport = 1\n", {("server", "port"): 2})
    with pytest.raises(ValueError):
        set_values("server = 1\n", {("server", "port"): 2})


@pytest.mark.parametrize(
    "value",
    [
        ["4242", "555"],
        [4242, -100555],
        [],
        'quote " and backslash \\ and tab \t',
        "ünïcödé",
        0,
        False,
    ],
)
def test_assignment_is_one_valid_toml_line_as_set_values_writes_it(value: Any) -> None:
    line = assignment("allowed_chat_ids", value)
    assert "\n" not in line
    assert tomllib.loads(line) == {"allowed_chat_ids": value}
    assert line in set_values("[telegram]\n", {("telegram", "allowed_chat_ids"): value})


def test_assignment_reads_like_the_hint_of_a_denied_chat() -> None:
    assert assignment("allowed_chat_ids", ["4242", "555"]) == 'allowed_chat_ids = ["4242", "555"]'
    assert assignment("allowed_chat_ids", (4242, 555)) == "allowed_chat_ids = [4242, 555]"
    assert assignment("odd key", 1) == '"odd key" = 1'


# --- update_file and init -------------------------------------------------------------------------


def test_update_file_edits_a_users_file_atomically_and_keeps_it_private(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(USER_FILE.encode())
    path.chmod(0o644)
    update_file(path, CHANGES)
    assert path.read_bytes() == EDITED.encode()
    if POSIX:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the file holds secrets
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]  # no temp file left
    with pytest.raises(FileNotFoundError):
        update_file(tmp_path / "missing.toml", CHANGES)


def test_update_file_refuses_a_broken_file_and_leaves_it_alone(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[server\nport = 1\n")
    with pytest.raises(ValueError):
        update_file(path, {("server", "port"): 2})
    assert path.read_text() == "[server\nport = 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]


def multi_line_config(tmp_path: Path) -> Path:
    """A valid ccr-box config whose allowed_chat_ids is a multi-line array with comments."""
    path = tmp_path / "config.toml"
    write_initial(path)
    text = path.read_text()
    multi = 'allowed_chat_ids = [\n "1",\n "2",  # the family group\n]\n'
    assert text.count("allowed_chat_ids = []\n") == 1
    path.write_text(text.replace("allowed_chat_ids = []\n", multi))
    assert load(path, env={}).telegram.allowed_chat_ids == ("1", "2")
    return path


def test_init_saving_over_a_multi_line_allowed_chat_ids_writes_valid_toml(tmp_path: Path) -> None:
    """The old line editor replaced only the array's first line: init then blamed the file."""
    path = multi_line_config(tmp_path)
    before = path.read_text()
    chats = {("telegram", "allowed_chat_ids"): [1, 2, 3], ("server", "port"): 9000}
    with asyncio.Runner() as runner:
        run = InitRun(
            argparse.Namespace(), path, True, before, {}, Prompter(interactive=False), runner
        )
        run.save(chats)  # init's own write: validates the edited text, then update_file
    after = path.read_text()
    assert tomllib.loads(after) == expected_data(before, chats)
    config = load(path, env={})
    assert config.telegram.allowed_chat_ids == ("1", "2", "3")
    assert config.server.port == 9000
    gone, added = changed_lines(before, after)
    assert gone == ["# port = 8787\n", ' "1",\n', ' "2",  # the family group\n']
    assert added == ["port = 9000\n", "    1,\n", "    2,\n", "    3,\n"]
