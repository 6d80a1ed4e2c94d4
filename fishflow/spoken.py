"""What the model is asked to say, and what the listener reads: the spoken form of a block.

An author writes ``String::new``, "3.14", "50%" and "kubectl"; a narrator says "String new",
"three point one four", "fifty percent" and "kube control". ``speak_blocks`` turns blocks as
written (from ``fishflow.markdown`` or plain text, with inline code and ``<sup>``/``<sub>``
marked) into blocks as spoken, in this order:

1. inline code: a lexicon term is said as the lexicon says; the rest by
   ``fishflow.codespeech``; code longer than ``max_code_chars`` is dropped, and the article,
   preposition or conjunction it leaves hanging goes with it ("Run the file `...`." -> "Run the
   file."; "eliminates `a` or `b`, so" -> "eliminates, so");
2. the lexicon, on the prose (whole words, longest first);
3. numbers, units and symbols (``fishflow.numbers``), on the prose and on what code became.

Each spoken block keeps what was written (``Block.written``) and where the two differ
(``Block.changes``), so captions and chapter titles show the author's text, ``fishflow
preview`` lists every change, and ``fishflow plan`` counts them by rule. A block the rules do
not touch is returned as it is.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import regex

from fishflow.codespeech import say_code
from fishflow.lexicon import LexiconEntry, lexicon_hits
from fishflow.numbers import number_spans
from fishflow.text import Block, Change

DEFAULT_MAX_CODE_CHARS = 60


@dataclass(frozen=True, slots=True)
class SpeechOptions:
    """How written text becomes spoken text (plain data: it travels in a run's spec)."""

    numbers: bool = True
    lexicon: tuple[LexiconEntry, ...] = ()
    max_code_chars: int = DEFAULT_MAX_CODE_CHARS


@dataclass(slots=True)
class _Seg:
    written: str
    spoken: str
    rule: str | None = None  # None: said as written (prose not yet touched)
    kind: str = "prose"  # prose | code | sup | sub


# Words a dropped snippet must not leave hanging, per language.
_HANGING_BEFORE = {
    "en": frozenset(
        [
            "the",
            "a",
            "an",
            "this",
            "that",
            "these",
            "those",
            "your",
            "our",
            "its",
            "their",
            "my",
            "his",
            "her",
            "to",
            "of",
            "in",
            "on",
            "at",
            "for",
            "with",
            "from",
            "into",
            "by",
            "as",
            "like",
            "than",
            "via",
            "use",
            "using",
            "run",
            "type",
            "enter",
        ]
    ),
    "de": frozenset(
        [
            "der",
            "die",
            "das",
            "den",
            "dem",
            "des",
            "ein",
            "eine",
            "einen",
            "einem",
            "einer",
            "eines",
            "in",
            "im",
            "an",
            "am",
            "auf",
            "mit",
            "von",
            "zu",
            "zum",
            "zur",
            "für",
            "aus",
            "bei",
            "nach",
        ]
    ),
}
_CONJUNCTIONS = {
    "en": frozenset(["or", "and", "nor"]),
    "de": frozenset(["oder", "und"]),
}
_LAST_WORD = regex.compile(r"(\s*)([\p{L}']+)(\s*)$")
_SPACES = regex.compile(r"\s+")


def _primary(language: str) -> str:
    return language.lower().replace("_", "-").split("-")[0]


_POWER = {
    "en": " to the power of {}",
    "de": " hoch {}",
    "zh": "的{}次方",
    "ja": "の{}乗",
}
_SUPERSCRIPT = str.maketrans("0123456789+-=()n", "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁼⁽⁾ⁿ")
_SUBSCRIPT = str.maketrans("0123456789+-=()", "₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎")


def written_mark(kind: str, text: str) -> str:
    """How a marked span reads in captions: code as written, powers and indices raised or
    lowered where Unicode has the characters ("2ⁿ⁻¹", "H₂O"), "^(…)" and "_…" otherwise."""
    if kind == "sup":
        compact = text.replace(" ", "")
        raised = compact.translate(_SUPERSCRIPT)
        if all(ch not in compact or ch in "n" for ch in raised if ch.isascii()):
            return raised
        return f"^({text})" if len(compact) > 1 else f"^{text}"
    if kind == "sub":
        compact = text.replace(" ", "")
        lowered = compact.translate(_SUBSCRIPT)
        return lowered if not any(ch.isascii() for ch in lowered) else f"_{text}"
    return text


def _code_spoken(code: str, language: str, options: SpeechOptions) -> str:
    """Inline code as said: lexicon terms as the lexicon says, the rest by codespeech."""
    parts, at = [], 0
    for hit in lexicon_hits(code, options.lexicon, language):
        parts += [say_code(code[at : hit.start], language), hit.spoken]
        at = hit.end
    parts.append(say_code(code[at:], language))
    spoken = " ".join(p for p in parts if p)
    return _numbers_in(spoken, language) if options.numbers else spoken


def _numbers_in(text: str, language: str) -> str:
    out, at = [], 0
    for span in number_spans(text, language):
        out += [text[at : span.start], span.spoken]
        at = span.end
    out.append(text[at:])
    return "".join(out)


# (start, end, spoken, rule) of each span ``finder`` finds in a prose segment.
_Found = list[tuple[int, int, str, str]]


def _split(segs: list[_Seg], finder: Callable[[str], _Found]) -> list[_Seg]:
    """Prose segments cut where ``finder`` finds spans; each span becomes a changed segment."""
    out: list[_Seg] = []
    for seg in segs:
        if seg.rule is not None or seg.kind != "prose":
            out.append(seg)
            continue
        at = 0
        for start, end, spoken, rule in finder(seg.written):
            if start > at:
                out.append(_Seg(seg.written[at:start], seg.written[at:start]))
            out.append(_Seg(seg.written[start:end], spoken, rule))
            at = end
        if at < len(seg.written):
            out.append(_Seg(seg.written[at:], seg.written[at:]))
    return out


def _drop_hanging(segs: list[_Seg], language: str) -> list[_Seg]:
    """After dropped code: no article, preposition or lone conjunction left hanging. The
    words dropped become segments of their own, so the rest of the prose is read as usual."""
    lang = _primary(language)
    before = _HANGING_BEFORE.get(lang, frozenset())
    conjunctions = _CONJUNCTIONS.get(lang, frozenset())
    out: list[_Seg] = []
    for i, seg in enumerate(segs):
        if seg.rule != "code dropped":
            out.append(seg)
            continue
        nxt = segs[i + 1] if i + 1 < len(segs) else None
        following = (nxt.spoken if nxt else "").lstrip()
        # The words before the snippet that would hang, last first, go as one segment.
        if out and out[-1].rule is None and out[-1].spoken:
            prev = out[-1]
            cut = len(prev.spoken)
            while match := _LAST_WORD.search(prev.spoken[:cut]):
                word = match.group(2).lower()
                if word not in before | conjunctions:
                    break
                # A verb before the snippet ("run", "use") keeps its sentence if words follow.
                if word in _VERBS and following[:1].isalpha():
                    break
                cut = match.start(2)
            if cut < len(prev.spoken):
                out.pop()
                if cut:
                    out.append(_Seg(prev.written[:cut], prev.spoken[:cut]))
                out.append(_Seg(prev.written[cut:], "", "code dropped"))
        out.append(seg)
        # "`a` or `b`": the conjunction between two dropped snippets goes too
        if (
            nxt is not None
            and nxt.rule is None
            and i + 2 < len(segs)
            and segs[i + 2].rule == "code dropped"
            and nxt.spoken.strip(" ,").lower() in conjunctions | {""}
        ):
            nxt.spoken, nxt.rule = " ", "code dropped"
    return out


_VERBS = frozenset(("use", "using", "run", "type", "enter"))


def speak_block(block: Block, language: str, options: SpeechOptions) -> Block:
    """The spoken form of one written block (see the module docstring)."""
    text = block.text
    segs: list[_Seg] = []
    at = 0
    for mark in block.marks:
        if mark.start > at:
            segs.append(_Seg(text[at : mark.start], text[at : mark.start]))
        segs.append(_mark_seg(text[mark.start : mark.end], mark.kind, language, options))
        at = mark.end
    if at < len(text):
        segs.append(_Seg(text[at:], text[at:]))
    if any(s.rule == "code dropped" for s in segs):
        segs = _drop_hanging(segs, language)
    if options.lexicon:
        segs = _split(
            segs,
            lambda t: [
                (h.start, h.end, h.spoken, "lexicon")
                for h in lexicon_hits(t, options.lexicon, language)
            ],
        )
    if options.numbers:
        segs = _split(
            segs,
            lambda t: [
                (s.start, s.end, s.spoken, f"number {s.rule}") for s in number_spans(t, language)
            ],
        )
    return _assemble(block, segs)


def _mark_seg(written: str, kind: str, language: str, options: SpeechOptions) -> _Seg:
    if kind == "code":
        if len(written) > options.max_code_chars:
            return _Seg(written, "", "code dropped", kind)
        return _Seg(written, _code_spoken(written, language, options), "code", kind)
    inner = _code_spoken(written, language, options)
    if kind == "sup":
        template = _POWER.get(_primary(language), _POWER["en"])
        return _Seg(written_mark(kind, written), template.format(inner), "power", kind)
    return _Seg(written_mark(kind, written), f" {inner} ", "index", kind)


# Space before punctuation that dropping left ("Run the file ." -> "Run the file.").
_GAP_BEFORE_PUNCT = regex.compile(r"\s+(?=[,.;:!?。，、；：！？)])")
_PUNCT_RUN = regex.compile(r"[,;:，；：、]\s*(?=[.!?。！？])|([,;:，；：、])\s*[,;:，；：、]")


def _assemble(block: Block, segs: list[_Seg]) -> Block:
    if all(s.rule is None for s in segs) and not block.marks:
        return block
    # Whitespace is collapsed segment by segment, so offsets stay exact.
    spoken_parts: list[str] = []
    last = " "  # nothing before the block: no leading space
    for seg in segs:
        piece = _SPACES.sub(" ", seg.spoken)
        if last == " " and piece.startswith(" "):
            piece = piece.lstrip(" ")
        if piece and piece != seg.spoken and seg.rule is None:
            seg.rule = "tidy"
        seg.spoken = piece
        if piece:
            last = piece[-1]
        spoken_parts.append(piece)
    # Gaps and doubled soft punctuation that dropping left, removed in the segment that
    # holds them (a prose segment becomes a "tidy" change).
    joined = "".join(spoken_parts)
    cleaned = _PUNCT_RUN.sub(lambda m: m.group(1) or "", _GAP_BEFORE_PUNCT.sub("", joined))
    cleaned = cleaned.strip()
    if cleaned != joined:
        _retidy(segs, cleaned)
    changes = []
    written_at = spoken_at = 0
    for seg in segs:
        w_end, s_end = written_at + len(seg.written), spoken_at + len(seg.spoken)
        if seg.rule is not None and (seg.rule != "tidy" or seg.written != seg.spoken):
            changes.append(Change(written_at, w_end, spoken_at, s_end, seg.rule))
        written_at, spoken_at = w_end, s_end
    spoken = "".join(s.spoken for s in segs)
    written = "".join(s.written for s in segs)
    return replace(
        block,
        text=spoken,
        marks=(),
        written=written if written != spoken else None,
        changes=tuple(changes),
    )


def _retidy(segs: list[_Seg], target: str) -> None:
    """Make the segments' spoken texts add up to ``target`` (which only lacks characters),
    deleting from the segments that held them."""
    at = 0
    for seg in segs:
        kept = []
        for ch in seg.spoken:
            if at < len(target) and target[at] == ch:
                kept.append(ch)
                at += 1
        new = "".join(kept)
        if new != seg.spoken:
            seg.spoken = new
            seg.rule = seg.rule or "tidy"


def speak_blocks(
    blocks: Sequence[Block], language: str, options: SpeechOptions
) -> tuple[Block, ...]:
    """Blocks as written -> blocks as spoken (a block with nothing to change stays as it is)."""
    out = []
    for block in blocks:
        spoken = speak_block(block, language, options)
        if spoken.text.strip() or not block.text.strip():
            out.append(spoken)
        else:  # everything in it was dropped code: nothing left to say
            continue
    return tuple(out)


def written_offset(block: Block, spoken_offset: int, *, end: bool) -> int:
    """Where a position in a spoken block's text lies in what was written; a position inside
    a change goes to the change's start (``end=False``) or end (``end=True``)."""
    shift = 0
    for change in block.changes:
        if spoken_offset < change.spoken_start or (
            spoken_offset == change.spoken_start and not end
        ):
            break
        if spoken_offset < change.spoken_end or (spoken_offset == change.spoken_end and end):
            return change.written_end if end else change.written_start
        shift = change.written_end - change.spoken_end
    return spoken_offset + shift


def said_as(written: str, spoken: str, rule: str) -> str:
    """One change as ``preview`` shows it: "`String::new` → String new (code)"."""
    return f"{written} → {spoken or '(not said)'} ({rule})"


def rule_summary(counts: collections.Counter[str]) -> str:
    """ "412 code, 96 number cardinal, 12 lexicon": spans changed, by rule, most first."""
    return ", ".join(f"{n:,} {rule}" for rule, n in counts.most_common())
