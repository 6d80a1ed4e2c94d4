"""What the server is asked to say: inline code, numbers and lexicon terms in words, per
language (README "What a listener hears"), and what captions show instead."""

from __future__ import annotations

from typing import Any

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from fishflow.chunking import chunk_blocks
from fishflow.codespeech import say_code
from fishflow.errors import ConfigError
from fishflow.lexicon import LexiconEntry, lexicon_hits, parse_lexicon
from fishflow.markdown import markdown_blocks
from fishflow.numbers import number_spans
from fishflow.spoken import SpeechOptions, speak_block, speak_blocks
from fishflow.text import Block, Mark, blocks_text


def said(text: str, language: str = "en") -> str:
    out, at = [], 0
    for span in number_spans(text, language):
        out += [text[at : span.start], span.spoken]
        at = span.end
    return "".join(out) + text[at:]


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("42 apples", "forty-two apples"),
        (
            "1,234,567 rows",
            "one million two hundred and thirty-four thousand five hundred and sixty-seven rows",
        ),
        ("pi is 3.14", "pi is three point one four"),
        ("a -5 offset", "a minus five offset"),
        ("the 21st time", "the twenty-first time"),
        ("in 1999 and in 2024", "in nineteen ninety-nine and in twenty twenty-four"),
        ("2048 bytes", "two thousand and forty-eight bytes"),
        ("pages 1-10", "pages one to ten"),
        ("3/4 of it", "three quarters of it"),
        ("2/3 of it", "two thirds of it"),
        ("50% off", "fifty percent off"),
        ("$5.99 each", "five dollars and ninety-nine cents each"),
        ("€12 each", "twelve euros each"),
        ("in 5 ms", "in five milliseconds"),
        ("at 2.4GHz", "at two point four gigahertz"),
        ("1 second", "one second"),
        ("64 KiB", "sixty-four kibibytes"),
        ("at 10:30", "at ten thirty"),
        ("at 9:05", "at nine oh five"),
        ("on 2026-12-07", "on December seventh, twenty twenty-six"),
        ("release 1.2.3", "release one point two point three"),
        ("v2 is out", "version two is out"),
        ("version v2", "version two"),
        ("code 0x1F", "code hex one F"),
        ("call 555-1234", "call five five five, one two three four"),
        ("agent 007", "agent zero zero seven"),
        ("10⁶ and x²", "ten to the power of six and x squared"),
        ("3x faster", "three times faster"),
        ("1,2,3", "one, two, three"),
        ("open 127.0.0.1 now", "open one hundred and twenty-seven dot zero dot zero dot one now"),
        # identifiers with digits are names, never numbers
        ("u8, i32, ES6, x86_64, 3D, mp3", "u8, i32, ES6, x86_64, 3D, mp3"),
    ],
)
def test_english_numbers_units_and_symbols_in_words(text: str, spoken: str) -> None:
    assert said(text) == spoken


@pytest.mark.parametrize(
    ("text", "language", "spoken"),
    [
        (
            "1.234,56 € und 3,14",
            "de",
            "eintausendzweihundertvierunddreißig Euro und sechsundfünfzig"
            " Cent und drei Komma eins vier",
        ),
        (
            "50 % im Jahr 1999 um 10:30",
            "de",
            "fünfzig Prozent im Jahr neunzehnhundertneunundneunzig um zehn Uhr dreißig",
        ),
        ("5 ms", "de", "fünf Millisekunden"),
        ("共有5个，占50%", "zh", "共有五个，占百分之五十"),
        ("2026年12月7日，第3章", "zh", "二零二六年十二月七日，第三章"),
        ("3.14，1-10，5 ms，10:30", "zh", "三点一四，一到十，五毫秒，十点三十分"),
        ("版本1.2.3，¥59", "zh", "版本一点二点三，五十九元"),
        ("3/4，2x", "zh", "四分之三，二倍"),
        ("am 2026-12-07", "de", "am siebter Dezember zweitausendsechsundzwanzig"),
        ("2<sup>", "zh", "二<sup>"),
        ("5個、50%", "ja", "五個、五十パーセント"),
        ("2026年12月7日、第3章", "ja", "二千二十六年十二月七日、第三章"),
        ("1-10、3.14、5 ms", "ja", "一から十、三点一四、五ミリ秒"),
        (
            "Il y a 42 chats et 3,5 chiens.",
            "fr",
            "Il y a quarante-deux chats et trois virgule cinq chiens.",
        ),
    ],
)
def test_numbers_in_german_chinese_japanese_and_others(
    text: str, language: str, spoken: str
) -> None:
    assert said(text, language) == spoken


