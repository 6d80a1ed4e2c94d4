"""A pronunciation lexicon: how the model should say product names, commands and acronyms.

Two formats, as Azure and Polly take them:

- CSV with a header ``term,spoken,language`` and an optional ``case`` column (``ignore`` makes
  the entry match in any case; entries are case-sensitive otherwise). An empty language
  matches every item.
- W3C PLS XML (``<lexicon xml:lang="en">``, ``<lexeme><grapheme>...</grapheme><alias>...
  </alias></lexeme>``). Fish Speech takes text only, so a lexeme needs an ``<alias>``; one with
  ``<phoneme>`` alone is refused with its line.

Terms match as whole words (a CJK term anywhere), the longest first. Entries are plain data
(``LexiconEntry``), so a run's spec carries them to every worker.
"""

from __future__ import annotations

import csv
import functools
import io
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

import regex

from fishflow.errors import ConfigError, StorageError
from fishflow.storage import read_uri_bytes


@dataclass(frozen=True, slots=True)
class LexiconEntry:
    term: str
    spoken: str
    language: str = ""  # "" for any language; otherwise a primary code ("en", "zh")
    ignore_case: bool = False


@dataclass(frozen=True, slots=True)
class LexiconHit:
    start: int
    end: int
    spoken: str
    term: str


def _primary(language: str) -> str:
    return language.strip().lower().replace("_", "-").split("-")[0]


def parse_lexicon(data: bytes, name: str) -> tuple[LexiconEntry, ...]:
    """Entries of a CSV or PLS lexicon file; ConfigError naming the file and line otherwise."""
    text = data.decode("utf-8-sig", errors="strict") if data else ""
    if text.lstrip().startswith("<"):
        return _parse_pls(text, name)
    return _parse_csv(text, name)


MAX_LEXICON_BYTES = 8 << 20


def load_lexicon(uri: str) -> tuple[LexiconEntry, ...]:
    """Entries of the lexicon at a path or s3:// URI (ConfigError when it cannot be used)."""
    try:
        data = read_uri_bytes(uri, MAX_LEXICON_BYTES + 1)
    except StorageError as exc:  # an object's, named without credentials
        raise ConfigError(f"lexicon: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"lexicon {uri}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > MAX_LEXICON_BYTES:
        raise ConfigError(f"lexicon {uri}: larger than {MAX_LEXICON_BYTES >> 20} MB")
    try:
        return parse_lexicon(data, uri)
    except UnicodeDecodeError:
        raise ConfigError(f"lexicon {uri}: not UTF-8 text") from None


def _parse_csv(text: str, name: str) -> tuple[LexiconEntry, ...]:
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip().lower() for f in reader.fieldnames or []]
    if "term" not in fields or "spoken" not in fields:
        raise ConfigError(
            f"lexicon {name}: the first line must name the columns term,spoken,language "
            f"(found {','.join(fields) or 'nothing'})"
        )
    reader.fieldnames = fields
    entries = []
    for line, row in enumerate(reader, start=2):
        term, spoken = (row.get("term") or "").strip(), (row.get("spoken") or "").strip()
        if not term and not spoken:
            continue
        if not term or not spoken:
            raise ConfigError(f"lexicon {name}, line {line}: both term and spoken are needed")
        case = (row.get("case") or "").strip().lower()
        if case not in ("", "ignore", "sensitive"):
            raise ConfigError(
                f"lexicon {name}, line {line}: case is 'ignore' or 'sensitive', not {case!r}"
            )
        language = _primary(row.get("language") or "")
        entries.append(LexiconEntry(term, spoken, language, ignore_case=case == "ignore"))
    return tuple(entries)


_PLS = "{http://www.w3.org/2005/01/pronunciation-lexicon}"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


def _parse_pls(text: str, name: str) -> tuple[LexiconEntry, ...]:
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ConfigError(f"lexicon {name}: not valid PLS XML ({exc})") from None
    language = _primary(root.get(_XML_LANG, ""))
    entries = []
    for number, lexeme in enumerate(root.iter(f"{_PLS}lexeme"), start=1):
        graphemes = [g.text.strip() for g in lexeme.iter(f"{_PLS}grapheme") if g.text]
        aliases = [a.text.strip() for a in lexeme.iter(f"{_PLS}alias") if a.text]
        if not graphemes:
            raise ConfigError(f"lexicon {name}, lexeme {number}: no <grapheme>")
        if not aliases:
            raise ConfigError(
                f"lexicon {name}, lexeme {number} ({graphemes[0]}): Fish Speech takes text, "
                "so each lexeme needs an <alias> (a <phoneme> alone cannot be said)"
            )
        entries += [LexiconEntry(g, aliases[0], language) for g in graphemes]
    return tuple(entries)


def _is_cjk(term: str) -> bool:
    return any("\u2e80" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" for ch in term)


@functools.lru_cache(maxsize=64)
def _matcher(
    entries: tuple[LexiconEntry, ...], language: str
) -> tuple[regex.Pattern[str], dict[str, LexiconEntry]] | None:
    lang = _primary(language)
    chosen: dict[str, LexiconEntry] = {}
    # An entry for the item's language wins over one for any language.
    for entry in sorted(entries, key=lambda e: e.language != ""):
        if entry.language in ("", lang):
            key = entry.term.casefold() if entry.ignore_case else entry.term
            chosen.setdefault(key, entry)
    if not chosen:
        return None
    alternatives = []
    for entry in sorted(chosen.values(), key=lambda e: len(e.term), reverse=True):
        body = regex.escape(entry.term)
        if entry.ignore_case:
            body = f"(?i:{body})"
        if not _is_cjk(entry.term):
            body = rf"(?<![\p{{L}}\p{{N}}_]){body}(?![\p{{L}}\p{{N}}_])"
        alternatives.append(body)
    return regex.compile("|".join(alternatives)), chosen


def lexicon_hits(text: str, entries: Sequence[LexiconEntry], language: str) -> list[LexiconHit]:
    """Where lexicon terms occur in ``text`` (longest first, never overlapping)."""
    if not entries:
        return []
    found = _matcher(tuple(entries), language)
    if found is None:
        return []
    pattern, chosen = found
    hits = []
    for match in pattern.finditer(text):
        written = match.group()
        entry = chosen.get(written) or chosen[written.casefold()]
        hits.append(LexiconHit(match.start(), match.end(), entry.spoken, entry.term))
    return hits
