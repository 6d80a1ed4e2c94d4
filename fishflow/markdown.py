"""Markdown as a listener should hear it, construct by construct, from markdown-it's tokens.

What each construct becomes (the README's table "What gets spoken from Markdown" says the same):

- headings: a block of their own ending in their script's full stop ("." or "。"); a link right
  under a heading that repeats it ("## Quiz" then "[Quiz](https://...)") is said once;
- code blocks (fenced, indented, HTML ``<pre>``): not read; a short cue in the item's
  language ("Code example.", "代码示例。"), one per run of consecutive blocks, or nothing
  (``code="silent"``);
- inline code: marked in the block (``Block.marks``) and said by ``fishflow.spoken``: its
  words and named symbols ("String new", "src slash main dot rs"), never a placeholder;
  captions show it as written; ``<sup>``/``<sub>`` are marked too (said as powers and indices);
- links: their text, never the target; bare URLs and autolinks: their host name
  ("docs.python.org"), which tells the listener where without spelling a path;
- images: their alt text (``images="skip"``: nothing);
- tables: one block per body row, "header: value, header: value." (``tables="skip"``: nothing);
  ``<br>`` in a cell is a comma's pause, never glued words; pipes are never spoken;
- HTML: text kept, tags never spoken; ``<details>``: summary and body both read;
  ``<script>``/``<style>`` and comments dropped;
- front matter (YAML, or Hugo's TOML): only its ``title``, as a heading;
- ordered lists are numbered as rendered (from the first item's number, then +1, whatever
  the source writes on later items); bullets are not spoken; task-list
  boxes ("[ ]", "[x]") and GitHub alert markers ("[!NOTE]") are dropped;
- footnote markers dropped, and footnote bodies too: at the end of a lesson, cut off from the
  sentence they annotate, they are mostly citations and links;
- emoji and pictographs, and emphasis marks left unmatched (a stray ``**``): never sent.

Every block ends with sentence punctuation, so the model closes its intonation where the chunk
ends. The result is a tuple of ``fishflow.text.Block`` (kind, text, heading level) for the
chunker, which ends chunks at headings and sets pauses by boundary kind.
"""

from __future__ import annotations

import functools
import html
import re
import tomllib
import unicodedata
from collections.abc import Sequence
from dataclasses import replace
from html.parser import HTMLParser
from typing import Literal
from urllib.parse import urlsplit

from markdown_it import MarkdownIt
from markdown_it.token import Token
from mdit_py_plugins.deflist import deflist_plugin
from mdit_py_plugins.footnote import footnote_plugin
from mdit_py_plugins.front_matter import front_matter_plugin

from fishflow.text import Block, BlockKind, Mark, detect_language, drop_emoji, is_speakable

CodeBlocks = Literal["cue", "silent"]
Images = Literal["alt", "skip"]
Tables = Literal["rows", "skip"]
MarkKind = Literal["code", "sup", "sub"]

# The languages Fish Speech 1.5 names (docs/fish-speech-api.md), English for the rest.
_CODE_CUES = {
    "en": "Code example.",
    "zh": "代码示例。",
    "ja": "コード例。",
    "ko": "코드 예시.",
    "de": "Codebeispiel.",
    "fr": "Exemple de code.",
    "es": "Ejemplo de código.",
    "it": "Esempio di codice.",
    "pt": "Exemplo de código.",
    "nl": "Codevoorbeeld.",
    "pl": "Przykład kodu.",
    "ru": "Пример кода.",
    "ar": "مثال برمجي.",
}


def _primary(language: str) -> str:
    return language.lower().replace("_", "-").split("-")[0]


def code_cue(language: str, file: str = "") -> str:
    """What is said in place of a code block, in the item's language (English otherwise);
    ``file``: the listing's file name, when a "Filename:" line named it."""
    if file:
        return _FILE_CUES.get(_primary(language), _FILE_CUES["en"]).format(file)
    return _CODE_CUES.get(_primary(language), _CODE_CUES["en"])


@functools.cache
def _parser() -> MarkdownIt:
    return (
        MarkdownIt("commonmark", {"html": True})
        .enable(["table", "strikethrough"])
        .use(front_matter_plugin)
        .use(footnote_plugin)
        .use(deflist_plugin)
    )


