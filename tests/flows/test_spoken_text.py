"""A code-heavy book in English and Chinese end to end: what the server is asked to say is what
a narrator would say (no placeholders, no doubled or dangling articles, no digits, no marks,
lexicon terms as the lexicon says), and captions show what the author wrote."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import regex

from fishflow.codespeech import identifier_words
from fishflow.errors import ConfigError
from fishflow.settings import RunSettings
from fishflow.testing.emulator import Emulator
from tests.flows.helpers import manifest, run

BOOK = Path(__file__).parents[2] / "examples" / "book"
_DIGITS = regex.compile(r"(?<![\p{Latin}_\p{N}])\p{Nd}+")
_ARTICLES = regex.compile(r"(?i)\b(?:the|a|an)\s+(?:the|a|an)\b|\b(?:the|a|an)\s*[.,;:!?]")
_MARKS = regex.compile(r"&(?:#\d+|\w+);|\*\*|__|~~|`|<[A-Za-z/]")
_CODE = re.compile(r"`([^`\n]+)`")


def _sent(emulator: Emulator) -> str:
    return "\n".join(emulator.stats["texts"])


def test_a_code_heavy_book_is_sent_as_a_narrator_would_say_it(
    tmp_path: Path, emulator: Emulator
) -> None:
    settings = RunSettings(lexicon=str(BOOK / "lexicon.csv"))
    summary = run(BOOK, tmp_path / "out", [emulator.url], settings=settings)
    assert summary.ok == 4 and summary.failed == 0
    sent = _sent(emulator)
    assert "the code shown" not in sent and "所示代码" not in sent
    assert not _ARTICLES.search(sent), _ARTICLES.search(sent)
    assert not _DIGITS.search(sent), _DIGITS.search(sent)
    assert not _MARKS.search(sent), _MARKS.search(sent)
    # Lexicon terms are never sent as written, in prose or in code.
    for term in ("kubectl", "JSON", "stdout", "rustc", "YAML"):
        assert not regex.search(rf"(?<!\w){term}(?!\w)", sent), term
    # Inline code with words in it is said with those words (>= 95% of spans).
    spans = [
        code
        for path in BOOK.rglob("*.md")
        for code in _CODE.findall(path.read_text())
        if re.search(r"[A-Za-z]{2}", code) and len(code) <= settings.inline_code_max_chars
    ]
    lexicon = {"kubectl", "JSON", "stdout", "rustc", "YAML"}
    said = [
        all(
            word in sent
            for word in identifier_words(re.sub(r"[^\w]+", " ", code)).split()
            if len(word) > 1 and word not in lexicon and not word.isdigit()
        )
        for code in spans
    ]
    assert len(spans) > 40 and sum(said) / len(said) >= 0.95


def test_captions_and_chapters_show_what_the_author_wrote(
    tmp_path: Path, emulator: Emulator
) -> None:
    source = tmp_path / "course"
    source.mkdir()
    (source / "lesson.md").write_text(
        "# The `?` Operator\n\nCall `String::new` 3 times, then `read_line`.\n\n"
        "## Step 2\n\nRead it 50% faster.\n"
    )
    summary = run(source, tmp_path / "out", [emulator.url])
    assert summary.ok == 1
    sent = _sent(emulator)
    assert "Call String new three times, then read line." in sent
    row = manifest(tmp_path / "out", "items", summary.run_id).iloc[0]
    vtt = Path(row.captions_uri).read_text()
    assert "Call String::new 3 times, then read_line." in vtt and "String new" not in vtt
    srt = Path(row.captions_uri).with_suffix(".srt").read_text()
    assert "String::new 3 times" in srt
    chapters = Path(row.chapters_uri).read_text()
    assert "The ? Operator" in chapters and "Step 2" in chapters
    assert "question mark" not in chapters and "Step two" not in chapters


def test_editing_a_lexicon_entry_redoes_only_the_items_that_use_it(
    tmp_path: Path, emulator: Emulator
) -> None:
    source = tmp_path / "catalog.csv"
    source.write_text(
        "id,text\n"
        "k8s,Deploy it with kubectl today.\n"
        "json,Export the report as JSON.\n"
        "plain,A plain sentence with nothing special.\n"
    )
    lexicon = tmp_path / "lexicon.csv"
    lexicon.write_text("term,spoken,language\nkubectl,kube control,\nJSON,jay son,\n")
    settings = RunSettings(lexicon=str(lexicon))
    first = run(source, tmp_path / "out", [emulator.url], settings=settings)
    assert first.ok == 3
    assert "Deploy it with kube control today." in emulator.stats["texts"]
    lexicon.write_text("term,spoken,language\nkubectl,cube cuttle,\nJSON,jay son,\n")
    second = run(source, tmp_path / "out", [emulator.url], settings=settings)
    items = manifest(tmp_path / "out", "items", second.run_id).set_index("item_id")
    assert dict(items["status"]) == {"k8s": "ok", "json": "skipped", "plain": "skipped"}
    assert "Deploy it with cube cuttle today." in emulator.stats["texts"]


def test_normalize_off_sends_numbers_as_written(tmp_path: Path, emulator: Emulator) -> None:
    source = tmp_path / "c.csv"
    source.write_text("id,text\na,It weighs 350 g and costs $5.\n")
    run(source, tmp_path / "out", [emulator.url], settings=RunSettings(normalize="off"))
    assert "It weighs 350 g and costs $5." in emulator.stats["texts"]
    run(source, tmp_path / "out2", [emulator.url])
    assert (
        "It weighs three hundred and fifty grams and costs five dollars."
        in (emulator.stats["texts"])
    )


def test_a_bad_lexicon_stops_the_run_before_any_request(tmp_path: Path, emulator: Emulator) -> None:
    shutil.copy(BOOK / "en" / "02-closures.md", tmp_path / "a.md")
    lexicon = tmp_path / "lexicon.csv"
    lexicon.write_text("word,say\nkubectl,kube control\n")
    with pytest.raises(ConfigError, match="term,spoken,language"):
        run(tmp_path / "a.md", tmp_path / "out", [emulator.url],
            settings=RunSettings(lexicon=str(lexicon)))  # fmt: skip
    assert not emulator.stats["texts"] and not (tmp_path / "out").exists()


def test_preview_lists_what_is_said_differently_and_plan_counts_it(tmp_path: Path, capsys) -> None:
    from fishflow.cli import main

    lesson = BOOK / "en" / "02-closures.md"
    lexicon = str(BOOK / "lexicon.csv")
    assert main(["preview", str(lesson), "--lexicon", lexicon]) == 0
    out = capsys.readouterr().out
    assert "said: kubectl → kube control (lexicon) · stdout → standard out (lexicon)" in out
    assert "@babel/register → at babel slash register (code)" in out
    assert "2024-03-01 → March first, twenty twenty-four (number date)" in out
    assert "said differently from the text: 13 code," in out
    assert main(["plan", str(lesson), "--out", str(tmp_path / "o"), "--lexicon", lexicon]) == 0
    assert "said in words   13 code, 4 number cardinal, 3 number unit" in capsys.readouterr().out
