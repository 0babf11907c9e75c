"""Tests for ccr_box.textutil: UTF-16 lengths, cuts and the §8.3 notification splitter."""

from __future__ import annotations

import copy
import dataclasses
import random

import pytest

from ccr_box.textutil import (
    TRUNCATION_MARKER,
    Chunk,
    cut_preview,
    split_message,
    truncate_utf16,
    utf16_len,
)

EMOJI = "😀"  # U+1F600: one code point, two UTF-16 units


def texts(chunks: list[Chunk]) -> list[str]:
    return [c.text for c in chunks]


# --- utf16_len ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("s", "expected"),
    [("", 0), ("abc", 3), ("é", 1), ("€", 1), (EMOJI, 2), (f"a{EMOJI}b", 4), ("🎉🎉", 4)],
)
def test_utf16_len(s: str, expected: int) -> None:
    assert utf16_len(s) == expected
    assert utf16_len(s) == len(s.encode("utf-16-le")) // 2


def test_utf16_len_counts_a_lone_surrogate_as_one_unit() -> None:
    # json.loads can produce these; encoding would raise, counting must not.
    assert utf16_len("a\ud800b") == 3


# --- truncate_utf16 / cut_preview ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "expected"),
    [(0, ""), (1, "a"), (2, "a"), (3, f"a{EMOJI}"), (4, f"a{EMOJI}b"), (99, f"a{EMOJI}b")],
)
def test_truncate_utf16_never_splits_a_pair(limit: int, expected: str) -> None:
    assert truncate_utf16(f"a{EMOJI}b", limit) == expected


def test_truncate_utf16_keeps_a_pair_stored_as_two_code_points_whole() -> None:
    assert truncate_utf16("ab\ud83d\ude00", 3) == "ab"
    assert truncate_utf16("ab\ud83d\ude00", 4) == "ab\ud83d\ude00"


def test_truncate_utf16_error_text_limit() -> None:
    assert truncate_utf16("e" * 1500, 1000) == "e" * 1000
    assert truncate_utf16("e" * 999 + EMOJI, 1000) == "e" * 999


def test_truncate_utf16_rejects_negative_limit() -> None:
    with pytest.raises(ValueError):
        truncate_utf16("abc", -1)


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("", 3, "(empty)"),
        ("abc", 3, "abc"),
        ("abcd", 3, "abc…"),
        (f"ab{EMOJI}", 3, "ab…"),
        (f"ab{EMOJI}", 4, f"ab{EMOJI}"),
        ("   ", 3, "   "),
    ],
)
def test_cut_preview(text: str, limit: int, expected: str) -> None:
    assert cut_preview(text, limit) == expected


def test_cut_preview_default_limit_is_100() -> None:
    assert cut_preview("x" * 100) == "x" * 100
    assert cut_preview("x" * 101) == "x" * 100 + "…"


# --- split_message: sizes ------------------------------------------------------------------------


def test_short_text_is_one_chunk_equal_to_input() -> None:
    assert split_message("hello") == [Chunk("hello", None)]


def test_entities_none_vs_empty_list() -> None:
    assert split_message("hello", []) == [Chunk("hello", [])]


def test_exactly_4096_units_is_one_chunk() -> None:
    assert texts(split_message("a" * 4096)) == ["a" * 4096]
    assert texts(split_message(EMOJI * 2048)) == [EMOJI * 2048]


def test_4097_units_is_two_chunks() -> None:
    assert texts(split_message("a" * 4097)) == ["a" * 4096, "a"]
    assert texts(split_message(EMOJI * 2048 + "a")) == [EMOJI * 2048, "a"]


def test_4097_units_with_emoji_on_the_boundary() -> None:
    # The emoji would occupy units 4096-4097: it moves whole to the next chunk.
    assert texts(split_message("a" * 4095 + EMOJI)) == ["a" * 4095, EMOJI]


def test_whitespace_only_input_gives_no_chunks() -> None:
    assert split_message("") == []
    assert split_message("  \n\n \t") == []


@pytest.mark.parametrize(("limit", "max_chunks"), [(14, 10), (4096, 0)])
def test_rejects_unusable_limits(limit: int, max_chunks: int) -> None:
    with pytest.raises(ValueError):
        split_message("abc", limit=limit, max_chunks=max_chunks)