@pytest.mark.parametrize(
    ("code", "spoken"),
    [
        ("String::new", "String new"),
        ("read_line", "read line"),
        ("isNaN", "is NaN"),
        ("XMLHttpRequest", "XML Http Request"),
        ("read_csv()", "read csv"),
        ("$", "dollar"),
        ("&&", "and"),
        ("=>", "arrow"),
        ("..=", "dot dot equals"),
        ("@babel/register", "at babel slash register"),
        ("src/main.rs", "src slash main dot rs"),
        ("Cargo.toml", "Cargo dot toml"),
        ("cargo build --release", "cargo build dash dash release"),
        ("cargo test -- --nocapture", "cargo test dash dash dash dash nocapture"),
        ("Vec<i32>", "Vec of i32"),
        ("<APP_NAME>", "APP NAME"),
        ("Ctrl+Shift+P", "Ctrl Shift P"),
        ("hello-world", "hello world"),
        ("a + b", "a plus b"),
        ("x86_64", "x86 64"),
        ("localhost:5000/", "localhost colon 5000 slash"),
    ],
)
def test_inline_code_in_english_words(code: str, spoken: str) -> None:
    assert say_code(code, "en") == spoken


def test_inline_code_names_symbols_in_the_items_language() -> None:
    assert say_code("src/main.rs", "de") == "src Schrägstrich main Punkt rs"
    assert say_code("a && b", "zh") == "a 与 b"
    assert say_code("=>", "zh") == "箭头"
    assert say_code("x.y", "ja") == "x ドット y"


def _spoken(text: str, codes: list[str], language: str = "en", **options: Any) -> Block:
    marks = []
    for code in codes:
        at = text.index(code)
        marks.append(Mark(at, at + len(code)))
    return speak_block(Block(text, marks=tuple(marks)), language, SpeechOptions(**options))


def test_long_code_is_dropped_and_leaves_nothing_hanging() -> None:
    long = "cargo new hello_world --vcs=git --edition 2021 --name demo --lib"
    assert _spoken(f"Run the command {long}.", [long], max_code_chars=40).text == (
        "Run the command."
    )
    block = _spoken(f"Compile and run the file: {long}.", [long], max_code_chars=40)
    assert block.text == "Compile and run the file."
    block = _spoken(f"It eliminates {long} or {long[::-1]}, resulting in 5.", [long, long[::-1]],
                    max_code_chars=40)  # fmt: skip
    assert block.text == "It eliminates, resulting in five."
    assert _spoken(f"Install it with {long} today.", [long], max_code_chars=40).text == (
        "Install it today."
    )
    # What was written is kept whole for captions.
    assert block.written == f"It eliminates {long} or {long[::-1]}, resulting in 5."


def test_a_chunks_written_form_holds_the_code_its_text_says_in_words() -> None:
    blocks = speak_blocks(
        markdown_blocks("# The `?` operator\n\nCall `String::new` 3 times.\n\nThen stop."),
        "en",
        SpeechOptions(),
    )
    chunks = chunk_blocks(blocks, "en", 400)
    assert [c.text for c in chunks] == [
        "The question mark operator.",
        "Call String new three times.",
        "Then stop.",
    ]
    assert [c.shown for c in chunks] == [
        "The ? operator.",
        "Call String::new 3 times.",
        "Then stop.",
    ]
    assert chunks[1].said == (
        ("String::new", "String new", "code"),
        ("3", "three", "number cardinal"),
    )


def test_a_written_offset_inside_a_change_goes_to_its_edge() -> None:
    block = _spoken("Use read_line 12 times.", ["read_line"])
    assert block.text == "Use read line twelve times."
    blocks = (block, Block("Next."))
    chunks = chunk_blocks(blocks, "en", 20)  # cut somewhere inside
    assert " ".join(c.shown for c in chunks) == "Use read_line 12 times. Next."


def test_lexicon_csv_and_pls() -> None:
    csv = (
        b"term,spoken,language,case\nkubectl,kube control,,\nJSON,jay son,en,\nsql,sequel,,ignore\n"
    )
    entries = parse_lexicon(csv, "lex.csv")
    assert entries[0] == LexiconEntry("kubectl", "kube control", "")
    assert entries[2].ignore_case
    pls = (
        b'<?xml version="1.0"?><lexicon version="1.0" '
        b'xmlns="http://www.w3.org/2005/01/pronunciation-lexicon" xml:lang="en-US" '
        b'alphabet="ipa"><lexeme><grapheme>rustc</grapheme><grapheme>RustC</grapheme>'
        b"<alias>rust see</alias></lexeme></lexicon>"
    )
    assert parse_lexicon(pls, "lex.pls") == (
        LexiconEntry("rustc", "rust see", "en"),
        LexiconEntry("RustC", "rust see", "en"),
    )
    with pytest.raises(ConfigError, match=r"lexeme 1 .*alias"):
        parse_lexicon(pls.replace(b"<alias>rust see</alias>", b"<phoneme>r</phoneme>"), "x.pls")
    with pytest.raises(ConfigError, match="line 2: both term and spoken"):
        parse_lexicon(b"term,spoken\nkubectl,\n", "x.csv")
    with pytest.raises(ConfigError, match="term,spoken,language"):
        parse_lexicon(b"word,say\na,b\n", "x.csv")


