"""What an item will speak: plain text or Markdown, and the content key that follows it."""

from __future__ import annotations

import pytest

from fishflow.pipeline import Item, RunSpec, item_chunks, validate_row
from fishflow.run import run_spec
from fishflow.settings import RunSettings
from fishflow.sources import SourceRow

MARKDOWN = "# Welcome\n\nThis course is **short**. See [the notes](http://x.y).\n\n```\nx\n```"


def item(text: str, file_format: str | None = None, **settings: object) -> Item:
    spec = run_spec(RunSettings(**settings))  # type: ignore[arg-type]
    entry = validate_row(SourceRow(0, "a", text, text_format=file_format), spec, set())
    assert isinstance(entry, Item)
    return entry


def test_md_files_are_read_as_markdown_and_other_text_as_plain_under_auto() -> None:
    md = item(MARKDOWN, "markdown")
    assert md.text == "Welcome.\n\nThis course is short. See the notes.\n\nCode example."
    assert [b.kind for b in md.blocks] == ["heading", "paragraph", "code"]
    plain = item(MARKDOWN)  # a CSV cell under auto: plain text, as before
    assert plain.text.startswith("# Welcome\n\nThis course is **short**.")
    assert [b.kind for b in plain.blocks] == ["paragraph"] * 3
    # The run's text_format overrides the file type either way.
    assert item(MARKDOWN, None, text_format="markdown").text == md.text
    assert item(MARKDOWN, "markdown", text_format="plain").text == plain.text


def test_the_content_key_follows_pauses_budget_and_block_kinds() -> None:
    base = item(MARKDOWN, "markdown").content_key
    assert item(MARKDOWN, "markdown").content_key == base
    for changed in (
        {"pause_paragraph_ms": 900},
        {"pause_section_ms": 2000},
        {"pause_sentence_ms": 100},
        {"pause_clause_ms": 50},
        {"chunk_bytes": 200},
        {"max_new_tokens": 512},  # a smaller token cap makes a smaller budget
    ):
        assert item(MARKDOWN, "markdown", **changed).content_key != base, changed
    # Same words, one a heading and one a paragraph: pauses differ, so do the keys.
    heading = item("# Welcome home.", "markdown")
    paragraph = item("Welcome home.", "markdown")
    assert heading.text == paragraph.text and heading.content_key != paragraph.content_key
    # Markdown options show in the spoken text, which the key hashes.
    assert item(MARKDOWN, "markdown", markdown_code="silent").content_key != base


def test_chunks_carry_the_pause_after_them() -> None:
    md = item(
        "# Title\n\nThe first paragraph says one thing. Then another.\n\n"
        "The second paragraph closes the lesson.",
        "markdown",
    )
    spec: RunSpec = run_spec(RunSettings())
    chunks = item_chunks(md, spec)
    assert [(c.text, c.boundary) for c in chunks] == [
        ("Title.", "section"),
        ("The first paragraph says one thing. Then another.", "paragraph"),
        ("The second paragraph closes the lesson.", "end"),
    ]
    assert [spec.audio.pause_after_ms(c.boundary) for c in chunks] == [1200, 700, 0]


def test_an_old_run_record_with_one_pause_still_loads() -> None:
    assert RunSettings(pause_ms=250).pause_sentence_ms == 250  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        RunSettings(pause_sentence_ms=-1)