# --- split_message: cut priority (limit 16 keeps the strings readable) ----------------------------


def test_double_newline_beats_later_newline_and_space() -> None:
    text = "ab\n\ncd\nef gh ij klmno"
    assert texts(split_message(text, limit=16)) == ["ab\n\n", "cd\n", "ef gh ij klmno"]


def test_newline_beats_later_space() -> None:
    assert texts(split_message("ab\ncd ef gh ij klm", limit=16)) == ["ab\n", "cd ef gh ij klm"]


def test_space_when_no_newline() -> None:
    assert texts(split_message("aaa bbb ccc ddd eee", limit=16)) == ["aaa bbb ccc ddd ", "eee"]


def test_hard_cut_when_no_separator() -> None:
    assert texts(split_message("a" * 20, limit=16)) == ["a" * 16, "a" * 4]


def test_separator_outside_window_is_not_used_and_leading_whitespace_is_kept() -> None:
    assert texts(split_message("a" * 16 + "\n\nb", limit=16)) == ["a" * 16, "\n\nb"]


def test_double_newline_straddling_window_end_falls_back_to_newline() -> None:
    assert texts(split_message("a" * 15 + "\n\nb", limit=16)) == ["a" * 15 + "\n", "\nb"]


def test_hard_cut_never_splits_an_emoji() -> None:
    assert texts(split_message("a" * 15 + EMOJI + "b", limit=16)) == ["a" * 15, EMOJI + "b"]
    assert texts(split_message("a" + EMOJI * 8, limit=16)) == ["a" + EMOJI * 7, EMOJI]
    assert texts(split_message(EMOJI * 9, limit=16)) == [EMOJI * 8, EMOJI]


def test_hard_cut_keeps_a_pair_stored_as_two_code_points_whole() -> None:
    text = "a" * 15 + "\ud83d\ude00" + "b"
    assert texts(split_message(text, limit=16)) == ["a" * 15, "\ud83d\ude00b"]


def test_whitespace_only_chunk_is_skipped() -> None:
    text = "a" * 16 + " " * 16 + "bbb"
    chunks = split_message(text, limit=16)
    assert texts(chunks) == ["a" * 16, "bbb"]
    # Reassembly: the input minus the skipped whitespace-only chunk.
    assert "".join(texts(chunks)) == text.replace(" " * 16, "")


def test_reassembly_without_skips_is_exact() -> None:
    text = "para one\n\npara two is long\nline three here " + EMOJI * 5 + " tail" * 4
    chunks = split_message(text, limit=16)
    assert len(chunks) > 3
    assert "".join(texts(chunks)) == text
    assert all(utf16_len(c.text) <= 16 for c in chunks)


# --- split_message: entities ------------------------------------------------------------------


def test_entities_rebased_and_clipped_across_a_cut() -> None:
    text = f"{EMOJI} hello\n\nworld {EMOJI} ok"  # 21 units; cut after "\n\n" at unit 10
    entities = [
        {"type": "bold", "offset": 3, "length": 5},  # "hello"
        {"type": "italic", "offset": 5, "length": 8},  # "llo\n\nwor", crosses the cut
        {"type": "text_link", "offset": 16, "length": 2, "url": "https://x.test/"},  # 2nd emoji
        {"type": "code", "offset": 30, "length": 5},  # beyond the text
        {"type": "underline", "offset": 3, "length": 0},  # zero length
        {"type": "blockquote", "offset": 0, "length": 21},  # everything
    ]
    before = copy.deepcopy(entities)
    chunks = split_message(text, entities, limit=16)
    assert chunks == [
        Chunk(
            f"{EMOJI} hello\n\n",
            [
                {"type": "bold", "offset": 3, "length": 5},
                {"type": "italic", "offset": 5, "length": 5},
                {"type": "blockquote", "offset": 0, "length": 10},
            ],
        ),
        Chunk(
            f"world {EMOJI} ok",
            [
                {"type": "italic", "offset": 0, "length": 3},
                {"type": "text_link", "offset": 6, "length": 2, "url": "https://x.test/"},
                {"type": "blockquote", "offset": 0, "length": 11},
            ],
        ),
    ]
    assert entities == before  # input not mutated


