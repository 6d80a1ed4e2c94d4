"""Split an item's speech into chunks a Fish Speech server can speak in one generation.

Current servers do not split text themselves: a long text is one generation, cut at
``max_new_tokens`` (about 47 s of audio), so the tail is silently lost. fishflow chunks on the
client, the way Fish 1.4/1.5 did on the server, in UTF-8 bytes (a CJK character is 3 bytes):

- a chunk ends at a sentence end; a sentence is cut only when it alone exceeds the budget, and
  then at a clause boundary (, ; : — 、，；), then at a space, then anywhere;
- sentences of a paragraph are packed into as few chunks as the budget allows, evenly sized;
- a heading is always a chunk of its own (the join before and after it is a section break);
  items of one list, or rows of one table, pack together like sentences; a fragment too short to
  speak well (a code cue, a lead-in of a few words) joins its neighbour;
- each chunk knows the boundary after it (``Chunk.boundary``), which sets the pause there.

Boundaries inside a block depend only on that block, never on where it sits in the item, so
identical paragraphs give identical chunks and their audio can be shared (see ``chunk_key``).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import sentencex

from fishflow.spoken import written_offset
from fishflow.text import PARAGRAPH_SEPARATOR, Block, is_cjk

# What the join after a chunk is, from the shortest pause to the longest. "clause": the chunk
# ends inside a sentence (a sentence longer than the budget); "end": the item's last chunk.
Boundary = Literal["clause", "sentence", "paragraph", "section", "end"]

# Clause punctuation in Latin and CJK scripts; the split falls after the mark.
# A Latin comma counts only before a space, so that 12,50 stays whole.
_CLAUSE_END = re.compile(r"[,;:)\]](?=\s)|[，、；：）】」』—–]")
_SPACE = re.compile(r"\s+")

# Sentence-final punctuation, optionally followed by closing quotes or brackets.
_SENTENCE_END = re.compile(r"[.!?。！？…‼⁇⁈⁉؟।॥][\"'”’」』）)\]】»]*$")

# The most text one chunk holds for prosody's sake, whatever the token cap allows: ~30 s of
# speech, two to four sentences. Longer generations join less often but risk more drift, and a
# failed one costs more to redo.
PROSODY_BYTES = 400
# Speech needs ~21.5 tokens per second; slow voices speak ~10 UTF-8 bytes a second (about 10
# Latin characters, or 3.5 CJK characters at 3 bytes each). A chunk is sized to fill at most
# 80% of the token cap at that rate, so that a slow voice still ends before the cap.
_TOKENS_PER_SECOND = 21.5
_SLOW_BYTES_PER_SECOND = 10.0
_CAP_SHARE = 0.8


def chunk_budget(
    *,
    max_new_tokens: int,
    chunk_bytes: int | None = None,
    max_chars: int | None = None,
    text: str = "",
) -> int:
    """The chunk budget in UTF-8 bytes: ``chunk_bytes`` when given, else what fits the token
    cap (``max_new_tokens``) with margin, at most ``PROSODY_BYTES``. The one place that
    decides it.

    ``max_chars``: a server's --max-text-length (characters), for ``text``. Bytes per
    character are at least the text's narrowest character's, so within ``max_chars`` times
    that many bytes a piece of ``text`` has at most ``max_chars`` characters (exactly so for
    text in one script)."""
    if chunk_bytes is not None:
        budget = chunk_bytes
    else:
        fits = int(_CAP_SHARE * max_new_tokens / _TOKENS_PER_SECOND * _SLOW_BYTES_PER_SECOND)
        budget = max(20, min(PROSODY_BYTES, fits))
    if max_chars is not None:
        narrowest = min((_nbytes(ch) for ch in text), default=1)
        budget = min(budget, max_chars * narrowest)
    return budget


DEFAULT_CHUNK_BYTES = chunk_budget(max_new_tokens=1024)  # 381


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    text: str
    start: int  # character offsets in the item's normalised text;
    end: int  # text is normalized[start:end] with whitespace collapsed
    boundary: Boundary = "end"  # the join after this chunk (its pause)
    heading_level: int = 0  # >0: the chunk starts with a heading of this level (a chapter)
    # What the author wrote for this chunk, where it differs from what is said (inline code,
    # numbers, lexicon terms): captions and chapter titles show it.
    written: str | None = None
    # Each span said differently: (as written, as said, rule), for preview and plan.
    said: tuple[tuple[str, str, str], ...] = ()

    @property
    def shown(self) -> str:
        """The chunk as a reader sees it: the written form, or the text."""
        return self.text if self.written is None else self.written

    @property
    def utf8_bytes(self) -> int:
        return len(self.text.encode())

    @property
    def ends_mid_sentence(self) -> bool:
        """The chunk stops inside a sentence: cut, or ends without sentence punctuation."""
        return self.boundary == "clause" or not _SENTENCE_END.search(self.text)


def _nbytes(text: str) -> int:
    return len(text.encode())


# A CJK quotation that ends in 。！？ does not end the sentence when speech goes on after it:
# 「本当ですか？」と彼は言った。 / “这是引用！”他说。 are one sentence each.
_CLOSING = tuple('」』）】”’"')
_OPENING = tuple('「『（【“‘"')
# sentencex ends a sentence after a list enumerator ("1. ", "b) "): it belongs to what follows.
_ENUMERATOR = re.compile(r"\s*(?:\d{1,3}|[A-Za-z]|[ivxlcIVXLC]{1,5})[.)]\s*")


def _sentence_spans(paragraph: str, language: str) -> list[tuple[int, int]]:
    segments = list(sentencex.segment(language, paragraph))
    if "".join(segments) != paragraph:  # sentencex keeps every character; trust, but check
        return [(0, len(paragraph))]
    spans: list[tuple[int, int]] = []
    pos = 0
    for segment in segments:
        end = pos + len(segment)
        if spans and paragraph[pos:end].strip() and _continues(paragraph, spans[-1], pos):
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((pos, end))
        pos = end
    return spans


def sentences(text: str, language: str) -> list[str]:
    """A text's sentences as the chunker sees them (an enumerator such as "1." stays with
    what follows), stripped; empty ones dropped."""
    return [s for a, b in _sentence_spans(text, language) if (s := text[a:b].strip())]


def _continues(paragraph: str, previous: tuple[int, int], start: int) -> bool:
    before = paragraph[previous[0] : previous[1]]
    if _ENUMERATOR.fullmatch(before):
        return True
    after = paragraph[start:].lstrip()
    return (
        before.endswith(_CLOSING)
        and before[-1:] == before.rstrip()[-1:]  # no space: the quote runs into what follows
        and bool(after)
        and not after.startswith(_OPENING)
        and (is_cjk(before.rstrip()[-2:-1] or " ") or is_cjk(after[0]))
    )


def _split_by(pattern: re.Pattern[str], text: str, start: int, end: int) -> list[tuple[int, int]]:
    cuts = [m.end() for m in pattern.finditer(text, start, end) if start < m.end() < end]
    bounds = [start, *cuts, end]
    return [(a, b) for a, b in itertools.pairwise(bounds) if a < b]


def _hard_cut(text: str, start: int, end: int, budget: int) -> list[tuple[int, int]]:
    pieces: list[tuple[int, int]] = []
    a = start
    while a < end:
        size, b = 0, a
        while b < end and size + _nbytes(text[b]) <= budget:
            size += _nbytes(text[b])
            b += 1
        b = max(b, a + 1)  # one character over budget still has to go somewhere
        pieces.append((a, b))
        a = b
    return pieces


def _fit(text: str, start: int, end: int, budget: int) -> list[tuple[int, int]]:
    """Break one span into pieces within budget: clauses, then words, then a hard cut."""
    if _nbytes(text[start:end].strip()) <= budget:
        return [(start, end)]
    for pattern in (_CLAUSE_END, _SPACE):
        parts = _split_by(pattern, text, start, end)
        if len(parts) > 1:
            return [piece for a, b in parts for piece in _fit(text, a, b, budget)]
    return _hard_cut(text, start, end, budget)


# A piece of a paragraph: (start, end, ends_sentence).
_Piece = tuple[int, int, bool]


def _greedy(text: str, pieces: list[_Piece], limit: int) -> list[_Piece]:
    packed: list[_Piece] = []
    for a, b, whole in pieces:
        if packed and _nbytes(text[packed[-1][0] : b].strip()) <= limit:
            packed[-1] = (packed[-1][0], b, whole)
        else:
            packed.append((a, b, whole))
    return packed


def _pack(text: str, pieces: list[_Piece], budget: int) -> list[_Piece]:
    """Join consecutive pieces into as few chunks as the budget allows, as evenly sized as
    possible (greedy filling leaves a short last chunk, which sounds clipped)."""
    packed = _greedy(text, pieces, budget)
    if len(packed) < 2:
        return packed
    # The smallest limit that still gives as few chunks: greedy filling is monotone in it.
    low = math.ceil(_nbytes(text[pieces[0][0] : pieces[-1][1]].strip()) / len(packed))
    high = budget
    while low < high:
        middle = (low + high) // 2
        if len(_greedy(text, pieces, middle)) <= len(packed):
            high = middle
        else:
            low = middle + 1
    return _greedy(text, pieces, high)


def _merge_small(text: str, spans: list[_Piece], budget: int, minimum: int) -> list[_Piece]:
    """Fold fragments too short to speak well into a neighbour when the budget allows."""
    out: list[_Piece] = []
    for a, b, whole in spans:
        small = _nbytes(text[a:b].strip()) < minimum
        if (
            out
            and (small or _nbytes(text[out[-1][0] : out[-1][1]].strip()) < minimum)
            and _nbytes(text[out[-1][0] : b].strip()) <= budget
        ):
            out[-1] = (out[-1][0], b, whole)
        else:
            out.append((a, b, whole))
    return out


def _paragraph_pieces(
    paragraph: str, language: str, max_bytes: int, min_bytes: int
) -> list[_Piece]:
    """Chunks of one normalised paragraph, whitespace trimmed, each marked with whether it
    ends a sentence (the paragraph's end counts as one)."""
    pieces: list[_Piece] = []
    for a, b in _sentence_spans(paragraph, language):
        parts = _fit(paragraph, a, b, max_bytes)
        pieces.extend((pa, pb, pb == b) for pa, pb in parts)
    spans = _merge_small(paragraph, _pack(paragraph, pieces, max_bytes), max_bytes, min_bytes)
    trimmed: list[_Piece] = []
    for a, b, whole in spans:
        segment = paragraph[a:b]
        lead = len(segment) - len(segment.lstrip())
        trail = len(segment) - len(segment.rstrip())
        if b - trail > a + lead:
            trimmed.append((a + lead, b - trail, whole))
    return trimmed


def chunk_paragraph(
    paragraph: str, language: str, max_bytes: int, min_bytes: int = 0
) -> list[tuple[int, int]]:
    """Spans (start, end) of the chunks of one normalised paragraph, whitespace trimmed."""
    return [(a, b) for a, b, _ in _paragraph_pieces(paragraph, language, max_bytes, min_bytes)]


def split_at_clause(text: str, max_bytes: int, *, language: str = "en") -> list[str]:
    """Split one text into evenly sized pieces within ``max_bytes``: at sentence ends first,
    then clause boundaries (, ; : — 、，；), then spaces, then anywhere. For a chunk that has
    to be re-sent in parts."""
    paragraph = " ".join(text.split())
    return [paragraph[a:b] for a, b in chunk_paragraph(paragraph, language, max_bytes)]


_LISTS = ("list_item", "table_row")


@dataclass(slots=True)
class _Open:
    """A chunk being assembled: offsets in the item's text and what it contains."""

    start: int
    end: int
    first: int  # index of the block it starts in
    last: int  # index of the block it ends in
    ends_sentence: bool
    ends_block: bool
    starts_block: bool


def _joins(blocks: Sequence[Block], chunk: _Open, nxt: int, text: str, min_bytes: int) -> bool:
    """May the next block's first chunk go into ``chunk`` (budget aside)?"""
    before, after = blocks[chunk.last], blocks[nxt]
    if not chunk.ends_block or "heading" in (before.kind, after.kind):
        return False  # a heading stands alone, with a section pause on either side
    if before.kind == after.kind and after.kind in _LISTS:
        return True  # items of one list, rows of one table: read on like sentences
    if after.kind == "code" and before.kind != "code":
        return True  # "Run this command: Code example." is one thought
    return _nbytes(text[chunk.start : chunk.end]) < min_bytes  # a lead-in joins what follows


def _boundary(blocks: Sequence[Block], chunk: _Open, nxt: _Open | None) -> Boundary:
    if nxt is None:
        return "end"
    if blocks[chunk.last].kind == "heading" or (
        nxt.starts_block and blocks[nxt.first].kind == "heading"
    ):
        return "section"
    if chunk.ends_block:
        same_list = blocks[chunk.last].kind in _LISTS and (
            blocks[nxt.first].kind == blocks[chunk.last].kind
        )
        return "sentence" if same_list else "paragraph"
    return "sentence" if chunk.ends_sentence else "clause"


def chunk_blocks(
    blocks: Sequence[Block], language: str, max_bytes: int, min_bytes: int = 24
) -> list[Chunk]:
    """Chunks of an item's blocks, in order, with offsets into ``blocks_text(blocks)``.

    Every chunk is within ``max_bytes`` unless it is a single character that is larger; the
    chunks cover every non-space character of the text once, and only whitespace lies between
    them.
    """
    text = PARAGRAPH_SEPARATOR.join(b.text for b in blocks)
    chunks: list[_Open] = []
    offset = 0
    for i, block in enumerate(blocks):
        pieces = _paragraph_pieces(block.text, language, max_bytes, min_bytes)
        for j, (a, b, whole) in enumerate(pieces):
            start, end = offset + a, offset + b
            last = j == len(pieces) - 1
            if (
                j == 0
                and chunks
                and _joins(blocks, chunks[-1], i, text, min_bytes)
                and _nbytes(_speakable(text[chunks[-1].start : end])) <= max_bytes
            ):
                chunks[-1].end, chunks[-1].last = end, i
                chunks[-1].ends_sentence, chunks[-1].ends_block = whole, last
            else:
                chunks.append(_Open(start, end, i, i, whole, last, j == 0))
        offset += len(block.text) + len(PARAGRAPH_SEPARATOR)
    shown = _WrittenText(blocks) if any(b.changes for b in blocks) else None
    out = []
    for k, c in enumerate(chunks):
        first = blocks[c.first]
        spoken = _speakable(text[c.start : c.end])
        written = _speakable(shown.between(c.start, c.end)) if shown else spoken
        out.append(
            Chunk(
                k,
                spoken,
                c.start,
                c.end,
                _boundary(blocks, c, chunks[k + 1] if k + 1 < len(chunks) else None),
                first.level if first.kind == "heading" and c.starts_block else 0,
                written=None if written == spoken else written,
                said=shown.said(c.start, c.end) if shown else (),
            )
        )
    return out


class _WrittenText:
    """Maps offsets in the blocks' spoken text to what was written (``fishflow.spoken``)."""

    def __init__(self, blocks: Sequence[Block]) -> None:
        self.blocks = blocks
        self.spoken_starts: list[int] = []
        written: list[str] = []
        self.written_starts: list[int] = []
        at_spoken = at_written = 0
        for block in blocks:
            self.spoken_starts.append(at_spoken)
            self.written_starts.append(at_written)
            shown = block.text if block.written is None else block.written
            written.append(shown)
            at_spoken += len(block.text) + len(PARAGRAPH_SEPARATOR)
            at_written += len(shown) + len(PARAGRAPH_SEPARATOR)
        self.text = PARAGRAPH_SEPARATOR.join(written)

    def _offset(self, spoken: int, *, end: bool) -> int:
        i = max(0, bisect.bisect_right(self.spoken_starts, spoken) - 1)
        local = spoken - self.spoken_starts[i]
        block = self.blocks[i]
        if local > len(block.text):  # in the separator after the block
            return (
                self.written_starts[i]
                + len(block.written or block.text)
                + (local - len(block.text))
            )
        return self.written_starts[i] + written_offset(block, local, end=end)

    def said(self, start: int, end: int) -> tuple[tuple[str, str, str], ...]:
        """The changes that start within [start, end) of the spoken text."""
        out = []
        for i, block in enumerate(self.blocks):
            base = self.spoken_starts[i]
            if base >= end:
                break
            if base + len(block.text) < start:
                continue
            written = block.text if block.written is None else block.written
            for c in block.changes:
                if c.rule == "tidy" or not start <= base + c.spoken_start < end:
                    continue
                was = written[c.written_start : c.written_end].strip()
                said = block.text[c.spoken_start : c.spoken_end].strip()
                if was != said:
                    out.append((was, said, c.rule))
        return tuple(out)

    def between(self, start: int, end: int) -> str:
        return self.text[self._offset(start, end=False) : self._offset(end, end=True)]


def chunk_text(
    normalized: str, language: str, max_bytes: int = DEFAULT_CHUNK_BYTES, min_bytes: int = 24
) -> list[Chunk]:
    """Chunks of plain normalised text (see ``fishflow.text.normalize``): every paragraph a
    block. A paragraph too short to speak well joins the next paragraph's first chunk."""
    blocks = [Block(p) for p in normalized.split(PARAGRAPH_SEPARATOR)] if normalized else []
    return chunk_blocks(blocks, language, max_bytes, min_bytes)


def mid_sentence_share(chunks: Sequence[Chunk]) -> float:
    """The share of chunks (requests) that end inside a sentence; 0.0 for none."""
    return sum(c.ends_mid_sentence for c in chunks) / len(chunks) if chunks else 0.0


def _speakable(text: str) -> str:
    """Whitespace collapsed to single spaces: newlines and runs make Fish produce noise."""
    return " ".join(text.split())


def chunk_key(text: str, voice_fingerprint: str) -> str:
    """Content key of one chunk's audio: same text, voice and synthesis fields, same audio."""
    return hashlib.sha256(f"{voice_fingerprint}\0{text}".encode()).hexdigest()[:32]


# -- chunks that fit the server ------------------------------------------------------------------

_SENTENCE_CUT = re.compile(r"[.!?…](?=\s)|[。！？]")


def split_in_two(text: str) -> tuple[str, str] | None:
    """Split a chunk's text in two near its middle, at the most natural boundary there:
    a sentence end, else a clause mark, else a space, else between two characters.

    For a chunk the server could not take whole (cut at the token cap, over its text limit).
    None when the text is a single character."""
    if len(text.strip()) < 2:
        return None
    n = len(text)
    middle = n / 2
    for pattern in (_SENTENCE_CUT, _CLAUSE_END, _SPACE):
        cuts = [m.end() for m in pattern.finditer(text) if 0 < m.end() < n]
        balanced = [c for c in cuts if n / 4 <= c <= 3 * n / 4]
        if balanced:
            cut = min(balanced, key=lambda c: abs(c - middle))
            break
    else:
        cuts = [m.end() for m in _SPACE.finditer(text) if 0 < m.end() < n]
        cut = min(cuts, key=lambda c: abs(c - middle)) if cuts else int(middle)
    head, tail = text[:cut].strip(), text[cut:].strip()
    if not head or not tail:
        return None
    return head, tail
