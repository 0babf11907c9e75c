"""Hypothesis strategies for the bad-input suites (``tests/test_fuzz_*.py``).

A strategy draws a *document*: plain JSON-like Python values mixed with the node types below.
The suites encode documents to raw bytes with :func:`encode`, so an input can carry what
``json.dumps`` never writes: duplicated keys (:class:`Obj`), ``NaN`` / ``Infinity`` and malformed
number tokens (:class:`Raw`), invalid UTF-8 and raw surrogate bytes inside strings
(:class:`RawStr`), and nesting far beyond the interpreter's recursion limit (:class:`Deep`).
Values that exist only once a server runs (mapped message ids, tokens, fresh update ids) are
placeholders (:class:`Ref`, :class:`Fmt`) which :func:`encode` fills in from a context mapping.

Two wires:

- ``valid=False`` — anything a client can send to the webhook or a socket: invalid UTF-8, lone
  surrogates (as ``\\ud800`` escapes and as raw ED A0 80), NaN, 10,000-level nesting, bad syntax.
- ``valid=True`` — what a Bot API answer can carry (long polling): well-formed JSON text, no lone
  surrogates, no NaN, moderate nesting, but still every field of every type, huge integers and
  strings, duplicated keys and nulls anywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any

from hypothesis import strategies as st

from tests.conftest import CHAT, OTHER_CHAT, USER

ALLOWED = int(CHAT)
DENIED = int(OTHER_CHAT)

# Integers around every boundary an implementation might trip over: 32/53/64 bits and beyond.
BIG_INTS = (
    0,
    -1,
    2**31 - 1,
    2**31,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64,
    10**30,
    -(2**63),
    -(2**63) - 1,
    -(2**70),
)


# -- document nodes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Obj:
    """A JSON object as ordered pairs: keys may repeat (the last one wins in most parsers)."""

    pairs: tuple[tuple[Any, Any], ...]

    def without(self, key: str) -> Obj:
        return Obj(tuple(p for p in self.pairs if p[0] != key))


@dataclass(frozen=True)
class Raw:
    """Bytes written verbatim where a value goes: ``NaN``, ``04242``, ``1e400``, junk."""

    data: bytes


@dataclass(frozen=True)
class RawStr:
    """A string literal whose content bytes are written verbatim (invalid UTF-8, bad escapes)."""

    data: bytes


@dataclass(frozen=True)
class Big:
    """``char * n`` as one JSON string (a short repr in hypothesis' falsifying examples)."""

    char: str
    n: int


@dataclass(frozen=True)
class Deep:
    """``depth`` nested arrays or objects around ``leaf``, written without recursion."""

    depth: int
    kind: str = "array"  # array | object | mixed
    leaf: Any = None


@dataclass(frozen=True)
class Ref:
    """A value from the context: ``msg_chat``, ``token_chat``, ``fresh0``, ``other_cmd``…"""

    name: str


@dataclass(frozen=True)
class Fmt:
    """A string made of literal parts and :class:`Ref` parts."""

    parts: tuple[Any, ...]


_DEEP = {
    "array": (b"[", b"]"),
    "object": (b'{"a":', b"}"),
    "mixed": (b'[{"a":', b"}]"),
}


def encode(value: Any, ctx: dict[str, Any], *, ascii_only: bool = True) -> bytes:
    """The document as raw JSON bytes. ``ascii_only`` escapes non-ASCII text (``\\ud800``);
    otherwise text is written as UTF-8 with lone surrogates as their raw bytes (ED A0 80)."""
    out = bytearray()
    _encode(value, ctx, ascii_only, out)
    return bytes(out)


def _text(part: Any, ctx: dict[str, Any]) -> str:
    if isinstance(part, Ref):
        return str(ctx[part.name])
    if isinstance(part, Big):
        return part.char * part.n
    return part


def _encode(value: Any, ctx: dict[str, Any], ascii_only: bool, out: bytearray) -> None:
    if isinstance(value, Ref):
        _encode(ctx[value.name], ctx, ascii_only, out)
    elif isinstance(value, Fmt):
        _encode("".join(_text(part, ctx) for part in value.parts), ctx, ascii_only, out)
    elif isinstance(value, Big):
        _encode(value.char * value.n, ctx, ascii_only, out)
    elif value is None:
        out += b"null"
    elif value is True:
        out += b"true"
    elif value is False:
        out += b"false"
    elif isinstance(value, int):
        out += str(value).encode()
    elif isinstance(value, float):
        out += json.dumps(value).encode()  # NaN / Infinity tokens included
    elif isinstance(value, str):
        out += json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    elif isinstance(value, Raw):
        out += value.data
    elif isinstance(value, RawStr):
        out += b'"' + value.data + b'"'
    elif isinstance(value, Deep):
        opener, closer = _DEEP[value.kind]
        out += opener * value.depth
        _encode(value.leaf, ctx, ascii_only, out)
        out += closer * value.depth
    elif isinstance(value, Obj | dict):
        pairs = value.pairs if isinstance(value, Obj) else tuple(value.items())
        out += b"{"
        for i, (key, item) in enumerate(pairs):
            if i:
                out += b","
            _encode(key, ctx, ascii_only, out)
            out += b":"
            _encode(item, ctx, ascii_only, out)
        out += b"}"
    elif isinstance(value, list | tuple):
        out += b"["
        for i, item in enumerate(value):
            if i:
                out += b","
            _encode(item, ctx, ascii_only, out)
        out += b"]"
    else:  # pragma: no cover - a strategy bug
        raise TypeError(f"cannot encode {type(value).__name__}")


# -- leaves ---------------------------------------------------------------------------------------


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` four times in five, else ``bad``; shrinks towards ``good``."""
    return st.integers(0, 4).flatmap(lambda i: bad if i == 4 else good)


WEIRD_TEXT = (
    "",
    " ",
    "\x00",
    "\n\n\n",
    "\t",
    "😀",
    "\u202e",  # right-to-left override
    "\ufeff",
    "\u0085",
    "é" * 3,
    "ﷺ",
    "/",
    "//",
    "/cmd",
    "/cmd ",
    "/help@other_bot",
    "/HELP",
    "cmd:",
    "cmd::",
    "' OR 1=1 --",
    "%s%n{0}",
)
SURROGATE_TEXT = ("\ud800", "a\udfffb", "\udc00\ud800", "\ud83d")

VALID_RAW = (b"-0", b"1E2", b"4242.0", b"4.242e3", b"4242e0", b"1e-400", b"-0.0", b"1" + b"0" * 40)
INVALID_RAW = (
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e400",
    b"04242",
    b"+1",
    b".5",
    b"0x10",
    b"1.",
    b"-",
    b"tru",
    b"nul",
    b"undefined",
)
RAW_STRINGS = (
    b"\xed\xa0\x80",  # U+D800 as raw bytes
    b"\xed\xb0\x80x",
    b"\xff",
    b"\xc3",  # truncated sequence
    b"\xc0\xaf",  # overlong
    b"\xf4\x90\x80\x80",  # beyond U+10FFFF
    b"\\ud800",
    b"\\udc00\\ud800",
    b"\\ud83d",
    b"\x00",  # raw control character
    b"\x1f",
    b"\\x41",  # invalid escape
    b"\\u12",
    b"\\",
)


@cache
def _chars(valid: bool) -> st.SearchStrategy[str]:
    # Without exclusions hypothesis never draws surrogates (category Cs): ask for them explicitly.
    return st.characters(codec=None, exclude_categories=("Cs",) if valid else ())


@cache
def texts(valid: bool, max_size: int = 20) -> st.SearchStrategy[Any]:
    weird = WEIRD_TEXT if valid else WEIRD_TEXT + SURROGATE_TEXT
    big_chars = ["x", "é", "😀"] + ([] if valid else ["\ud800"])
    return st.one_of(
        st.text(_chars(valid), max_size=max_size),
        st.sampled_from(weird),
        st.builds(
            Big,
            st.sampled_from(big_chars),
            st.sampled_from([4_096, 4_097, 10_000, 10_001, 65_536, 200_000]),
        ),
    )


@cache
def numbers(valid: bool) -> st.SearchStrategy[Any]:
    raw = VALID_RAW if valid else VALID_RAW + INVALID_RAW
    return st.one_of(
        st.sampled_from(BIG_INTS),
        st.integers(),
        st.floats(allow_nan=not valid, allow_infinity=not valid),
        st.sampled_from([Raw(r) for r in raw]),
    )


@cache
def _keys(valid: bool) -> st.SearchStrategy[Any]:
    common = st.sampled_from(["type", "id", "text", "update_id", "message", "chat", "", "\x00"])
    if valid:
        return st.one_of(common, st.text(_chars(True), max_size=6))
    return st.one_of(
        common,
        st.text(_chars(False), max_size=6),
        st.sampled_from([RawStr(r) for r in RAW_STRINGS]),
    )


@cache
def _deep(valid: bool) -> st.SearchStrategy[Deep]:
    # valid: a whole getUpdates answer stays well below the server's nesting bound (64 levels).
    depths = [3, 8, 15] if valid else [10, 63, 64, 65, 999, 1000, 1001, 5_000, 100_000]
    return st.builds(
        Deep,
        st.sampled_from(depths),
        st.sampled_from(["array", "object", "mixed"]),
        st.sampled_from([None, 0, "x", {"type": "ping"}]),
    )


@cache
def json_values(valid: bool) -> st.SearchStrategy[Any]:
    """Any JSON value: wrong types, nulls, huge numbers and strings, nesting, duplicated keys."""
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        numbers(valid),
        texts(valid),
        *([] if valid else [st.sampled_from([RawStr(r) for r in RAW_STRINGS])]),
    )

    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(_chars(valid), max_size=6), children, max_size=4),
            st.lists(st.tuples(_keys(valid), children), max_size=4).map(
                lambda pairs: Obj(tuple(pairs))
            ),
        )

    nested = st.recursive(leaves, extend, max_leaves=6)
    return st.integers(0, 7).flatmap(lambda i: _deep(valid) if i == 7 else nested)


# -- Telegram updates -----------------------------------------------------------------------------
#
# An update is either a *realistic* one (shaped like Telegram's, from an allowed or a denied
# sender, replying to a mapped message or naming a token) with zero to three perturbations at
# random places, or a *chaotic* one where every field may be missing, duplicated or of any type.


@st.composite
def _object(
    draw: st.DrawFn, fields: list[tuple[str, st.SearchStrategy[Any], int]], valid: bool
) -> Obj:
    """Fields present with probability ``p``/4 each, extra keys, sometimes a duplicated key."""
    pairs: list[tuple[Any, Any]] = []
    for key, strategy, present in fields:
        if draw(st.integers(0, 3)) < present:
            pairs.append((key, draw(strategy)))
    if draw(st.integers(0, 3)) == 0:
        pairs += draw(st.lists(st.tuples(_keys(valid), json_values(valid)), max_size=2))
    if pairs and draw(st.integers(0, 4)) == 0:
        key = pairs[draw(st.integers(0, len(pairs) - 1))][0]
        at = draw(st.integers(0, len(pairs)))
        pairs.insert(at, (key, draw(json_values(valid))))
    if draw(st.integers(0, 4)) == 0:
        pairs.reverse()
    return Obj(tuple(pairs))


LOOK_ALIKES = (
    -ALLOWED,
    "04242",
    " 4242",
    "4242 ",
    "+4242",
    "４２４２",  # fullwidth digits
    "4242\x00",
    ALLOWED + 2**64,
    ALLOWED - 2**64,
    "4242.0",
    "",
    True,
    None,
    (ALLOWED,),
    {"id": ALLOWED},
    Raw(b"4242.0"),
    Raw(b"4.242e3"),
    Raw(b"4242e0"),
)


@cache
def ids(valid: bool) -> st.SearchStrategy[Any]:
    """Chat and user ids: the allowed one (as integer and string), denied ones, look-alikes."""
    good = st.sampled_from([ALLOWED, ALLOWED, ALLOWED, CHAT, DENIED, OTHER_CHAT])
    odd = st.one_of(st.sampled_from(LOOK_ALIKES), numbers(valid), json_values(valid))
    return st.integers(0, 5).flatmap(lambda i: odd if i == 5 else good)


@cache
def _reply_targets(valid: bool) -> st.SearchStrategy[Any]:
    """Message ids that route (mapped in the allowed / the denied chat) and ones that do not."""
    mapped = st.sampled_from([Ref("msg_chat"), Ref("msg_chat"), Ref("msg_chat"), Ref("msg_other")])
    return mostly(mapped, st.one_of(st.sampled_from(BIG_INTS), st.integers(), numbers(valid)))


@cache
def _tokens() -> st.SearchStrategy[Ref]:
    return st.sampled_from([Ref("token_chat"), Ref("token_chat"), Ref("token_other")])


@cache
def _message_texts(valid: bool) -> st.SearchStrategy[Any]:
    """Texts that route as a reply, ``/cmd`` forms, bot commands, anything; None = no text."""
    plain_text = st.one_of(st.sampled_from(["hello", "run the tests", "y", ""]), texts(valid))
    cmd = st.builds(
        lambda prefix, tok, rest: Fmt((prefix, tok, " ", rest)),
        st.sampled_from(["/cmd ", "/CMD ", "/cmd  ", "/cmd\n", "/cmd@", "/cmd@ccrbox_test_bot "]),
        _tokens(),
        st.one_of(st.just("run"), texts(valid)),
    )
    commands = st.sampled_from(
        [
            "/help",
            "/start",
            "/sessions",
            "//compact",
            "/unknown",
            "/cmd",
            "/cmd x",
            "/launch devbox /tmp go",
            "/kill sess-1",
            "/tmp/x fix this",
            "/help@other_bot",
        ]
    )
    return st.one_of(plain_text, plain_text, cmd, commands, st.none())


@cache
def _callback_data(valid: bool) -> st.SearchStrategy[Any]:
    action = st.one_of(
        st.sampled_from(["yes", "no", "continue", "exit", "y", "q0", "a:b:c", ""]), texts(valid)
    )
    data = st.builds(lambda tok, act: Fmt(("cmd:", tok, ":", act)), _tokens(), action)
    fixed = st.sampled_from(["cmd:", "cmd::", "cmd::yes", "personal:x", "CMD:x:yes", "cmd:x"])
    return mostly(data, fixed)


def _person(user_id: Any) -> Obj:
    return Obj((("id", user_id), ("is_bot", False), ("first_name", "Tester")))


def _chat_obj(chat_id: Any) -> Obj:
    return Obj((("id", chat_id), ("type", "private")))


BOT = Obj((("id", 123456), ("is_bot", True), ("username", "ccrbox_test_bot")))


@st.composite
def _sender(draw: st.DrawFn, valid: bool) -> tuple[Any, Any]:
    chat = draw(ids(valid))
    user = draw(st.one_of(st.just(chat), ids(valid)))  # mostly a private chat: user = chat
    return chat, user


@st.composite
def _realistic_message(draw: st.DrawFn, valid: bool) -> Obj:
    chat, user = draw(_sender(valid))
    pairs: list[tuple[Any, Any]] = [
        ("message_id", draw(st.integers(1, 2**31))),
        ("from", _person(user)),
        ("chat", _chat_obj(chat)),
        ("date", 1_700_000_000),
    ]
    text = draw(_message_texts(valid))
    if text is not None:
        pairs.append(("text", text))
    else:
        pairs.append(("photo", [{"file_id": "f", "width": 1, "height": 1}]))
    if draw(st.integers(0, 3)):
        reply = (
            ("message_id", draw(_reply_targets(valid))),
            ("from", BOT),
            ("chat", _chat_obj(chat)),
            ("text", "notification"),
        )
        pairs.append(("reply_to_message", Obj(reply)))
    if (isinstance(text, str) and text.startswith("/")) or draw(st.integers(0, 5)) == 0:
        pairs.append(("entities", [{"type": "bot_command", "offset": 0, "length": 5}]))
    if draw(st.integers(0, 5)) == 0:
        pairs += [("is_topic_message", True), ("message_thread_id", draw(st.integers(1, 99)))]
    return Obj(tuple(pairs))


@st.composite
def _realistic_callback(draw: st.DrawFn, valid: bool) -> Obj:
    chat, user = draw(_sender(valid))
    held = Obj(
        (
            ("message_id", draw(_reply_targets(valid))),
            ("from", BOT),
            ("chat", _chat_obj(chat)),
            ("text", "notification"),
        )
    )
    return Obj(
        (
            ("id", draw(st.sampled_from(["cbq-1", "cbq-2", "4242424242"]))),
            ("from", _person(user)),
            ("message", held),
            ("chat_instance", "-4242"),
            ("data", draw(_callback_data(valid))),
        )
    )


@st.composite
def _realistic_update(draw: st.DrawFn, valid: bool) -> Obj:
    pairs: list[tuple[Any, Any]] = []
    fresh = st.sampled_from([Ref("fresh0"), Ref("fresh1"), Ref("fresh2")])
    if draw(st.integers(0, 9)):
        pairs.append(("update_id", draw(mostly(fresh, st.sampled_from(BIG_INTS)))))
    kind = draw(st.sampled_from(["message", "message", "callback_query", "edited_message", "both"]))
    if kind in ("message", "both"):
        pairs.append(("message", draw(_realistic_message(valid))))
    if kind in ("callback_query", "both"):
        pairs.append(("callback_query", draw(_realistic_callback(valid))))
    if kind == "edited_message":
        pairs.append(("edited_message", draw(_realistic_message(valid))))
    return Obj(tuple(pairs))


def _sites(doc: Obj, path: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    """Paths (pair indices) to every object in ``doc``, ``doc`` itself first."""
    found = [path]
    for i, (_key, value) in enumerate(doc.pairs):
        if isinstance(value, Obj):
            found += _sites(value, (*path, i))
    return found


def _rebuild(doc: Obj, path: tuple[int, ...], change: Any) -> Obj:
    if not path:
        return change(doc)
    i = path[0]
    key, value = doc.pairs[i]
    pairs = list(doc.pairs)
    pairs[i] = (key, _rebuild(value, path[1:], change))
    return Obj(tuple(pairs))


@st.composite
def _perturbed(draw: st.DrawFn, doc: Obj, valid: bool) -> Obj:
    """``doc`` with 0-3 changes at random objects in it: a value replaced by any JSON, a key
    dropped, a key duplicated with another value, an extra key, a value wrapped in a list."""
    for _ in range(draw(st.integers(0, 3))):
        sites = _sites(doc)
        path = sites[draw(st.integers(0, len(sites) - 1))]
        op = draw(st.sampled_from(["replace", "drop", "duplicate", "extra", "wrap"]))
        target = doc
        for i in path:
            target = target.pairs[i][1]
        n = len(target.pairs)
        if op == "extra" or n == 0:
            pair = (draw(_keys(valid)), draw(json_values(valid)))
            doc = _rebuild(doc, path, lambda o, p=pair: Obj((*o.pairs, p)))
            continue
        i = draw(st.integers(0, n - 1))
        key = target.pairs[i][0]
        if op == "drop":
            pairs = target.pairs[:i] + target.pairs[i + 1 :]
        elif op == "wrap":
            pairs = (*target.pairs[:i], (key, [target.pairs[i][1]]), *target.pairs[i + 1 :])
        else:
            value = draw(st.one_of(json_values(valid), numbers(valid), texts(valid)))
            if op == "replace":
                pairs = (*target.pairs[:i], (key, value), *target.pairs[i + 1 :])
            else:  # duplicate, before or after the original
                at = draw(st.sampled_from([i, i + 1]))
                pairs = (*target.pairs[:at], (key, value), *target.pairs[at:])
        doc = _rebuild(doc, path, lambda o, p=pairs: Obj(p))
    return doc


@cache
def _chaotic_message(valid: bool) -> st.SearchStrategy[Any]:
    anything = json_values(valid)
    chat = _object([("id", ids(valid), 4), ("type", texts(valid), 2)], valid=valid)
    user = _object([("id", ids(valid), 4), ("is_bot", anything, 1)], valid=valid)
    reply = _object(
        [("message_id", _reply_targets(valid), 4), ("chat", mostly(chat, anything), 2)],
        valid=valid,
    )
    entity = _object(
        [("type", anything, 3), ("offset", numbers(valid), 3), ("length", numbers(valid), 3)],
        valid=valid,
    )
    message = _object(
        [
            ("message_id", mostly(st.integers(1, 2**31), numbers(valid)), 4),
            ("from", mostly(user, anything), 4),
            ("chat", mostly(chat, anything), 4),
            ("date", numbers(valid), 2),
            ("text", mostly(_message_texts(valid), anything), 3),
            ("reply_to_message", mostly(reply, anything), 3),
            ("entities", mostly(st.lists(entity, max_size=3), anything), 1),
            ("is_topic_message", anything, 1),
            ("message_thread_id", numbers(valid), 1),
        ],
        valid=valid,
    )
    return mostly(message, anything)


@cache
def _chaotic_callback(valid: bool) -> st.SearchStrategy[Any]:
    anything = json_values(valid)
    callback = _object(
        [
            ("id", mostly(st.text(_chars(valid), min_size=1, max_size=12), anything), 4),
            ("from", mostly(_object([("id", ids(valid), 4)], valid=valid), anything), 4),
            ("message", _chaotic_message(valid), 4),
            ("data", mostly(_callback_data(valid), anything), 4),
            ("inline_message_id", texts(valid), 1),
        ],
        valid=valid,
    )
    return mostly(callback, anything)


@st.composite
def _chaotic_update(draw: st.DrawFn, valid: bool) -> Obj:
    pairs: list[tuple[Any, Any]] = []
    if draw(st.integers(0, 9)):
        fresh = st.sampled_from([Ref("fresh0"), Ref("fresh1"), Ref("fresh2")])
        anything = st.one_of(st.sampled_from(BIG_INTS), numbers(valid), json_values(valid))
        pairs.append(("update_id", draw(mostly(fresh, anything))))
    kind = draw(st.sampled_from(["message", "callback_query", "both", "edited_message", "other"]))
    if kind in ("message", "both"):
        pairs.append(("message", draw(_chaotic_message(valid))))
    if kind in ("callback_query", "both"):
        pairs.append(("callback_query", draw(_chaotic_callback(valid))))
    if kind == "edited_message":
        name = draw(st.sampled_from(["edited_message", "channel_post"]))
        pairs.append((name, draw(_chaotic_message(valid))))
    if kind == "other":
        name = st.sampled_from(["my_chat_member", "poll", "message_reaction"])
        pairs.append((draw(st.one_of(name, _keys(valid))), draw(json_values(valid))))
    if draw(st.integers(0, 3)) == 0:
        pairs += draw(st.lists(st.tuples(_keys(valid), json_values(valid)), max_size=2))
    if pairs and draw(st.integers(0, 5)) == 0:  # a duplicated key: message twice, update_id twice…
        key = pairs[draw(st.integers(0, len(pairs) - 1))][0]
        value = draw(st.one_of(_chaotic_message(valid), json_values(valid)))
        pairs.insert(draw(st.integers(0, len(pairs))), (key, value))
    if draw(st.integers(0, 4)) == 0:
        pairs.reverse()
    return Obj(tuple(pairs))


@cache
def updates(valid: bool) -> st.SearchStrategy[Obj]:
    """One update: realistic with a few perturbations (three times in four) or chaotic. Its
    ``update_id`` is mostly ``Ref("fresh0")``…``Ref("fresh2")``: fresh per example, so two
    updates of one example may share it; else 2**63, 10**30, a float, a string, null…"""
    # The realistic base is well-formed; the perturbations bring the wire's bad values.
    realistic = _realistic_update(True).flatmap(lambda doc: _perturbed(doc, valid))
    return st.integers(0, 3).flatmap(lambda i: _chaotic_update(valid) if i == 3 else realistic)


# -- webhook bodies -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Body:
    """One webhook request body: a document, how its text is written, an optional byte mutation."""

    doc: Any
    ascii_only: bool = True
    mutation: tuple[Any, ...] | None = None

    def encode(self, ctx: dict[str, Any]) -> bytes:
        return mutate(encode(self.doc, ctx, ascii_only=self.ascii_only), self.mutation)


REPEAT = "repeat"  # in a delivery list: send the previous body again, byte for byte

JUNK = (
    b"",
    b"{",
    b"}",
    b"null",
    b"[]",
    b'"x"',
    b"{}",
    b"\xef\xbb\xbf{}",
    b'{"update_id":1,}',
    b"{'update_id':1}",
    b'{"a":1}{"b":2}',
    b"\xff\xfe{\x00}\x00",
    b'{"update_id":1 "message":{}}',
)

MUTATIONS = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(0, 255)),
    st.tuples(st.just("prefix"), st.sampled_from([b"\xef\xbb\xbf", b" \n", b"\x00", b"\xff"])),
    st.tuples(st.just("suffix"), st.sampled_from([b"x", b"}", b"\x00", b" \n", b"\xed\xa0\x80"])),
    st.sampled_from([("utf-16",), ("utf-32",)]),
)


def mutate(raw: bytes, mutation: tuple[Any, ...] | None) -> bytes:
    if mutation is None:
        return raw
    kind = mutation[0]
    if kind == "truncate":
        return raw[: int(len(raw) * mutation[1])]
    if kind == "flip":
        if not raw:
            return bytes([mutation[2]])
        at = min(int(len(raw) * mutation[1]), len(raw) - 1)
        return raw[:at] + bytes([mutation[2]]) + raw[at + 1 :]
    if kind == "prefix":
        return mutation[1] + raw
    if kind == "suffix":
        return raw + mutation[1]
    # Re-encoded as UTF-16/32 (json.loads detects these; the contract's JSON is UTF-8).
    try:
        return raw.decode("utf-8").encode(kind)
    except UnicodeError:
        return raw


@cache
def bodies() -> st.SearchStrategy[Body]:
    """Mostly updates; else any JSON value, junk, random bytes. Written ASCII-escaped or as UTF-8,
    and one time in five mutated at the byte level (cut, a flipped byte, a prefix, UTF-16…)."""
    other = st.one_of(
        json_values(False),
        st.sampled_from([Raw(j) for j in JUNK]),
        st.binary(max_size=40).map(Raw),
    )
    docs = st.integers(0, 4).flatmap(lambda i: other if i == 4 else updates(False))
    return st.builds(Body, docs, ascii_only=st.booleans(), mutation=mostly(st.none(), MUTATIONS))


@cache
def deliveries() -> st.SearchStrategy[list[Any]]:
    """One example of the webhook suite: one to three bodies, or a repeat of the previous one."""
    return st.lists(mostly(bodies(), st.just(REPEAT)), min_size=1, max_size=3)


# -- agent frames ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One agent frame: a document sent as a text frame (when its bytes are UTF-8) or binary."""

    doc: Any
    binary: bool = False
    ascii_only: bool = True
    mutation: tuple[Any, ...] | None = None

    def encode(self, ctx: dict[str, Any]) -> bytes:
        return mutate(encode(self.doc, ctx, ascii_only=self.ascii_only), self.mutation)


@cache
def _command_ids() -> st.SearchStrategy[Any]:
    good = st.one_of(
        st.sampled_from([Ref("other_cmd"), Ref("unknown_cmd"), "a" * 64, "a" * 65, "\ud800"]),
        st.text(_chars(False), min_size=1, max_size=70),
        st.sampled_from(SURROGATE_TEXT),
    )
    return mostly(good, st.one_of(numbers(False), json_values(False)))


def _typed(
    kinds: st.SearchStrategy[Any], fields: list[tuple[str, st.SearchStrategy[Any], int]]
) -> st.SearchStrategy[Obj]:
    return _object([("type", mostly(kinds, json_values(False)), 4), *fields], valid=False)


@cache
def frames() -> st.SearchStrategy[Frame]:
    anything = json_values(False)
    ping = _typed(st.just("ping"), [("ts", anything, 1)])
    ack = _typed(st.just("ack"), [("commandId", _command_ids(), 4)])
    result = _typed(
        st.just("commandResult"),
        [
            ("success", mostly(st.booleans(), anything), 4),
            ("chatId", mostly(st.sampled_from([CHAT, ALLOWED, OTHER_CHAT]), ids(False)), 3),
            ("error", mostly(st.one_of(st.none(), texts(False)), anything), 2),
            ("commandId", _command_ids(), 3),
            ("sessionId", mostly(st.just("sess-1"), anything), 1),
        ],
    )
    others = _typed(
        st.sampled_from(["pong", "boot", "command", "launch", "kill", "PING", "ack ", "", "x"]),
        [("commandId", _command_ids(), 2), ("bootId", anything, 1), ("chatId", ids(False), 1)],
    )
    # Around the 64 KiB drop limit and well past it (1 MiB closes the socket: not drawn).
    big = st.builds(
        lambda n, kind: Obj((("type", kind), ("pad", Big("x", n)))),
        st.sampled_from([65_511, 65_512, 65_513, 100_000, 900_000]),
        st.sampled_from(["ping", "ack"]),
    )
    deep = st.builds(lambda d: Obj((("type", "ping"), ("x", d))), _deep(False))
    docs = st.one_of(
        ping,
        ack,
        ack,
        result,
        result,
        others,
        anything,
        big,
        deep,
        st.sampled_from([Raw(j) for j in JUNK]),
        st.binary(max_size=40).map(Raw),
    )
    return st.builds(
        Frame,
        docs,
        binary=st.booleans(),
        ascii_only=st.booleans(),
        mutation=st.integers(0, 7).flatmap(lambda i: MUTATIONS if i == 7 else st.none()),
    )


# -- explicit corner cases ------------------------------------------------------------------------
#
# Run before the generated examples (hypothesis ``@example``): the shapes known to break JSON
# handling, id columns and text storage, each in the position where it does the most damage
# (an allowed sender, a text that routes), so that no run depends on the generator finding them.


def message_update(
    text: Any = "run the tests",
    *,
    update_id: Any = Ref("fresh0"),
    chat: Any = ALLOWED,
    user: Any = ALLOWED,
    reply_to: Any = Ref("msg_chat"),
    **extra: Any,
) -> Obj:
    """A Telegram-shaped message update (a reply to a mapped message by default)."""
    message: list[tuple[Any, Any]] = [
        ("message_id", 4242),
        ("from", _person(user)),
        ("chat", _chat_obj(chat)),
        ("date", 1_700_000_000),
        ("text", text),
    ]
    if reply_to is not None:
        message.append(("reply_to_message", Obj((("message_id", reply_to), ("from", BOT)))))
    message += list(extra.items())
    return Obj((("update_id", update_id), ("message", Obj(tuple(message)))))


def callback_update(data: Any, *, update_id: Any = Ref("fresh0"), chat: Any = ALLOWED) -> Obj:
    held = Obj((("message_id", Ref("msg_chat")), ("chat", _chat_obj(chat))))
    query = Obj((("id", "cbq-corner"), ("from", _person(chat)), ("message", held), ("data", data)))
    return Obj((("update_id", update_id), ("callback_query", query)))


def _chat_twice(first: Any, last: Any) -> Obj:
    """A message whose chat object carries ``id`` twice (parsers keep the last one)."""
    update = message_update()
    message = dict(update.pairs)["message"]
    pairs = [
        (k, Obj((("id", first), ("id", last), ("type", "private")))) if k == "chat" else (k, v)
        for k, v in message.pairs
    ]
    return Obj((("update_id", Ref("fresh0")), ("message", Obj(tuple(pairs)))))


_OVER_64_BITS = (2**63, 2**64, 10**30, -(2**70))

POLLED_CORNERS: list[list[Obj]] = [
    [message_update(reply_to=big) for big in _OVER_64_BITS],
    [message_update("\U0001f600" * 5_000), message_update(Big("x", 10_001))],
    [message_update(chat=ALLOWED + 2**64), message_update(chat=CHAT, user=DENIED)],
    [_chat_twice(DENIED, ALLOWED), _chat_twice(ALLOWED, DENIED)],
    [message_update(is_topic_message=True, message_thread_id=big) for big in _OVER_64_BITS],
    [callback_update(Fmt(("cmd:", Ref("token_chat"), ":yes")), chat=DENIED)],
]

WEBHOOK_CORNERS: list[list[Any]] = [
    # Nesting far beyond the recursion limit, as a whole body and inside an update.
    [Body(Deep(100_000)), Body(Deep(100_000, "object")), Body(Deep(5_000, "mixed"))],
    [Body(message_update(reply_to=Deep(100_000))), Body(message_update(Deep(1_000, "object")))],
    # Ids beyond 64 bits where they are stored or looked up, twice each (dedup).
    [Body(message_update(update_id=big)) for big in _OVER_64_BITS] + [REPEAT],
    [Body(message_update(reply_to=big)) for big in _OVER_64_BITS],
    [Body(message_update(is_topic_message=True, message_thread_id=2**64))],
    [Body(callback_update(Fmt(("cmd:", Ref("token_chat"), ":yes")), update_id=2**63)), REPEAT],
    # Lone surrogates: escaped, and as raw bytes ED A0 80; in the text and in an id.
    [Body(message_update("\ud800")), Body(message_update("a\udfffb"), ascii_only=False)],
    [Body(message_update(RawStr(b"\xed\xa0\x80"))), Body(callback_update("cmd:\ud800:yes"))],
    # Not JSON although Python reads it.
    [Body(message_update(update_id=Raw(b"NaN"))), Body(message_update(Raw(b"Infinity")))],
    [Body(message_update(chat=Raw(b"4242.0"))), Body(message_update(update_id=Raw(b"1e400")))],
    # Duplicated keys and look-alike ids of the allowed chat.
    [Body(_chat_twice(DENIED, ALLOWED)), Body(_chat_twice(ALLOWED, DENIED))],
    [Body(message_update(chat=ALLOWED + 2**64)), Body(message_update(chat="04242"))],
    [Body(message_update(chat=CHAT, user=DENIED)), Body(message_update(chat=DENIED, user=USER))],
    # Sizes: at and over the 1 MiB body limit; a command over 10,000 UTF-16 units.
    [Body(message_update(Big("x", 1024 * 1024))), Body(message_update(Big("\U0001f600", 5_001)))],
]

FRAME_CORNERS: list[list[Frame]] = [
    [Frame(Obj((("type", "ping"), ("x", Deep(100_000))))), Frame(Deep(100_000, "object"))],
    [Frame(Obj((("type", "ack"), ("commandId", Deep(30_000)))), binary=True)],
    [Frame(Obj((("type", "ack"), ("commandId", "\ud800")))), Frame(Raw(b'{"type":"ack"}'))],
    [Frame(Obj((("type", "ack"), ("commandId", "x\udfff"))), binary=True, ascii_only=False)],
    [Frame(Obj((("type", "ack"), ("commandId", big)))) for big in _OVER_64_BITS],
    [
        Frame(
            Obj(
                (
                    ("type", "commandResult"),
                    ("success", False),
                    ("commandId", "\ud800"),
                    ("chatId", CHAT),
                    ("error", "\udc00"),
                )
            )
        ),
        Frame(Obj((("type", "commandResult"), ("success", False), ("chatId", 10**30)))),
    ],
    [Frame(Raw(b"\xed\xa0\x80"), binary=True), Frame(Raw(b'{"type":"ping"}\xff'), binary=True)],
    [Frame(Raw(b'{"type":"ping","n":NaN}')), Frame(Raw(b'{"type":"ping","type":"ack"}'))],
    # Binary frames are decoded as UTF-8 (§4.4): UTF-16/32 or a BOM is not a ping.
    [Frame(Obj((("type", "ping"),)), binary=True, mutation=(enc,)) for enc in ("utf-16", "utf-32")],
    [Frame(Obj((("type", "ping"),)), binary=True, mutation=("prefix", b"\xef\xbb\xbf"))],
    [Frame(Obj((("type", "ping"), ("pad", Big("x", 65_512))))), Frame(Big("x", 900_000))],
]