def test_entities_in_a_skipped_chunk_vanish_and_crossing_ones_are_clipped() -> None:
    text = "a" * 16 + " " * 16 + "bbb"
    entities = [
        {"type": "bold", "offset": 10, "length": 30},
        {"type": "italic", "offset": 18, "length": 4},  # only the skipped spaces
    ]
    chunks = split_message(text, entities, limit=16)
    assert chunks == [
        Chunk("a" * 16, [{"type": "bold", "offset": 10, "length": 6}]),
        Chunk("bbb", [{"type": "bold", "offset": 0, "length": 3}]),
    ]


def test_chunk_without_entities_gets_empty_list() -> None:
    chunks = split_message("a" * 20, [{"type": "bold", "offset": 0, "length": 2}], limit=16)
    assert chunks == [
        Chunk("a" * 16, [{"type": "bold", "offset": 0, "length": 2}]),
        Chunk("a" * 4, []),
    ]


def test_malformed_entities_are_dropped() -> None:
    entities = [
        "nope",
        {"type": "bold"},
        {"type": "bold", "offset": True, "length": 2},
        {"type": "bold", "offset": "0", "length": 2},
        {"type": "italic", "offset": 1, "length": 2},
    ]
    assert split_message("hello", entities) == [
        Chunk("hello", [{"type": "italic", "offset": 1, "length": 2}])
    ]


# --- split_message: truncation ----------------------------------------------------------------


def test_eleven_chunks_become_ten_with_marker() -> None:
    line = "x" * 4095 + "\n"
    chunks = split_message(line * 11)
    assert len(chunks) == 10
    assert texts(chunks[:9]) == [line] * 9
    assert chunks[9].text == "x" * (4096 - 14) + TRUNCATION_MARKER
    assert TRUNCATION_MARKER == "\n[… truncated]"
    assert all(utf16_len(c.text) <= 4096 for c in chunks)
    assert utf16_len(chunks[9].text) == 4096


def test_ten_chunks_are_not_truncated() -> None:
    line = "x" * 4095 + "\n"
    chunks = split_message(line * 10)
    assert texts(chunks) == [line] * 10


def test_trailing_whitespace_beyond_max_chunks_is_not_truncation() -> None:
    assert texts(split_message("a" * 16 + " " * 5, limit=16, max_chunks=1)) == ["a" * 16]


def test_truncation_clips_entities_and_drops_those_in_dropped_text() -> None:
    text = "aaaaaaaaa bbbbbbbbb ccccccccc ddddddddd eeeeeeeee"
    entities = [
        {"type": "bold", "offset": 10, "length": 13},  # "bbbbbbbbb ccc", crosses the cut
        {"type": "italic", "offset": 20, "length": 9},  # "ccccccccc", cut by the marker room
        {"type": "code", "offset": 30, "length": 9},  # "ddddddddd", shortened away
        {"type": "pre", "offset": 40, "length": 9},  # "eeeeeeeee", dropped chunk
    ]
    chunks = split_message(text, entities, limit=20, max_chunks=2)
    assert chunks == [
        Chunk("aaaaaaaaa bbbbbbbbb ", [{"type": "bold", "offset": 10, "length": 10}]),
        Chunk(
            "cccccc" + TRUNCATION_MARKER,
            [
                {"type": "bold", "offset": 0, "length": 3},
                {"type": "italic", "offset": 0, "length": 6},
            ],
        ),
    ]
    assert all(utf16_len(c.text) <= 20 for c in chunks)


def test_truncated_chunk_drops_trailing_whitespace_before_marker() -> None:
    chunks = split_message("aaaa\n\n" + "b" * 20, limit=20, max_chunks=1)
    assert texts(chunks) == ["aaaa" + TRUNCATION_MARKER]


def test_truncation_never_splits_an_emoji() -> None:
    text = "a" + EMOJI + "b" * 13 + " ccccc"  # first chunk is 16 units, marker room is 2
    assert texts(split_message(text, limit=16, max_chunks=1)) == ["a" + TRUNCATION_MARKER]


