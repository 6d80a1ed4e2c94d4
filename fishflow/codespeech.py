"""Inline code as a narrator says it, per language.

A book that writes ``String::new``, ``read_line`` or ``@babel/register`` in a sentence means a
listener to hear those names. Identifiers are split into their words (``read_line`` "read
line", ``isNaN`` "is NaN", ``XMLHttpRequest`` "XML Http Request", ``String::new`` "String new");
operators and punctuation are named where they carry meaning (``$`` "dollar", ``&&`` "and",
``=>`` "arrow", ``..=`` "dot dot equals", ``/`` "slash", ``.`` "dot", ``@`` "at"); brackets,
quotes and a call's ``()`` are not said. Numbers in code are left as digits here: the number
reader (``fishflow.numbers``) says them with the rest of the sentence, so ``u8`` stays a name.

English, German, Chinese and Japanese name the symbols in their own words; other languages
use the English names. Identifiers are said as written in every language.
"""

from __future__ import annotations

import functools

import regex

# symbol -> (en, de, zh, ja); longest first when matching.
_SYMBOLS: dict[str, tuple[str, str, str, str]] = {
    "--": ("dash dash", "Strich Strich", "双横杠", "ダブルハイフン"),
    "..=": ("dot dot equals", "Punkt Punkt gleich", "点点等于", "ドットドットイコール"),
    "...": ("dot dot dot", "Punkt Punkt Punkt", "点点点", "ドットドットドット"),
    "===": ("triple equals", "dreifach gleich", "全等于", "トリプルイコール"),
    "!==": ("not double equals", "nicht dreifach gleich", "不全等于", "ノットイコールイコール"),
    "**": ("power", "hoch", "乘方", "べき乗"),
    "=>": ("arrow", "Pfeil", "箭头", "アロー"),
    "->": ("arrow", "Pfeil", "箭头", "アロー"),
    "<-": ("left arrow", "Linkspfeil", "左箭头", "左アロー"),
    "<=": ("less than or equal to", "kleiner gleich", "小于等于", "以下"),
    ">=": ("greater than or equal to", "größer gleich", "大于等于", "以上"),
    "==": ("double equals", "gleich gleich", "等于等于", "イコールイコール"),
    "!=": ("not equals", "ungleich", "不等于", "ノットイコール"),
    "&&": ("and", "und", "与", "アンド"),
    "||": ("or", "oder", "或", "オア"),
    "..": ("dot dot", "Punkt Punkt", "点点", "ドットドット"),
    "+=": ("plus equals", "plus gleich", "加等于", "プラスイコール"),
    "-=": ("minus equals", "minus gleich", "减等于", "マイナスイコール"),
    "<<": ("shift left", "links schieben", "左移", "左シフト"),
    ">>": ("shift right", "rechts schieben", "右移", "右シフト"),
    "??": ("double question mark", "doppeltes Fragezeichen", "双问号", "ダブルクエスチョン"),
    "?.": ("optional dot", "optionaler Punkt", "可选点", "オプショナルドット"),
    "$": ("dollar", "Dollar", "美元符", "ドル"),
    "=": ("equals", "gleich", "等于", "イコール"),
    "+": ("plus", "plus", "加", "プラス"),
    "*": ("star", "Stern", "星号", "アスタリスク"),
    "/": ("slash", "Schrägstrich", "斜杠", "スラッシュ"),
    "\\": ("backslash", "Backslash", "反斜杠", "バックスラッシュ"),
    ".": ("dot", "Punkt", "点", "ドット"),
    "@": ("at", "at", "at", "アット"),
    "#": ("hash", "Raute", "井号", "ハッシュ"),
    "%": ("percent", "Prozent", "百分号", "パーセント"),
    "&": ("ampersand", "Und-Zeichen", "和号", "アンパサンド"),
    "|": ("pipe", "Pipe", "管道", "パイプ"),
    "!": ("not", "nicht", "非", "ノット"),
    "?": ("question mark", "Fragezeichen", "问号", "クエスチョン"),
    "<": ("less than", "kleiner als", "小于", "小なり"),
    ">": ("greater than", "größer als", "大于", "大なり"),
    "~": ("tilde", "Tilde", "波浪号", "チルダ"),
    "^": ("caret", "Zirkumflex", "脱字符", "キャレット"),
    "-": ("minus", "minus", "减", "マイナス"),
}
_LANGS = ("en", "de", "zh", "ja")
_OF = ("of", "von", "的", "の")
_COLON = ("colon", "Doppelpunkt", "冒号", "コロン")
_DASH = ("dash", "Strich", "横杠", "ハイフン")
# Said as nothing: brackets, quotes, separators (their content is said).
_SILENT = frozenset("()[]{}\"'`;,:")

