"""Split an item's text into chunks a Fish Speech server can speak in one generation.

Current servers do not split text themselves: a long text is one generation, cut at
``max_new_tokens`` (about 47 s of audio), so the tail is silently lost. fishflow chunks on the
client, the way Fish 1.4/1.5 did on the server: sentences first, then clause punctuation, then
whitespace, then a hard cut, packed up to a budget in UTF-8 bytes (a CJK character is 3 bytes).

Boundaries depend only on the paragraph, never on where it sits in the item, so identical
paragraphs give identical chunks and their audio can be shared (see ``chunk_key``).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass

import sentencex

from fishflow.text import PARAGRAPH_SEPARATOR, is_cjk

# Clause punctuation in Latin and CJK scripts; the split falls after the mark.
# A Latin comma counts only before a space, so that 12,50 stays whole.
_CLAUSE_END = re.compile(r"[,;:)\]](?=\s)|[，、；：）】」』—–]")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    text: str
    start: int  # character offsets in the item's normalised text;
    end: int  # text is normalized[start:end] with whitespace collapsed
    # Set by readers that know the text's structure (Markdown): the title of the section this
    # chunk opens (it becomes a chapter), and the pause after it (None: AudioSettings.pause_ms).
    heading: str | None = None
    pause_after_ms: int | None = None

    @property
    def utf8_bytes(self) -> int:
        return len(self.text.encode())


def _nbytes(text: str) -> int:
    return len(text.encode())


# A CJK quotation that ends in 。！？ does not end the sentence when speech goes on after it:
# 「本当ですか？」と彼は言った。 / “这是引用！”他说。 are one sentence each.
_CLOSING = tuple('」』）】”’"')
_OPENING = tuple('「『（【“‘"')


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


def _continues(paragraph: str, previous: tuple[int, int], start: int) -> bool:
    before = paragraph[previous[0] : previous[1]]
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


def _pack(text: str, pieces: list[tuple[int, int]], budget: int) -> list[tuple[int, int]]:
    """Greedily join consecutive pieces while the stripped result stays within budget."""
    packed: list[tuple[int, int]] = []
    for a, b in pieces:
        if packed and _nbytes(text[packed[-1][0] : b].strip()) <= budget:
            packed[-1] = (packed[-1][0], b)
        else:
            packed.append((a, b))
    return packed


def _merge_small(
    text: str, spans: list[tuple[int, int]], budget: int, minimum: int
) -> list[tuple[int, int]]:
    """Fold fragments too short to speak well into a neighbour when the budget allows."""
    out: list[tuple[int, int]] = []
    for a, b in spans:
        small = _nbytes(text[a:b].strip()) < minimum
        if (
            out
            and (small or _nbytes(text[out[-1][0] : out[-1][1]].strip()) < minimum)
            and _nbytes(text[out[-1][0] : b].strip()) <= budget
        ):
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def chunk_paragraph(
    paragraph: str, language: str, max_bytes: int, min_bytes: int = 0
) -> list[tuple[int, int]]:
    """Spans (start, end) of the chunks of one normalised paragraph, whitespace trimmed."""
    pieces = [
        p for a, b in _sentence_spans(paragraph, language) for p in _fit(paragraph, a, b, max_bytes)
    ]
    spans = _merge_small(paragraph, _pack(paragraph, pieces, max_bytes), max_bytes, min_bytes)
    trimmed = []
    for a, b in spans:
        segment = paragraph[a:b]
        lead = len(segment) - len(segment.lstrip())
        trail = len(segment) - len(segment.rstrip())
        if b - trail > a + lead:
            trimmed.append((a + lead, b - trail))
    return trimmed


def chunk_text(
    normalized: str, language: str, max_bytes: int = 200, min_bytes: int = 24
) -> list[Chunk]:
    """Chunks of an item's normalised text (see ``fishflow.text.normalize``), in order.

    Every chunk is within ``max_bytes`` unless it is a single character that is larger; the
    chunks cover every non-space character of the text once, and only whitespace lies between
    them. A paragraph too short to speak well (a heading) joins the next paragraph's first chunk.
    """
    spans: list[tuple[int, int]] = []
    carry: tuple[int, int] | None = None  # a short paragraph waiting for the next one
    offset = 0
    for paragraph in normalized.split(PARAGRAPH_SEPARATOR):
        para = [
            (offset + a, offset + b)
            for a, b in chunk_paragraph(paragraph, language, max_bytes, min_bytes)
        ]
        offset += len(paragraph) + len(PARAGRAPH_SEPARATOR)
        if not para:
            continue
        if carry is not None:
            joined = (carry[0], para[0][1])
            if _nbytes(_speakable(normalized[joined[0] : joined[1]])) <= max_bytes:
                para[0] = joined
            else:
                spans.append(carry)
            carry = None
        if len(para) == 1 and _nbytes(normalized[para[0][0] : para[0][1]]) < min_bytes:
            carry = para[0]
            continue
        spans.extend(para)
    if carry is not None:
        spans.append(carry)
    return [Chunk(i, _speakable(normalized[a:b]), a, b) for i, (a, b) in enumerate(spans)]


def _speakable(text: str) -> str:
    """Whitespace collapsed to single spaces: newlines and runs make Fish produce noise."""
    return " ".join(text.split())


def chunk_key(text: str, voice_fingerprint: str) -> str:
    """Content key of one chunk's audio: same text, voice and synthesis fields, same audio."""
    return hashlib.sha256(f"{voice_fingerprint}\0{text}".encode()).hexdigest()[:32]