# --- inline text --------------------------------------------------------------------------

# A break (<br>, a hard line break) inside a block: resolved to a comma's pause, or nothing
# next to punctuation, once the block's text is complete.
_BREAK = "\ue000"  # private use: not whitespace, so it survives splitting
_PLACEHOLDER = r"<[\w\-.: ]{1,60}>"
# Marks (see _Marks) are private-use characters: never part of a URL or a tag.
_MARK_CHARS = "\U000f0000-\U000ffffd"
# URLs with a scheme or "www.", placeholders inside them included ("https://<APP>.x.net/...").
_URL = re.compile(
    rf"(?:[a-zA-Z][a-zA-Z0-9+.\-]{{1,15}}://|www\.)(?:{_PLACEHOLDER}|[^\s<>\"'`|\ue000{_MARK_CHARS}])+"
)
# Scheme-less "host.tld/path" (github.com/org/repo): the host alone, as for URLs.
_HOST_PATH = re.compile(
    rf"\b((?:[a-zA-Z0-9\-]+\.)+[a-zA-Z]{{2,}})(?:/[^\s<>\"'`|\ue000{_MARK_CHARS}]*)", re.ASCII
)
# What is left of a URL glued to other text, after the above: never spoken.
# A scheme only when something follows it: "the file: it" is prose.
_URL_RESIDUE = re.compile(
    r"(?<![A-Za-z])(?:https?|ftp|file|mailto):(?=[^\s.,;!?])|:/+|www\.", re.IGNORECASE
)
# A placeholder or a stray tag left as text ("<APP_NAME>", an escaped "&lt;div&gt;").
_ANGLED = re.compile(r"<[^\s<>][^<>\n]{0,80}>")
# Emphasis marks markdown-it left as text (unmatched): runs of two or more, or one "*" that
# touches a word on one side only ("*note", "5 * 3" stays).
_STRAY_EMPHASIS = re.compile(r"\*{2,}|(?<!\w)_{2,}|_{2,}(?!\w)|~~|(?<!\S)\*(?=\S)|(?<=\S)\*(?!\S)")
_EMPHASIS = re.compile(r"(?:\*{1,3}|_{2,3}|~~)(?=\S)|(?<=\S)(?:\*{1,3}|_{2,3}|~~)")
# An angle bracket touching a word is markup residue; a spaced one ("a < b") is prose.
_LOOSE_ANGLE = re.compile(r"<(?=\S)|(?<=\S)>")
_TRAILING = ".,;:!?)]}'\"”’"
_LABEL = re.compile(r"[A-Za-z0-9\-]+")
_ALT = re.compile(r"""\balt\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", re.IGNORECASE)
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)


def _host(url: str) -> str:
    """The host name of a URL, without "www." or placeholder labels; "" when none is left."""
    try:
        netloc = urlsplit(url if "://" in url else "http://" + url).netloc
    except ValueError:
        return ""
    host = netloc.rpartition("@")[2].split(":")[0]
    labels = [label for label in host.split(".") if _LABEL.fullmatch(label)]
    if labels[:1] == ["www"]:
        labels = labels[1:]
    return ".".join(labels).lower()


def _replace_url(match: re.Match[str]) -> str:
    url = match.group(0)
    tail = len(url) - len(url.rstrip(_TRAILING))
    url, rest = url[: len(url) - tail], url[len(url) - tail :]
    return _host(url) + rest


def _clean(text: str) -> str:
    """Inline text made safe to speak: URLs as host names; no placeholders, tags, backticks,
    pipes or emoji."""
    text = drop_emoji(text)
    # Each pattern only where it can match: on a course, these substitutions were most of
    # the time spent reading Markdown.
    if "/" in text or "www." in text.lower():
        text = _HOST_PATH.sub(_replace_url, _URL.sub(_replace_url, text))
    if ":" in text or "www." in text.lower():
        text = _URL_RESIDUE.sub("", text)
    if "<" in text or ">" in text:
        text = _LOOSE_ANGLE.sub(" ", _ANGLED.sub(" ", text))
    if "*" in text or "_" in text or "~" in text:
        text = _STRAY_EMPHASIS.sub("", text)
    return text.replace("`", "").replace("|", " ")


class _Marks:
    """Inline code and ``<sup>``/``<sub>`` of one document, each held in the text as one
    private-use character (which no cleaning touches) until the blocks are made."""

    _BASE = 0xF0000
    _LIMIT = 0xFFFD

    def __init__(self) -> None:
        self.spans: list[tuple[MarkKind, str]] = []

    def add(self, kind: MarkKind, text: str) -> str:
        text = " ".join(drop_emoji(text).split())
        if not text:
            return ""
        if len(self.spans) >= self._LIMIT:  # more than any book holds: said as prose
            return _clean(text)
        self.spans.append((kind, text))
        return chr(self._BASE + len(self.spans) - 1)

    def _span(self, ch: str) -> tuple[MarkKind, str] | None:
        i = ord(ch) - self._BASE
        return self.spans[i] if 0 <= i < len(self.spans) else None

    def plain(self, text: str) -> str:
        """The text with each mark replaced by what it holds."""
        return "".join(span[1] if (span := self._span(ch)) else ch for ch in text)

    def block(self, block: Block) -> Block:
        """A block with its marks resolved into its text and ``Block.marks``."""
        if not any(self._span(ch) for ch in block.text):
            return block
        out: list[str] = []
        marks: list[Mark] = []
        at = 0
        for ch in block.text:
            span = self._span(ch)
            if span is None:
                out.append(ch)
                at += 1
                continue
            kind, text = span
            marks.append(Mark(at, at + len(text), kind))
            out.append(text)
            at += len(text)
        return replace(block, text="".join(out), marks=tuple(marks))


def _alt(tag: str) -> str:
    match = _ALT.search(tag)
    alt = next((g for g in match.groups() if g is not None), "") if match else ""
    return html.unescape(alt)


class _Inline:
    """Renders an inline token's children to text."""

    def __init__(self, *, images: Images, marks: _Marks) -> None:
        self.images = images
        self.marks = marks

    def render(self, children: Sequence[Token]) -> str:
        parts: list[str] = []
        # text inside an inline <code>, <sup> or <sub>, and which one
        held: list[str] | None = None
        held_kind: MarkKind = "code"
        for child in children:
            kind = child.type
            if held is not None and kind in ("text", "code_inline"):
                held.append(child.content)
            elif kind == "text":
                parts.append(_clean(child.content))
            elif kind == "code_inline":
                parts.append(self.marks.add("code", child.content))
            elif kind == "softbreak":
                parts.append(" ")
            elif kind == "hardbreak":
                parts.append(_BREAK)
            elif kind == "image":
                if self.images == "alt":
                    parts.append(" " + _clean(child.content) + " ")
            elif kind == "html_inline":
                tag = child.content.strip().lower()
                if _BR.fullmatch(tag):
                    parts.append(_BREAK)
                elif tag.startswith("<img") and self.images == "alt":
                    parts.append(" " + _clean(_alt(child.content)) + " ")
                elif held is None and (opened := _HELD_TAG.match(tag)) is not None:
                    held, held_kind = [], _HELD_KINDS[opened.group(1)]
                elif held is not None and tag.startswith(f"</{held_kind}"):
                    parts.append(self.marks.add(held_kind, html.unescape("".join(held))))
                    held = None
            # link_open/close, emphasis, strikethrough, footnote_ref: no sound of their own
        if held is not None:  # an unclosed <code>: its text is still prose
            parts.append(_clean("".join(held)))
        return "".join(parts)


_HELD_TAG = re.compile(r"<(code|sup|sub)\b[^>]*>")
_HELD_KINDS: dict[str, MarkKind] = {"code": "code", "sup": "sup", "sub": "sub"}


def _is_lone_link(children: Sequence[Token]) -> bool:
    """The paragraph is one link, or one image, and nothing else (but spaces)."""
    inner = [c for c in children if not (c.type == "text" and not c.content.strip())]
    if len(inner) == 1 and inner[0].type == "image":
        return True
    return (
        len(inner) >= 2
        and inner[0].type == "link_open"
        and inner[-1].type == "link_close"
        and all(c.type not in ("link_open", "link_close") for c in inner[1:-1])
    )


# --- blocks -------------------------------------------------------------------------------

_FULL_STOPS = ".!?。！？…‼⁇⁈⁉؟।॥"
_CLOSERS = "\"'”’」』）)]】»"
_SOFT_ENDS = ",;:，；：、"
_MARKER = re.compile(r"^\s*\[(?:!\w+|[ xX])\]\s+")  # "[!NOTE]" alerts, "[ ]" task boxes
# A space before punctuation that ends something ("it ." -> "it."), never before a path or an
# emoji shortcode that starts with it ("see ./docs", "a :rocket:").
_SPACE_BEFORE_PUNCT = re.compile(
    rf"\s+([,;!?)\]]|[.:](?=[\s,.;:!?{re.escape(_CLOSERS)}]|$)|[。，、；：！？）】])"
)
# GitHub's emoji shortcodes (":rocket:", ":+1:"), as words of their own: emoji, never spoken.
_SHORTCODE = re.compile(r"(?<!\S):[a-z0-9_+-]+:(?![\w:])")
_EMPTY_BRACKETS = re.compile(r"\(\s*\)|（\s*）|\[\s*\]")
# What dropping pieces leaves: ", , ," or ", ." or a block starting with a comma.
_SOFT_RUN = re.compile(r"([,;:，；：、])(?:\s*[,;:，；：、])+")
_SOFT_BEFORE_STOP = re.compile(r"[,;:，；：、]\s*([.!?。！？])")


def _is_ideograph(ch: str) -> bool:
    """Han or kana: scripts whose sentences end in "。" and take full-width punctuation."""
    return unicodedata.name(ch, "").startswith(("CJK", "HIRAGANA", "KATAKANA"))


def _last_letter(text: str) -> str:
    return next((ch for ch in reversed(text) if ch.isalnum()), "")


def _resolve_breaks(text: str) -> str:
    pieces = [p.strip() for p in text.split(_BREAK)]
    out = ""
    for piece in pieces:
        if not piece:
            continue
        if out and out[-1] not in _FULL_STOPS + _SOFT_ENDS:
            out += "，" if _is_ideograph(out[-1]) else ","
        out += ("" if not out or _is_ideograph(piece[0]) else " ") + piece
    return out


def _tidy(text: str) -> str:
    """One line of speech: breaks resolved, whitespace collapsed, no gaps before punctuation
    or empty brackets left behind by what was dropped."""
    text = _resolve_breaks(" ".join(_SHORTCODE.sub(" ", text).split()))
    text = _EMPTY_BRACKETS.sub(" ", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(text.split()))
    text = _SOFT_BEFORE_STOP.sub(r"\1", _SOFT_RUN.sub(r"\1", text))
    return unicodedata.normalize("NFC", text.strip().lstrip(_SOFT_ENDS).lstrip())


def terminate(text: str, *, ideographic: bool = False) -> str:
    """End a block with sentence punctuation of its script, unless it already has one: "。"
    after Chinese or Japanese (or anywhere with ``ideographic``), "." otherwise. A trailing
    comma or colon becomes the stop."""
    text = text.rstrip()
    body = text.rstrip(_CLOSERS)
    if not body or body[-1] in _FULL_STOPS:
        return text
    closers = text[len(body) :]
    body = body.rstrip(_SOFT_ENDS).rstrip()
    if not body:
        return text
    stop = "。" if ideographic or _is_ideograph(_last_letter(body) or " ") else "."
    return body + closers + stop


def _comparable(text: str) -> str:
    """Letters and digits only, case folded: "Pre-lecture quiz" == "Pre-lecture Quiz!"."""
    return "".join(ch for ch in text if ch.isalnum()).casefold()


# "Filename: src/main.rs" (the Rust book's caption above a listing), in a few languages; the
# name may be a mark (inline code) or plain text.
_FILENAME = re.compile(
    rf"^(?:Filename|File name|File|Dateiname|Datei|文件名|文件|ファイル名)\s*[:：]\s*"
    rf"([{_MARK_CHARS}]|[\w./\-]+?)[.。]?$",
    re.IGNORECASE,
)
_FILE_CUES = {
    "en": "Code example from {}.",
    "de": "Codebeispiel aus {}.",
    "zh": "代码示例：{}。",
    "ja": "コード例：{}。",
}


class _Builder:
    """Collects blocks, applying the rules that look at neighbours.

    ``ideographic``: the document is Chinese or Japanese, so a block with Han or kana in it
    takes full-width punctuation even where it ends in a Latin word ("安装 Python。").
    """

    def __init__(self, *, ideographic: bool, marks: _Marks) -> None:
        self.ideographic = ideographic
        self.marks = marks
        self.blocks: list[Block] = []
        self.last_heading = ""  # comparable text of a heading just emitted, until other text

    def speakable(self, text: str) -> bool:
        return is_speakable(self.marks.plain(text))

    def wide(self, text: str) -> bool:
        return self.ideographic and any(_is_ideograph(ch) for ch in text)

    def add(self, text: str, kind: BlockKind, level: int = 0, *, lone_link: bool = False) -> None:
        # Cleaned again as a whole: dropping a piece can join its neighbours into a URL or tag.
        text = _tidy(_clean(text))
        if kind == "code":
            if not self.blocks or self.blocks[-1].kind != "code":
                # The cue is filled in once the item's language is known; a "Filename: x"
                # line just above the listing is said in it, once.
                file = ""
                if self.blocks and (named := _FILENAME.match(self.blocks[-1].text)):
                    self.blocks.pop()
                    file = named.group(1)
                    if self.marks.plain(file) == file:  # a name written as prose
                        file = self.marks.add("code", file)
                self.blocks.append(Block(file, "code"))
            return
        if kind != "heading":
            text = _MARKER.sub("", text)
        if not self.speakable(text):
            return
        comparable = _comparable(self.marks.plain(text))
        if comparable == self.last_heading and (lone_link or kind == "heading"):
            # "## Quiz" then "[Quiz](url)" or an image with that alt text, or a title repeated
            # as the first heading
            return
        text = terminate(text, ideographic=self.wide(text))
        if _URL_RESIDUE.search(text):  # a bare "www" given its full stop
            text = terminate(_tidy(_URL_RESIDUE.sub("", text)), ideographic=self.wide(text))
            if not is_speakable(text):
                return
        self.last_heading = comparable if kind == "heading" else ""
        self.blocks.append(Block(text, kind, level))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        """Body rows as "header: value, header: value." Pairs are parted by semicolons
        throughout a table where a cell holds a comma of its own (a <br>)."""
        headers = [_tidy(_clean(h)) for h in headers]
        rows = [[_tidy(_clean(cell)) for cell in row] for row in rows]
        commas = any("," in c or "，" in c for row in rows for c in row)
        for row in rows:
            pairs = []
            for i, value in enumerate(row):
                if not self.speakable(value):
                    continue
                header = headers[i] if i < len(headers) else ""
                if not self.speakable(header) or _comparable(header) == _comparable(value):
                    pairs.append(value)
                else:
                    pairs.append(header + ("：" if self.wide(header) else ": ") + value)
            wide = self.wide(" ".join(pairs))
            joiner = ("；" if wide else "; ") if commas else ("，" if wide else ", ")
            self.add(joiner.join(p.rstrip(_SOFT_ENDS) for p in pairs), "table_row")


class _Html(HTMLParser):
    """Text of an HTML block, as blocks: tags never spoken, their text kept."""

    _BLOCK_TAGS = frozenset(
        (
            "address", "article", "aside", "blockquote", "center", "dd", "details", "dialog",
            "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "header",
            "hr", "li", "main", "nav", "ol", "p", "section", "summary", "table", "tbody",
            "thead", "tfoot", "ul",
        )
    )  # fmt: skip
    _SILENT = frozenset(("script", "style", "template", "svg", "math"))

    def __init__(self, builder: _Builder, *, images: Images, tables: Tables, marks: _Marks) -> None:
        super().__init__(convert_charrefs=True)
        self.builder, self.images, self.tables = builder, images, tables
        self.marks = marks
        self.code_kind: MarkKind = "code"
        self.parts: list[str] = []
        self.kind: BlockKind = "paragraph"
        self.level = 0
        self.silent = 0
        self.pre = 0
        self.code: list[str] | None = None
        self.cells: list[tuple[bool, str]] | None = None  # (is header, text) of the open row
        self.headers: list[str] = []
        self.rows: list[list[str]] = []

    def parse_marked_section(self, i: int, report: bool = True) -> int:
        """``<![`` that opens no CDATA or conditional section (``<![alt](x.png)`` after a tag)
        is a bogus comment to browsers, up to the next ``>``; Python 3.11's parser raises
        AssertionError on it."""
        try:
            return super().parse_marked_section(i, report)
        except AssertionError:
            end = self.rawdata.find(">", i + 3)
            return len(self.rawdata) if end < 0 else end + 1

    def _flush(self) -> None:
        if self.cells is not None:  # a block inside a table cell: a break within the cell
            self.parts.append(_BREAK)
            return
        text = "".join(self.parts)
        self.parts = []
        self.builder.add(text, self.kind, self.level)
        self.kind, self.level = "paragraph", 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SILENT:
            self.silent += 1
        elif tag == "pre":
            self._flush()
            self.pre += 1
        elif tag in _HELD_KINDS and not self.pre and self.code is None:
            self.code, self.code_kind = [], _HELD_KINDS[tag]
        elif tag == "br":
            self.parts.append(_BREAK)
        elif tag == "img" and self.images == "alt":
            self.parts.append(" " + _clean(dict(attrs).get("alt") or "") + " ")
        elif tag == "tr":
            self._flush()
            self.cells = []
        elif tag in ("td", "th") and self.cells is not None:
            self.parts = []
        elif tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self._flush()
            self.kind, self.level = "heading", int(tag[1])
        elif tag in self._BLOCK_TAGS:
            self._flush()
            if tag == "li":
                self.kind = "list_item"

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SILENT:
            self.silent = max(0, self.silent - 1)
        elif tag == "pre" and self.pre:
            self.pre -= 1
            self.builder.add("", "code")
        elif tag == self.code_kind and self.code is not None:
            self.parts.append(self.marks.add(self.code_kind, "".join(self.code)))
            self.code = None
        elif tag in ("td", "th") and self.cells is not None:
            self.cells.append((tag == "th", "".join(self.parts)))
            self.parts = []
        elif tag == "tr" and self.cells is not None:
            cells, self.cells = self.cells, None
            if cells and all(is_header for is_header, _ in cells) and not self.rows:
                self.headers = [c for _, c in cells]
            else:
                self.rows.append([c for _, c in cells])
        elif tag == "table":
            self._end_table()
        elif tag in ("h1", "h2", "h3", "h4", "h5", "h6") or tag in self._BLOCK_TAGS:
            self._flush()

    def _end_table(self) -> None:
        if self.tables == "rows" and self.rows:
            self.builder.table(self.headers, self.rows)
        self.headers, self.rows = [], []

    def handle_data(self, data: str) -> None:
        if self.silent or self.pre:
            return
        if self.code is not None:
            self.code.append(data)
        else:  # Markdown is not parsed inside an HTML block: its emphasis marks are literal
            self.parts.append(_clean(_EMPHASIS.sub("", data)))

    def close(self) -> None:
        super().close()
        self._end_table()
        self._flush()


# Hugo's TOML front matter, between "+++" lines (markdown-it's plugin reads YAML's "---").
_TOML_FRONT_MATTER = re.compile(r"\A\+\+\+[ \t]*\n(.*?)^\+\+\+[ \t]*$\n?", re.DOTALL | re.MULTILINE)


def _toml_front_matter(markdown: str) -> tuple[str, str]:
    """The document without its TOML front matter, and that front matter's title ("")."""
    if (match := _TOML_FRONT_MATTER.match(markdown)) is None:
        return markdown, ""
    try:
        title = tomllib.loads(match.group(1)).get("title")
    except tomllib.TOMLDecodeError:
        title = None
    return markdown[match.end() :], title if isinstance(title, str) else ""


def _front_matter_title(content: str) -> str:
    match = re.search(r"(?m)^title\s*:\s*(.*?)\s*$", content)
    if not match:
        return ""
    title = match.group(1).strip()
    if title[:1] in "\"'" and title[-1:] == title[:1]:
        title = title[1:-1]
    return "" if title in (">", "|", ">-", "|-") else title


def markdown_blocks(
    markdown: str,
    *,
    language: str | None = None,
    code: CodeBlocks = "cue",
    images: Images = "alt",
    tables: Tables = "rows",
) -> tuple[Block, ...]:
    """What a listener hears of a Markdown document, as blocks (see the module docstring).

    ``language`` picks the code cue's language; by default the language of the prose.
    """
    markdown, toml_title = _toml_front_matter(markdown.replace("\r\n", "\n").replace(_BREAK, " "))
    tokens = _parser().parse(markdown)
    # The prose's language sets the punctuation (and the code cue) of every block.
    # Inline code is not prose: a Chinese lesson full of `console.log` is still Chinese.
    prose = " ".join(
        c.content
        for t in tokens
        if t.type == "inline"
        for c in t.children or ()
        if c.type == "text"
    )
    language = language or detect_language(drop_emoji(prose))
    marks = _Marks()
    inline = _Inline(images=images, marks=marks)
    builder = _Builder(ideographic=language.lower()[:2] in ("zh", "ja"), marks=marks)
    stack: list[str] = []  # open block tokens
    number: str | None = None  # an ordered list item's number, for its first paragraph
    counters: list[int] = []  # the next number of each open ordered list, as rendered
    headers: list[str] = []
    rows: list[list[str]] = []
    row: list[str] | None = None
    footnotes = 0
    if toml_title:
        builder.add(_clean(toml_title), "heading", 1)
    for i, token in enumerate(tokens):
        kind = token.type
        if kind.startswith("footnote_block"):
            footnotes += 1 if kind.endswith("_open") else -1
            continue
        if footnotes:
            continue
        if kind.endswith("_open"):
            stack.append(kind)
            if kind == "ordered_list_open":
                start = token.attrGet("start")
                counters.append(int(start) if isinstance(start, (int, str)) else 1)
            elif kind == "list_item_open":
                number = None
                if "ordered_list_open" in stack[-2:-1] and counters:
                    number = f"{counters[-1]}{'、' if builder.ideographic else '. '}"
                    counters[-1] += 1
            elif kind == "tr_open":
                row = []
            continue
        if kind.endswith("_close"):
            if stack:
                stack.pop()
            if kind == "ordered_list_close" and counters:
                counters.pop()
            if kind == "tr_close" and row is not None:
                if "thead_open" in stack:
                    headers = row
                else:
                    rows.append(row)
                row = None
            elif kind == "table_close":
                if tables == "rows":
                    builder.table(headers, rows)
                headers, rows = [], []
            continue
        if kind == "front_matter":
            builder.add(_clean(_front_matter_title(token.content)), "heading", 1)
        elif kind in ("fence", "code_block"):
            if code == "cue":
                builder.add("", "code")
        elif kind == "html_block":
            parser = _Html(builder, images=images, tables=tables, marks=marks)
            parser.feed(token.content)
            parser.close()
        elif kind == "inline":
            text = inline.render(token.children or [])
            parent = stack[-1] if stack else ""
            if parent in ("th_open", "td_open"):
                if row is not None:
                    row.append(text)
            elif parent == "heading_open":
                builder.add(text, "heading", int(tokens[i - 1].tag[1:]))
            elif "list_item_open" in stack:
                if builder.speakable(text):
                    builder.add((number or "") + text, "list_item")
                number = None
            else:
                builder.add(text, "paragraph", lone_link=_is_lone_link(token.children or []))
        # hr, html in other places: nothing to say
    return tuple(
        marks.block(Block(code_cue(language, b.text), "code") if b.kind == "code" else b)
        for b in builder.blocks
        if b.kind != "code" or code == "cue"
    )
