"""What an item will speak: plain text or Markdown, and the content key that follows it."""

from __future__ import annotations

import pytest

from fishflow.items import Item, RunSpec, item_chunks, validate_row
from fishflow.run import run_spec
from fishflow.settings import RunSettings
from fishflow.sources import SourceRow

MARKDOWN = (
    "# Welcome\n\nThis course is **short**. See [the notes](http://x.y).\n\n```\nx\n```\n\n"
    "That is all for today."
)


def item(text: str, file_format: str | None = None, **settings: object) -> Item:
    spec = run_spec(RunSettings(**settings))  # type: ignore[arg-type]
    entry = validate_row(SourceRow(0, "a", text, text_format=file_format), spec, {})
    assert isinstance(entry, Item)
    return entry


def test_md_files_are_read_as_markdown_and_other_text_as_plain_under_auto() -> None:
    md = item(MARKDOWN, "markdown")
    assert md.text == (
        "Welcome.\n\nThis course is short. See the notes.\n\nCode example.\n\n"
        "That is all for today."
    )
    assert [(c.text, c.boundary, c.heading_level) for c in md.chunks] == [
        ("Welcome.", "section", 1),
        ("This course is short. See the notes. Code example.", "paragraph", 0),
        ("That is all for today.", "end", 0),
    ]
    plain = item(MARKDOWN)  # a CSV cell under auto: plain text, as before
    assert plain.text.startswith("# Welcome\n\nThis course is **short**.")
    assert {c.heading_level for c in plain.chunks} == {0}
    # The run's text_format overrides the file type either way.
    assert item(MARKDOWN, None, text_format="markdown").text == md.text
    assert item(MARKDOWN, "markdown", text_format="plain").text == plain.text


def test_the_content_key_follows_what_is_sent_and_the_pauses_between() -> None:
    base = item(MARKDOWN, "markdown").content_key
    assert item(MARKDOWN, "markdown").content_key == base
    for changed in (
        {"pause_paragraph_ms": 900},  # the join after "See the notes."
        {"pause_section_ms": 2000},  # after the heading
        {"chunk_bytes": 30},  # the paragraph no longer fits one chunk
        {"markdown_code": "silent"},  # the cue is not sent
        {"audio_format": "mp3"},
        {"temperature": 0.5},
    ):
        assert item(MARKDOWN, "markdown", **changed).content_key != base, changed
    # Settings that change nothing this item sends or how it is joined leave it alone: its
    # audio is not made again.
    for unchanged in (
        {"pause_sentence_ms": 100},
        {"pause_clause_ms": 50},
        {"chunk_bytes": 300},
        {"batch_size": 10},
        {"markdown_tables": "skip"},  # it has no table
    ):
        assert item(MARKDOWN, "markdown", **unchanged).content_key == base, unchanged
    short = item("One short plain sentence.")
    assert item("One short plain sentence.", pause_paragraph_ms=10).content_key == (
        short.content_key
    )
    # Same words, one a heading and one a paragraph: the pause after differs, so do the keys.
    heading = item("# Welcome home.\n\nThe lesson starts here.", "markdown")
    paragraph = item("Welcome home.\n\nThe lesson starts here.", "markdown")
    assert heading.text == paragraph.text and heading.content_key != paragraph.content_key


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
