"""Captions (WebVTT, SRT) and chapters (WebVTT, ID3 CHAP/CTOC in mp3) from stitched offsets.

Cue times come from where each chunk really starts in the published file and how long its
audio lasts; within a chunk, time is shared by characters. A cue is one sentence when it fits
in ``MAX_LINES`` lines of ``MAX_LINE_CHARS`` characters; a longer sentence becomes several
cues, cut between words (between characters for scripts written without spaces).

Chapters start where a chunk that opens a section (``Chunk.heading_level``) starts, and end where
the next one starts (the last at the end of the audio).
"""

from __future__ import annotations

import io
import re
import textwrap
import unicodedata
from dataclasses import dataclass
from typing import IO

from fishflow.chunking import sentences

MAX_LINE_CHARS = 42
MAX_LINES = 2


@dataclass(frozen=True, slots=True)
class Placed:
    """A chunk as stitched: its spoken text, where it starts and how long it lasts."""

    text: str
    start_s: float
    duration_s: float
    heading: str | None = None


@dataclass(frozen=True, slots=True)
class Cue:
    start_s: float
    end_s: float
    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Chapter:
    start_s: float
    end_s: float
    title: str


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


# A Chinese or Japanese character is a unit of its own (lines break between any two), other
# text, Korean included (it spaces its words), a word.
_WIDE = "\u2e80-\ua4cf\uf900-\ufaff\ufe30-\ufe4f\uff00-\uff60\uffe0-\uffe6"
_UNITS = re.compile(rf"\s+|[{_WIDE}]|[^\s{_WIDE}]+")
# Punctuation that never starts a line (kinsoku): it takes the unit before it along.
_NO_LINE_START = frozenset("、。，．！？：；」』）】〕》〉”’ー")


def _lines(text: str) -> list[str]:
    """Wrap to MAX_LINE_CHARS columns, a full-width (CJK) character counting two: between
    words, between any two Chinese or Japanese characters, or inside a word too long for a
    line; a line never starts with closing punctuation (it takes what it closes along)."""
    if _width(text) == len(text):  # no full-width characters: the stdlib's wrap
        wrapped = textwrap.wrap(text, MAX_LINE_CHARS, break_long_words=True, break_on_hyphens=False)
        return wrapped or [text]
    units: list[str] = []
    for unit in _UNITS.findall(text):
        while _width(unit) > MAX_LINE_CHARS:  # a word longer than a line: cut it by columns
            cut = next(i for i in range(len(unit), 0, -1) if _width(unit[:i]) <= MAX_LINE_CHARS)
            units.append(unit[:cut])
            unit = unit[cut:]
        units.append(unit)
    lines: list[list[str]] = [[]]
    for unit in units:
        line = lines[-1]
        if unit.isspace():
            if line:
                line.append(" ")
            continue
        if _width("".join(line) + unit) <= MAX_LINE_CHARS or not line:
            line.append(unit)
            continue
        carried = [unit]
        while line and line[-1] == " ":
            line.pop()
        # Closing punctuation takes the units before it along (a word, 。 before 」).
        while carried[0][0] in _NO_LINE_START and len(line) > 1:
            carried.insert(0, line.pop())
            while line and line[-1] == " ":
                line.pop()
        lines.append(carried)
    return [joined for line in lines if (joined := "".join(line).strip())] or [text]


def _sentences(text: str, language: str) -> list[str]:
    try:
        return sentences(text, language or "en")
    except Exception:  # an unknown language code: one cue stream for the whole chunk
        return [text.strip()] if text.strip() else []


def cues(placed: list[Placed], language: str) -> list[Cue]:
    """Sentence cues of at most MAX_LINES x MAX_LINE_CHARS, timed by characters in a chunk."""
    out: list[Cue] = []
    for chunk in placed:
        pieces = [
            tuple(lines[i : i + MAX_LINES])
            for sentence in _sentences(chunk.text, language)
            for lines in [_lines(sentence)]
            for i in range(0, len(lines), MAX_LINES)
        ]
        weights = [sum(len(line) for line in piece) for piece in pieces]
        total = sum(weights) or 1
        at = 0
        for piece, weight in zip(pieces, weights, strict=True):
            start = chunk.start_s + chunk.duration_s * at / total
            at += weight
            end = chunk.start_s + chunk.duration_s * at / total
            out.append(Cue(start, end, piece))
    return out


def chapters(placed: list[Placed], total_s: float) -> list[Chapter]:
    starts = [(c.start_s, c.heading) for c in placed if c.heading]
    return [
        Chapter(start, starts[i + 1][0] if i + 1 < len(starts) else total_s, title)
        for i, (start, title) in enumerate(starts)
    ]


def _stamp(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _cue_text(text: str) -> str:
    """A caption line as data: one line (no line break of any kind: a blank line ends a cue),
    no control characters, and & < > as entities, so that no tag (<i>, <c.x>) is read and no
    "-->" reads as a cue's timing. WebVTT defines these entities; SRT players (VLC, ffmpeg,
    browsers' converters) read them the same way."""
    spaced = "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in text)
    line = " ".join(spaced.split())  # every Unicode line break and space run: one space
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cue_lines(cue: Cue) -> list[str]:
    return [line for raw in cue.lines if (line := _cue_text(raw))]


def _render(cue_list: list[Cue], sep: str, header: list[str]) -> bytes:
    out = list(header)
    number = 0
    for cue in cue_list:
        if not (lines := _cue_lines(cue)):
            continue  # nothing to show: a cue without text would read as the end of one
        number += 1
        out += [str(number), f"{_stamp(cue.start_s, sep)} --> {_stamp(cue.end_s, sep)}"]
        out += lines
        out.append("")
    return "\n".join(out).encode()


def webvtt(cue_list: list[Cue]) -> bytes:
    return _render(cue_list, ".", ["WEBVTT", ""])


def srt(cue_list: list[Cue]) -> bytes:
    return _render(cue_list, ",", [])


def chapters_webvtt(chapter_list: list[Chapter]) -> bytes:
    out = ["WEBVTT", ""]
    for i, chapter in enumerate(chapter_list, 1):
        out += [
            f"chapter-{i}",
            f"{_stamp(chapter.start_s, '.')} --> {_stamp(chapter.end_s, '.')}",
            _cue_text(chapter.title) or f"Chapter {i}",
            "",
        ]
    return "\n".join(out).encode()


def tag_mp3_chapters(target: str | IO[bytes], chapter_list: list[Chapter]) -> None:
    """Write ID3v2 CHAP frames and a top-level CTOC (the ID3 chapter addendum) into an mp3,
    so podcast and audiobook players list the chapters."""
    from mutagen.id3 import CHAP, CTOC, ID3, TIT2, CTOCFlags, ID3NoHeaderError

    if isinstance(target, io.BytesIO):
        target.seek(0)
    try:
        tags = ID3(target)
    except ID3NoHeaderError:
        tags = ID3()
    ids = [f"chp{i}" for i in range(len(chapter_list))]
    tags.add(
        CTOC(
            element_id="toc",
            flags=CTOCFlags.TOP_LEVEL | CTOCFlags.ORDERED,
            child_element_ids=ids,
            sub_frames=[TIT2(text=["Chapters"])],
        )
    )
    for element_id, chapter in zip(ids, chapter_list, strict=True):
        tags.add(
            CHAP(
                element_id=element_id,
                start_time=round(chapter.start_s * 1000),
                end_time=round(chapter.end_s * 1000),
                sub_frames=[TIT2(text=[chapter.title])],
            )
        )
    if isinstance(target, io.BytesIO):
        target.seek(0)
    tags.save(target)
