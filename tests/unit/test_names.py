from __future__ import annotations

import pytest

from fishflow.pipeline import Item, Rejection, RunSpec, audio_key, validate_row
from fishflow.publish import sidecar_keys
from fishflow.sources import SourceRow


@pytest.mark.parametrize(
    ("item_id", "key"),
    [
        ("lessons/1-intro/README.md", "audio/lessons/1-intro/README.wav"),
        ("notes/today.TXT", "audio/notes/today.wav"),
        ("book.markdown", "audio/book.wav"),
        ("sku-1.5", "audio/sku-1.5.wav"),  # only source-file extensions are dropped
        ("docs/.md", "audio/docs/md-"),  # nothing left to name: kept (cleaned, hashed)
    ],
)
def test_audio_names_drop_the_source_file_extension(item_id: str, key: str) -> None:
    assert audio_key(item_id, "wav").startswith(key)


def test_captions_sit_beside_the_audio_with_its_stem() -> None:
    assert sidecar_keys("audio/lessons/README.mp3") == {
        "vtt": "audio/lessons/README.vtt",
        "srt": "audio/lessons/README.srt",
        "chapters": "audio/lessons/README.chapters.vtt",
    }


def test_two_ids_that_would_share_an_audio_file_are_not_both_accepted() -> None:
    seen: dict[str, int] = {}
    spec = RunSpec()
    first = validate_row(SourceRow(3, "intro.md", "Hello there."), spec, seen)
    second = validate_row(SourceRow(7, "intro.txt", "Hello again."), spec, seen)
    again = validate_row(SourceRow(9, "intro.md", "Hello once more."), spec, seen)
    assert isinstance(first, Item)
    assert isinstance(second, Rejection) and isinstance(again, Rejection)
    assert "share its audio file (audio/intro.<format>) with the id at row 3" in second.reason
    assert again.reason == "duplicate id 'intro.md' (first at row 3)"


def test_items_have_no_length_limit() -> None:
    text = "A sentence of a very long book. " * 10_000  # 320,000 characters
    assert isinstance(validate_row(SourceRow(0, "book", text), RunSpec(), {}), Item)