def test_chunk_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Chunk("a", None).text = "b"  # type: ignore[misc]


# --- randomized comparison with a unit-level reference ------------------------------------------


def _units(s: str) -> list[int]:
    data = s.encode("utf-16-le")
    return [int.from_bytes(data[i : i + 2], "little") for i in range(0, len(data), 2)]


def _decode(units: list[int]) -> str:
    return b"".join(u.to_bytes(2, "little") for u in units).decode("utf-16-le")


def _reference(text: str, entities: list[dict] | None, limit: int, max_chunks: int) -> list[Chunk]:
    """§8.3 written independently over a list of UTF-16 units instead of code points."""
    u = _units(text)
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(u):
        end = len(u) if len(u) - i <= limit else None
        if end is None:
            w = u[i : i + limit]
            for sep in ([10, 10], [10], [32]):
                hits = [k for k in range(len(w) - len(sep) + 1) if w[k : k + len(sep)] == sep]
                if hits:
                    end = i + hits[-1] + len(sep)
                    break
        if end is None:
            end = i + limit
            if 0xD800 <= u[end - 1] <= 0xDBFF:
                end -= 1
        if not _decode(u[i:end]).isspace():
            spans.append((i, end))
        i = end
    texts_: list[str] = [_decode(u[a:b]) for a, b in spans]
    truncated = len(spans) > max_chunks
    if truncated:
        spans, texts_ = spans[:max_chunks], texts_[:max_chunks]
        a, b = spans[-1]
        cut = min(b, a + limit - 14)
        if cut < b and 0xD800 <= u[cut - 1] <= 0xDBFF:
            cut -= 1
        kept = _decode(u[a:cut]).rstrip()
        spans[-1] = (a, a + len(_units(kept)))
        texts_[-1] = kept + TRUNCATION_MARKER
    out = []
    for (a, b), t in zip(spans, texts_, strict=True):
        ents = None
        if entities is not None:
            ents = []
            for e in entities:
                s, f = max(e["offset"], a), min(e["offset"] + e["length"], b)
                if f > s:
                    ents.append({**e, "offset": s - a, "length": f - s})
        out.append(Chunk(t, ents))
    return out


def test_random_texts_match_reference_and_invariants() -> None:
    rng = random.Random(8_3)
    alphabet = ["a"] * 6 + ["b", "é", EMOJI, EMOJI, "🎉"] + [" "] * 4 + ["\n"] * 3 + ["\t"]
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 160)))
        n16 = utf16_len(text)
        limit = rng.randint(15, 32)
        max_chunks = rng.randint(1, 8)
        entities = None
        if rng.random() < 0.8:
            entities = [
                {
                    "type": "bold",
                    "id": k,
                    "offset": rng.randint(0, n16 + 2),
                    "length": rng.randint(0, 40),
                }
                for k in range(rng.randint(0, 5))
            ]
        chunks = split_message(text, entities, limit=limit, max_chunks=max_chunks)
        ctx = (text, limit, max_chunks, entities)

        assert chunks == _reference(text, entities, limit, max_chunks), ctx
        assert len(chunks) <= max_chunks, ctx
        for c in chunks:
            assert 0 < utf16_len(c.text) <= limit, ctx
            assert not c.text.isspace(), ctx
            c.text.encode("utf-16-le")  # strict: raises on a lone surrogate
            assert (c.entities is None) == (entities is None), ctx
            for e in c.entities or []:
                assert e["length"] > 0 and e["offset"] + e["length"] <= utf16_len(c.text), ctx

        joined = "".join(texts(chunks))
        if not (chunks and chunks[-1].text.endswith(TRUNCATION_MARKER)):
            # Only whitespace may be lost, and only as whole skipped chunks.
            assert "".join(joined.split()) == "".join(text.split()), ctx
            if utf16_len(joined) == n16 and entities is not None:
                assert joined == text, ctx
                for e in entities:
                    covered = sum(
                        x["length"] for c in chunks for x in c.entities if x["id"] == e["id"]
                    )
                    want = max(0, min(e["offset"] + e["length"], n16) - e["offset"])
                    assert covered == want, ctx