_TOKEN = regex.compile(
    r"(?P<word>[\p{L}\p{M}_][\p{L}\p{M}\p{N}_]*|\p{N}+(?:\.\p{N}+)*[\p{L}_]*)"
    r"|(?P<space>\s+)"
    r"|(?P<dashes>(?<![\p{L}\p{N}_])--?(?=[\p{L}\p{N}]))"
    r"|(?P<port>:(?=\p{N})(?<=[\p{L}\p{N}]:))"
    r"|(?P<sep>::|[-](?=[\p{L}\p{N}])(?<=[\p{L}\p{N}]-))"
    r"|(?P<call>\(\))"
    r"|(?P<generic><(?=[\p{L}_])(?<=[\p{L}\p{N}_]<)|>(?<=[\p{L}\p{N}_>]>)(?!=))"
    r"|(?P<symbol>"
    + "|".join(regex.escape(s) for s in sorted(_SYMBOLS, key=len, reverse=True))
    + r")"
    r"|(?P<other>.)",
    regex.DOTALL,
)
# camelCase and PascalCase boundaries: readLine, XMLHttp; NaN and PhD stay whole.
_CAMEL = regex.compile(r"(?<=[\p{Ll}\p{N}])(?=\p{Lu}(?!\p{Ll}?$))|(?<=\p{Lu})(?=\p{Lu}\p{Ll}{2})")


def _language(language: str) -> int:
    primary = language.lower().replace("_", "-").split("-")[0]
    return _LANGS.index(primary) if primary in _LANGS else 0


def identifier_words(name: str) -> str:
    """``read_line`` "read line", ``isNaN`` "is NaN", ``getHTTPResponse`` "get HTTP Response"."""
    parts = [p for p in name.split("_") if p]
    return " ".join(" ".join(_CAMEL.split(p)) for p in parts)


# A key chord (Ctrl+Shift+P) is said as its keys.
_CHORD = regex.compile(
    r"(?i)(?:ctrl|control|shift|alt|option|opt|cmd|command|win|super|meta|fn)(?:\+\w+)+"
)


_SCHEME = regex.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]{1,15}://")
_PLACEHOLDER = regex.compile(r"(?<![\p{L}\p{N}_])<([\p{L}_][\p{L}\p{N}_\-. ]*)>")


@functools.lru_cache(maxsize=4096)
def say_code(code: str, language: str) -> str:
    """What a narrator says for inline ``code`` in a sentence of ``language``."""
    lang = _language(language)
    code = code.strip()
    if _CHORD.fullmatch(code):
        return " ".join(code.split("+"))
    # A URL's scheme is not said; a placeholder's angle brackets neither (<APP_NAME>).
    code = _PLACEHOLDER.sub(r"\1", _SCHEME.sub("", code))
    words: list[str] = []
    for match in _TOKEN.finditer(code):
        kind, text = match.lastgroup, match.group()
        if kind == "word":
            words.append(identifier_words(text))
        elif kind == "dashes":  # an option: --force, -rf
            words.append(" ".join([_DASH[lang]] * len(text)))
        elif kind == "port":  # localhost:5000, 127.0.0.1:8080
            words.append(_COLON[lang])
        elif kind == "generic":  # Vec<i32>, Option<T>: "Vec of i32"
            words.append(_OF[lang] if text == "<" else "")
        elif kind == "symbol":
            words.append(_SYMBOLS[text][lang])
        elif kind == "other" and text not in _SILENT and not text.isspace():
            words.append(text)
        # sep (String::new, kebab-case), call "()", spaces and brackets: a word break only
    joiner = "" if lang in (2, 3) and not any(w.isascii() for w in words) else " "
    return joiner.join(w for w in words if w)
