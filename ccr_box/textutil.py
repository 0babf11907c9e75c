"""UTF-16 aware text helpers: Telegram message splitting (§8.3) and length-safe cuts (§6.6).

Telegram measures text and entity offsets in UTF-16 code units, and so does every length in the
contract, while Python indexes a ``str`` by code point: a non-BMP character (an emoji, say) is one
code point but two units. Everything here counts units and only ever cuts between code points, so
a surrogate pair is never split.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, TypeGuard

from ccr_box.limits import TELEGRAM_CHUNK, TELEGRAM_MAX_CHUNKS

TRUNCATION_MARKER = "\n[… truncated]"
ELLIPSIS = "…"
EMPTY_PREVIEW = "(empty)"

# Cut points in order of preference (§8.3); each cut goes *after* the separator.
_SEPARATORS = ("\n\n", "\n", " ")


def utf16_len(s: str) -> int:
    """Length of ``s`` in UTF-16 code units.

    Encoding runs in C and measured 20-80x faster than counting non-BMP characters in Python or
    with a regex; "surrogatepass" keeps it from raising on lone surrogates (``json.loads`` can
    produce them), each of which counts as one unit.
    """
    if s.isascii():
        return len(s)
    return len(s.encode("utf-16-le", "surrogatepass")) // 2


def _units(ch: str) -> int:
    return 2 if ord(ch) > 0xFFFF else 1


def _fit(text: str, start: int, budget: int) -> int:
    """Largest code-point index ``end`` such that ``text[start:end]`` is at most ``budget`` units."""
    end = min(len(text), start + budget)
    units = utf16_len(text[start:end])
    while units > budget:
        end -= 1
        units -= _units(text[end])
    # A str can also carry a pair as two separate surrogate code points (decoded with
    # "surrogatepass"); keep such a pair whole as well.
    if (
        start < end < len(text)
        and "\ud800" <= text[end - 1] <= "\udbff"
        and "\udc00" <= text[end] <= "\udfff"
    ):
        end -= 1
    return end


def truncate_utf16(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-16 units, never inside a surrogate pair."""
    if limit < 0:
        raise ValueError("limit must be >= 0")
    return text[: _fit(text, 0, limit)]


def cut_preview(text: str, limit: int = 100) -> str:
    """Dead-letter preview (§6.6): ``text`` cut to ``limit`` units plus "…" when cut.

    The ellipsis comes on top of ``limit``; an empty text reads ``(empty)``.
    """
    if not text:
        return EMPTY_PREVIEW
    cut = truncate_utf16(text, limit)
    return text if len(cut) == len(text) else cut + ELLIPSIS


@dataclass(frozen=True)
class Chunk:
    """One Telegram message of a split notification; ``entities`` are relative to ``text``."""

    text: str
    entities: list[dict[str, Any]] | None


def _cut(text: str, start: int, limit: int) -> int:
    """End (code-point index) of the chunk starting at ``start``, per the §8.3 cut priority."""
    end = _fit(text, start, limit)
    if end == len(text):
        return end
    for sep in _SEPARATORS:
        pos = text.rfind(sep, start, end)  # the separator must lie wholly inside the window
        if pos >= 0:
            return pos + len(sep)
    return end  # hard cut; _fit already kept surrogate pairs whole


def _pieces(text: str, limit: int) -> Iterator[tuple[str, int]]:
    """Yield ``(chunk text, UTF-16 offset of its start)`` for every non-whitespace-only chunk.

    Lazy, so a huge text is only scanned as far as the chunks actually used.
    """
    start = start16 = 0
    while start < len(text):
        end = _cut(text, start, limit)
        piece = text[start:end]
        if not piece.isspace():
            yield piece, start16
        start, start16 = end, start16 + utf16_len(piece)


def _rebase(entities: list[dict[str, Any]], lo: int, hi: int) -> list[dict[str, Any]]:
    """Entities clipped to the unit range ``[lo, hi)`` with offsets made relative to ``lo``."""
    out: list[dict[str, Any]] = []
    for ent in entities:
        if not isinstance(ent, dict):
            continue
        offset, length = ent.get("offset"), ent.get("length")
        # Without integer offset/length an entity cannot be placed; drop it rather than guess.
        if not _is_int(offset) or not _is_int(length):
            continue
        s, e = max(offset, lo), min(offset + length, hi)
        if e > s:
            out.append({**ent, "offset": s - lo, "length": e - s})
    return out


def split_message(
    text: str,
    entities: list[dict[str, Any]] | None = None,
    *,
    limit: int = TELEGRAM_CHUNK,
    max_chunks: int = TELEGRAM_MAX_CHUNKS,
) -> list[Chunk]:
    """Split a notification into Telegram-sized chunks (contract §8.3).

    - Each chunk is at most ``limit`` UTF-16 units. A cut goes after the last ``"\\n\\n"`` in the
      window, else the last ``"\\n"``, else the last space (U+0020), else it is a hard cut; the
      separator stays at the end of the earlier chunk. Chunk text is kept verbatim (leading
      whitespace is not stripped), so ``"".join`` of the chunks gives back the input minus the
      skipped whitespace-only chunks, and entity offsets are plain subtractions.
    - Whitespace-only chunks are not emitted; whitespace-only (or empty) input gives ``[]``.
    - Beyond ``max_chunks`` chunks the rest is dropped and the last chunk is shortened, stripped of
      trailing whitespace and ended with ``"\\n[… truncated]"``, still within ``limit``.
    - ``entities`` (Telegram MessageEntity dicts, UTF-16 ``offset``/``length``) are clipped to
      each chunk and re-based to it; other keys are copied. Each chunk's ``entities`` is ``None``
      when ``entities`` is ``None``, else a possibly empty list. Items without integer
      ``offset``/``length`` are dropped.
    """
    marker_units = utf16_len(TRUNCATION_MARKER)
    if limit <= marker_units:
        raise ValueError(f"limit must be > {marker_units} (room for the truncation marker)")
    if max_chunks < 1:
        raise ValueError("max_chunks must be >= 1")

    # One extra piece tells whether anything worth sending would be dropped.
    pieces = list(islice(_pieces(text, limit), max_chunks + 1))
    truncated = len(pieces) > max_chunks
    if truncated:
        del pieces[max_chunks:]
        last, last16 = pieces[-1]
        # rstrip: the marker starts its own line, so a trailing blank line would only add noise.
        pieces[-1] = (truncate_utf16(last, limit - marker_units).rstrip(), last16)

    chunks: list[Chunk] = []
    for i, (piece, start16) in enumerate(pieces):
        ents = None
        if entities is not None:
            # Clip to the kept text only, so nothing lands on the marker.
            ents = _rebase(entities, start16, start16 + utf16_len(piece))
        if truncated and i == len(pieces) - 1:
            piece += TRUNCATION_MARKER
        chunks.append(Chunk(piece, ents))
    return chunks


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
