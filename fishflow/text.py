"""Text as the model should hear it: normalised whitespace, no control characters, no emoji.

An item's speech is a sequence of blocks (headings, paragraphs, list items, table rows, code
cues); its normalised text is their texts joined by a blank line. Plain text is all paragraphs;
``fishflow.markdown`` makes the other kinds. The chunker reads the kinds to end chunks at
headings and to choose the pause after each chunk.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import regex

# Runs of whitespace, tabs and newlines make Fish produce noise; blank lines mark paragraphs,
# which the chunker keeps apart so that identical paragraphs give identical chunks.
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_WHITESPACE = re.compile(r"\s+")
PARAGRAPH_SEPARATOR = "\n\n"


def _drop_control(text: str) -> str:
    return "".join(
        ch if ch in "\n\t" or unicodedata.category(ch)[0] != "C" or ch == "\u200d" else " "
        for ch in text
    )


# Emoji and pictographs: a TTS model reads them as noise or as their name ("party popper").
# Unicode properties rather than an emoji list, so that emoji newer than this code go too. A
# sequence goes whole (flags, skin tones, ZWJ families, keycaps); a joiner elsewhere (Indic
# scripts use it) stays.
_EMOJI = regex.compile(
    r"(?:\p{Extended_Pictographic}|\p{Regional_Indicator})"
    r"(?:[\ufe0e\ufe0f\u20e3\p{Emoji_Modifier}\U000e0020-\U000e007f]"
    r"|\u200d(?:\p{Extended_Pictographic}|\p{Regional_Indicator}))*"
    r"|[\ufe0f\u20e3\p{Emoji_Modifier}]"
)


def drop_emoji(text: str) -> str:
    """Text without emoji or pictographs (a keycap "1️⃣" keeps its digit)."""
    return text if text.isascii() else _EMOJI.sub("", text)


def paragraphs(text: str) -> list[str]:
    """Split text into paragraphs with whitespace collapsed, control characters and emoji
    removed."""
    text = unicodedata.normalize("NFC", drop_emoji(_drop_control(text.replace("\r\n", "\n"))))
    parts = (_WHITESPACE.sub(" ", p).strip() for p in _PARAGRAPH_BREAK.split(text))
    return [p for p in parts if p]


def normalize(text: str) -> str:
    """The text fishflow speaks and hashes: paragraphs joined by one blank line."""
    return PARAGRAPH_SEPARATOR.join(paragraphs(text))


BlockKind = Literal["heading", "paragraph", "list_item", "table_row", "code"]


@dataclass(frozen=True, slots=True)
class Mark:
    """A span of written text that is not prose: inline code, or a ``<sup>``/``<sub>``."""

    start: int
    end: int
    kind: Literal["code", "sup", "sub"] = "code"


@dataclass(frozen=True, slots=True)
class Change:
    """A span said differently from how it is written (``fishflow.spoken``): offsets into the
    written and the spoken text of one block, and the rule that changed it."""

    written_start: int
    written_end: int
    spoken_start: int
    spoken_end: int
    rule: str


@dataclass(frozen=True, slots=True)
class Block:
    """One unit of an item's speech: normalised text (one line) and what it is.

    As written (``fishflow.markdown``, ``plain_blocks``), ``marks`` locate inline code in
    ``text``; as spoken (``fishflow.spoken``), ``text`` is what the model says, ``written``
    what the author wrote (None when the same) and ``changes`` where they differ."""

    text: str
    kind: BlockKind = "paragraph"
    level: int = 0  # heading level, 1-6; 0 for other kinds
    marks: tuple[Mark, ...] = ()
    written: str | None = None
    changes: tuple[Change, ...] = ()


def plain_blocks(text: str) -> tuple[Block, ...]:
    """Plain text as blocks: one paragraph per blank-line-separated paragraph."""
    return tuple(Block(p) for p in paragraphs(text))


def blocks_text(blocks: Sequence[Block]) -> str:
    """The normalised text of blocks: what fishflow speaks, hashes and offsets chunks into."""
    return PARAGRAPH_SEPARATOR.join(b.text for b in blocks)


def prose_text(blocks: Sequence[Block]) -> str:
    """The blocks' text without their marked spans (inline code): what a language is
    detected from, so that a Chinese lesson full of ``console.log`` is still Chinese."""
    parts = []
    for block in blocks:
        at = 0
        for mark in block.marks:
            parts.append(block.text[at : mark.start])
            at = mark.end
        parts.append(block.text[at:] + PARAGRAPH_SEPARATOR)
    return "".join(parts)


def text_sha256(normalized: str) -> str:
    return hashlib.sha256(normalized.encode()).hexdigest()


def is_speakable(normalized: str) -> bool:
    """True when the text has at least one letter or digit (emoji or punctuation alone is not)."""
    return any(unicodedata.category(ch)[0] in "LN" for ch in normalized)


# Scripts decide sentence rules and the expected speaking rate.
_SCRIPT_LANGUAGE = (
    ("HIRAGANA", "ja"),
    ("KATAKANA", "ja"),
    ("HANGUL", "ko"),
    ("CJK", "zh"),
    ("CYRILLIC", "ru"),
    ("ARABIC", "ar"),
    ("LATIN", "en"),
)


@functools.lru_cache(maxsize=8192)
def _script_language(ch: str) -> str | None:
    if not ch.isalpha():
        return None
    name = unicodedata.name(ch, "")
    return next((lang for prefix, lang in _SCRIPT_LANGUAGE if name.startswith(prefix)), None)


def detect_language(text: str) -> str:
    """A language code from the script that dominates the text (kana wins over Han: Japanese)."""
    counts: collections.Counter[str] = collections.Counter()
    # Distinct characters, each named once: a character-by-character lookup of a whole
    # Markdown lesson cost ~5 ms.
    for ch, n in collections.Counter(text[:2000]).items():
        if (lang := _script_language(ch)) is not None:
            counts[lang] += n
    if not counts:
        return "en"
    if counts.get("ja"):
        return "ja"
    return max(counts, key=lambda k: counts[k])


def is_cjk(ch: str) -> bool:
    return ord(ch) >= 0x2E80 and unicodedata.east_asian_width(ch) in "WF"
