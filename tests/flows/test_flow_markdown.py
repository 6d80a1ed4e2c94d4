"""A Markdown lesson end to end: what the server is sent, and the pauses in the stitched audio."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import regex

from fishflow.items import Item, item_chunks, validate_row
from fishflow.run import run_spec
from fishflow.settings import RunSettings
from fishflow.sources import read_source
from fishflow.testing.emulator import Emulator
from tests.flows.helpers import as_text, decode, manifest, run

LESSON = Path(__file__).parents[2] / "examples" / "course" / "lessons" / "3-cloud" / "README.md"


def test_a_lesson_is_sent_as_speech_and_stitched_with_pauses_by_boundary(
    tmp_path: Path, emulator: Emulator
) -> None:
    source = tmp_path / "course"
    source.mkdir()
    shutil.copy(LESSON, source / "lesson.md")
    settings = RunSettings(pause_section_ms=1500)
    summary = run(source, tmp_path / "out", [emulator.url], settings=settings)
    assert summary.ok == 1
    row = manifest(tmp_path / "out", "items", summary.run_id).iloc[0]
    chunks = manifest(tmp_path / "out", "chunks", summary.run_id).sort_values("chunk_index")

    texts = emulator.stats["texts"]
    assert "Send readings to the cloud." in texts and "Code example." not in texts
    for text in texts:  # nothing unspeakable reached the server
        assert not regex.search(r"://|`|\||<[A-Za-z/]|\p{Extended_Pictographic}", text), text

    # The same chunks, and so the same joins, as `fishflow preview` shows.
    spec = run_spec(settings)
    entry = validate_row(next(iter(read_source(str(source))))[0], spec, {})
    assert isinstance(entry, Item)
    expected = item_chunks(entry, spec)
    assert list(chunks["utf8_bytes"]) == [c.utf8_bytes for c in expected]
    pauses = sum(spec.audio.pause_after_ms(c.boundary) for c in expected) / 1000
    assert {c.boundary for c in expected} >= {"section", "paragraph", "clause"}
    _, duration, _ = decode(Path(row.audio_uri).read_bytes())
    assert duration == pytest.approx(chunks["duration_s"].sum() + pauses, abs=0.01)


def test_a_lesson_of_code_alone_is_published_with_a_warning(
    tmp_path: Path, emulator: Emulator, caplog
) -> None:
    source = tmp_path / "course"
    source.mkdir()
    (source / "snippets.md").write_text("```python\nprint('hi')\n```\n\n    make test\n")
    (source / "intro.md").write_text("# Intro\n\nWelcome.\n\n```sh\nmake demo\n```\n")
    summary = run(source, tmp_path / "out", [emulator.url])
    assert summary.ok == 2
    items = manifest(tmp_path / "out", "items", summary.run_id).set_index("item_id")
    _, duration, _ = decode(Path(as_text(items.loc["snippets.md", "audio_uri"])).read_bytes())
    assert duration == pytest.approx(items.loc["snippets.md", "duration_s"], abs=0.01)
    warned = [r.getMessage() for r in caplog.records if "is only code blocks" in r.getMessage()]
    assert len(warned) == 1 and "'snippets.md'" in warned[0] and "Code example." in warned[0]
    # Silent code leaves nothing to speak: the item fails, as the warning says.
    silent = run(
        source, tmp_path / "silent", [emulator.url], settings=RunSettings(markdown_code="silent")
    )
    rows = manifest(tmp_path / "silent", "items", silent.run_id).set_index("item_id")
    assert rows.loc["snippets.md", "status"] == "failed" and rows.loc["intro.md", "status"] == "ok"
