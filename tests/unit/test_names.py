from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from fishflow.errors import StorageError
from fishflow.items import Item, Rejection, RunSpec, audio_key, validate_row
from fishflow.publish import sidecar_keys
from fishflow.sources import SourceRow
from fishflow.storage import LocalStore, output_write_error


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


@pytest.mark.parametrize(
    "item_id",
    ["漢" * 200, "книга/" + "я" * 300, "a/" + "🐟" * 100 + "/b.md", "x" * 1000, "é" * 130],
)
def test_every_published_name_fits_in_255_bytes_per_component(item_id: str) -> None:
    key = audio_key(item_id, "flac")
    names = [key, *sidecar_keys(key).values()]
    for name in names:
        assert all(len(part.encode()) <= 255 for part in name.split("/")), name
    assert len(key.encode()) <= 800  # S3's 1,024 bytes leave room for the output's prefix
    assert audio_key(item_id, "flac") == key  # a pure function of the id
    assert audio_key(item_id + "!", "flac") != key  # cut ids keep apart (hash of the whole id)


def test_ids_of_ascii_names_keep_the_names_earlier_runs_published() -> None:
    assert audio_key("x" * 120, "wav") == f"audio/{'x' * 120}.wav"
    assert audio_key("x" * 121, "wav").startswith(f"audio/{'x' * 120}-")


@pytest.mark.parametrize("order", [("x", "x.chapters"), ("x.chapters", "x")])
def test_an_id_whose_captions_are_anothers_chapters_is_refused(order: tuple[str, str]) -> None:
    seen: dict[str, int] = {}
    spec = RunSpec()
    first = validate_row(SourceRow(0, order[0], "# Part\n\nHello there."), spec, seen)
    second = validate_row(SourceRow(1, order[1], "Hello again."), spec, seen)
    assert isinstance(first, Item) and isinstance(second, Rejection)
    assert second.reason == (
        f"id {order[1]!r} would write audio/x.chapters.vtt, a file of the id at row 0: "
        "rename one of them"
    )
    # Names that only look alike are fine.
    assert isinstance(validate_row(SourceRow(2, "x.chapter", "Fine."), spec, seen), Item)
    assert isinstance(validate_row(SourceRow(3, "y.chapters.vtt", "Fine."), spec, seen), Item)


def test_a_write_failure_of_one_file_fails_its_item_and_of_the_output_stops_the_run(
    tmp_path: Path,
) -> None:
    root = str(tmp_path)
    for code in (errno.ENAMETOOLONG, errno.EISDIR, errno.EACCES, errno.EILSEQ):
        error = output_write_error(OSError(code, os.strerror(code)), f"{root}/audio/x", root)
        assert not error.fatal and not error.retryable, code
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        error = output_write_error(OSError(code, os.strerror(code)), f"{root}/audio/x", root)
        assert error.fatal and error.retryable, code
    store = LocalStore(root)
    (tmp_path / "audio" / "taken.wav").mkdir(parents=True)  # a folder where the file goes
    with pytest.raises(StorageError) as failed:
        store.put("audio/taken.wav", b"RIFF", "audio/wav", {})
    assert not failed.value.fatal and "audio/taken.wav" in failed.value.message
    store.put("audio/other.wav", b"RIFF", "audio/wav", {})  # the output itself is fine