def test_lexicon_matches_whole_words_longest_first_by_case_and_language() -> None:
    entries = (
        LexiconEntry("JSON", "jay son"),
        LexiconEntry("JSON Schema", "jay son schema"),
        LexiconEntry("sql", "sequel", ignore_case=True),
        LexiconEntry("stdout", "standard out", "en"),
        LexiconEntry("stdout", "Standardausgabe", "de"),
        LexiconEntry("数据库", "数据仓库", "zh"),
    )
    text = "JSON Schema and JSON, not json or JSONL; SQL and Sql; stdout."
    spoken = [h.spoken for h in lexicon_hits(text, entries, "en")]
    assert spoken == ["jay son schema", "jay son", "sequel", "sequel", "standard out"]
    assert [h.spoken for h in lexicon_hits("stdout", entries, "de")] == ["Standardausgabe"]
    assert [h.spoken for h in lexicon_hits("打开数据库。", entries, "zh")] == ["数据仓库"]
    # Applied to prose and to inline code.
    block = _spoken("Print JSON to stdout with jq.", [], lexicon=entries)
    assert block.text == "Print jay son to standard out with jq."
    block = _spoken("Run sql --json now.", ["sql --json"], lexicon=entries)
    assert block.text == "Run sequel dash dash json now."


def test_normalisation_off_keeps_digits_but_still_says_code() -> None:
    block = _spoken("Call read_line 3 times.", ["read_line"], numbers=False)
    assert block.text == "Call read line 3 times."


# --- properties -----------------------------------------------------------------------------

_ARTICLES = regex.compile(r"(?i)\b(?:the|a|an)\s+(?:the|a|an)\b|\b(?:the|a|an)\s*[.,;:!?]")
_PLACEHOLDERS = ("the code shown", "所示代码", "表示のコード", "gezeigten Code")
_WORDS = ["the", "a", "an", "file", "command", "run", "with", "of", "or", "and", "value", "in"]
_LONG_CODE = "cargo new hello_world --vcs=git --edition 2021 --name demo"
_CODES = ["read_line", "String::new", "x = 1", "rm -rf /", "src/main.rs", "$HOME", "a && b",
          _LONG_CODE, "u8", "--force"]  # fmt: skip
_NUMBERS = ["5", "3.14", "1,234", "50%", "1-10", "10:30", "2024-03-01", "$5", "0x1F", "v2",
            "1.2.3", "21st", "3/4", "-7", "5 ms", "2.4GHz", "007", "10⁶"]  # fmt: skip
_DIGITS = regex.compile(r"(?<![\p{Latin}_\p{N}])\p{Nd}+")


@st.composite
def _sentences(draw: st.DrawFn) -> tuple[str, list[str]]:
    parts: list[str] = []
    codes: list[str] = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["word", "word", "code", "number"]))
        if kind == "code":
            code = draw(st.sampled_from(_CODES))
            codes.append(code)
            parts.append(code)
        else:
            parts.append(draw(st.sampled_from(_WORDS if kind == "word" else _NUMBERS)))
    text = " ".join(parts) + draw(st.sampled_from([".", "?", ",  then stop.", ":"]))
    return text, codes


@settings(max_examples=300, deadline=None)
@given(_sentences())
def test_no_placeholder_doubled_or_dangling_article_and_no_digits(
    sentence: tuple[str, list[str]],
) -> None:
    text, codes = sentence
    marks, at = [], 0
    for code in codes:
        at = text.index(code, at)
        marks.append(Mark(at, at + len(code)))
        at += len(code)
    block = speak_block(Block(text, marks=tuple(marks)), "en", SpeechOptions(max_code_chars=40))
    spoken = block.text
    assert not any(p in spoken for p in _PLACEHOLDERS)
    if not _ARTICLES.search(text):
        assert not _ARTICLES.search(spoken), (text, spoken)
    assert not _DIGITS.search(spoken), (text, spoken)
    assert block.written is None or block.written == text


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.sampled_from([*_NUMBERS, "共有", "个", "年", "点", "，"]), min_size=1, max_size=8)
)
def test_no_standalone_digits_reach_a_server_in_chinese_or_japanese(parts: list[str]) -> None:
    text = "，".join(parts) + "。"
    for language in ("zh", "ja", "de"):
        spoken = blocks_text(speak_blocks((Block(text),), language, SpeechOptions()))
        assert not _DIGITS.search(spoken), (language, text, spoken)
