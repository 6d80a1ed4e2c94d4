"""Text as the model should hear it: normalised whitespace, no control characters, no Markdown."""

from __future__ import annotations

import hashlib
import re
import unicodedata

from markdown_it import MarkdownIt

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


def paragraphs(text: str) -> list[str]:
    """Split text into paragraphs with whitespace collapsed and control characters removed."""
    text = unicodedata.normalize("NFC", _drop_control(text.replace("\r\n", "\n")))
    parts = (_WHITESPACE.sub(" ", p).strip() for p in _PARAGRAPH_BREAK.split(text))
    return [p for p in parts if p]


def normalize(text: str) -> str:
    """The text fishflow speaks and hashes: paragraphs joined by one blank line."""
    return PARAGRAPH_SEPARATOR.join(paragraphs(text))


def text_sha256(normalized: str) -> str:
    return hashlib.sha256(normalized.encode()).hexdigest()


def is_speakable(normalized: str) -> bool:
    """True when the text has at least one letter or digit (emoji or punctuation alone is not)."""
    return any(unicodedata.category(ch)[0] in "LN" for ch in normalized)


_md = MarkdownIt("commonmark").enable("table")


def markdown_to_text(markdown: str) -> str:
    """Reduce Markdown to speakable prose: headings, lists and paragraphs become paragraphs;
    link targets, images, HTML and code blocks are dropped; emphasis markers vanish."""
    out: list[str] = []
    current: list[str] = []

    def flush() -> None:
        if current:
            out.append(" ".join("".join(current).split()))
            current.clear()

    for token in _md.parse(markdown):
        if token.type == "inline" and token.children is not None:
            for child in token.children:
                if child.type in ("text", "code_inline"):
                    current.append(child.content)
                elif child.type in ("softbreak", "hardbreak"):
                    current.append(" ")
            # Headings and list items without final punctuation would run into the next
            # sentence when spoken; end them with a full stop.
            text = "".join(current).rstrip()
            if text and text[-1].isalnum():
                current.append(".")
        elif token.type.endswith("_close") and token.block:
            flush()
    flush()
    return PARAGRAPH_SEPARATOR.join(p for p in out if p)


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


def detect_language(text: str) -> str:
    """A language code from the script that dominates the text (kana wins over Han: Japanese)."""
    counts: dict[str, int] = {}
    for ch in text[:2000]:
        if not ch.isalpha():
            continue
        name = unicodedata.name(ch, "")
        for prefix, lang in _SCRIPT_LANGUAGE:
            if name.startswith(prefix):
                counts[lang] = counts.get(lang, 0) + 1
                break
    if not counts:
        return "en"
    if counts.get("ja"):
        return "ja"
    return max(counts, key=lambda k: counts[k])


def is_cjk(ch: str) -> bool:
    return ord(ch) >= 0x2E80 and unicodedata.east_asian_width(ch) in "WF"
