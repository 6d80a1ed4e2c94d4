"""What fishflow reads and writes is its own: a folder source's links out, huge files, read
errors, BOMs and fifos; names that fit any file system and never meet; gc that deletes only
chunk audio fishflow wrote."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pandas as pd
import pytest

from fishflow.cli import main
from fishflow.testing.emulator import Emulator
from tests.flows.helpers import as_text, latest_run, manifest

SECRET = "SECRET OUTSIDE TEXT never to be spoken"


def every_byte_under(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_a_folder_source_reads_only_its_own_regular_files(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    docs, private = tmp_path / "docs", tmp_path / "private"
    docs.mkdir()
    private.mkdir()
    (private / "notes.md").write_text(SECRET)
    (docs / "link.md").symlink_to(private / "notes.md")
    lesson = "# Chapter one\n\nThe first part.\n\n# Chapter two\n\nThe second part."
    (docs / "lesson.md").write_bytes(("\ufeff" + lesson).encode())
    (docs / "plain.txt").write_text("A plain page: 1 --> 2, <b>bold</b> & more.")
    (docs / "broken.md").write_text("A page on a failing disk.")
    with open(docs / "huge.txt", "wb") as fh:
        os.truncate(fh.fileno(), 2 << 30)  # 2 GB, sparse: no disk used, no memory if unread
    os.mkfifo(docs / "pipe.md")  # opened, it would block the run for ever
    real_open = os.open

    def failing_disk(path: str, *args: object, **kwargs: object) -> int:
        if str(path).endswith("docs/broken.md"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", failing_disk)
    out = tmp_path / "out"
    assert main(["run", str(docs), "--out", str(out), "--server", emulator.url]) == 2
    assert "Traceback" not in capsys.readouterr().err
    items = manifest(out, "items", latest_run(out)).set_index("item_id")
    assert items.status.to_dict() == {
        "broken.md": "failed",
        "huge.txt": "failed",
        "lesson.md": "ok",
        "link.md": "failed",
        "plain.txt": "ok",
    }  # the fifo is no row: skipped with a note
    errors = manifest(out, "errors", latest_run(out)).set_index("item_id")
    assert set(errors.stage) == {"source"} and not errors.retryable.any()
    assert "outside the source folder" in as_text(errors.loc["link.md", "error_message"])
    assert "over the 20,000,000-byte limit" in as_text(errors.loc["huge.txt", "error_message"])
    assert "Input/output error" in as_text(errors.loc["broken.md", "error_message"])
    # The outside text is in no request, no audio, no caption, no manifest.
    assert not any("SECRET" in text for text in emulator.stats["texts"])
    assert SECRET.encode() not in every_byte_under(out)
    # The BOM is gone: the first line is a heading, the first of two chapters.
    chapters = Path(as_text(items.loc["lesson.md", "chapters_uri"])).read_text()
    assert "Chapter one" in chapters and "Chapter two" in chapters
    assert not any("\ufeff" in text for text in emulator.stats["texts"])
    # Captions are data in both formats: the text's arrow and tags are escaped.
    for suffix in (".srt", ".vtt"):
        text = Path(as_text(items.loc["plain.txt", "audio_uri"])).with_suffix(suffix).read_text()
        assert sum("-->" in line for line in text.splitlines()) == text.count(" --> ") == 1
        assert "1 --&gt; 2, &lt;b&gt;bold&lt;/b&gt; &amp; more." in text and "<" not in text


def test_names_fit_in_bytes_and_no_two_items_write_one_file(
    tmp_path: Path, emulator: Emulator, capsys
) -> None:
    long_id = "漢" * 200  # 600 bytes: cut to 120 characters, 360 bytes, it stopped the run
    rows = [
        {"id": long_id, "text": "这是一个名字很长的条目。"},
        {"id": "x", "text": "# Heading\n\nThe body of x."},
        {"id": "x.chapters", "text": "Another item, whose captions would be x's chapters."},
        {"id": "blocked", "text": "Its file's place is taken."},
        {"id": "last", "text": "Still published."},
    ]
    source = tmp_path / "catalog.jsonl"
    pd.DataFrame(rows).to_json(source, orient="records", lines=True, force_ascii=False)
    out = tmp_path / "out"
    (out / "audio" / "blocked.wav").mkdir(parents=True)  # a folder where its audio goes
    args = ["run", str(source), "--out", str(out), "--server", emulator.url]
    assert main([*args, "--text-format", "markdown"]) == 2  # items failed, the run went on
    assert "Traceback" not in capsys.readouterr().err
    items = manifest(out, "items", latest_run(out)).set_index("item_id")
    assert items.status.to_dict() == {
        long_id: "ok",
        "x": "ok",
        "x.chapters": "failed",
        "blocked": "failed",
        "last": "ok",
    }
    audio = Path(as_text(items.loc[long_id, "audio_uri"]))
    assert audio.is_file() and len(audio.name.encode()) <= 255
    errors = manifest(out, "errors", latest_run(out)).set_index("item_id")
    assert "would write audio/x.chapters.vtt, a file of the id at row 1" in as_text(
        errors.loc["x.chapters", "error_message"]
    )
    assert errors.loc["x.chapters", "stage"] == "source"
    blocked = errors.loc["blocked"]
    assert blocked.stage == "upload" and "blocked.wav" in blocked.error_message
    assert "Heading" in (out / "audio" / "x.chapters.vtt").read_text()  # x's chapters


LONG = " ".join(f"Sentence {i} of the long lesson explains one more idea." for i in range(8))


def test_gc_deletes_only_chunk_audio_fishflow_wrote_under_its_marker(
    tmp_path: Path, emulator: Emulator, capsys
) -> None:
    source = tmp_path / "catalog.csv"
    pd.DataFrame({"id": ["long"], "text": [LONG]}).to_csv(source, index=False)
    out, cache = tmp_path / "out", tmp_path / "my-cache"
    args = ["run", str(source), "--out", str(out), "--server", emulator.url]
    assert main([*args, "--chunk-cache", str(cache)]) == 0
    assert (cache / ".fishflow-chunk-cache").is_file()  # made by the run, so marked
    chunk_files = sorted(p for p in cache.rglob("*.flac"))
    assert len(chunk_files) > 1
    capsys.readouterr()

    # An ordinary folder given by mistake: refused in one line, nothing deleted.
    home = tmp_path / "home"
    (home / "ab").mkdir(parents=True)
    (home / "thesis.tex").write_text("years of work")
    (home / "ab" / ("ab" * 16 + ".44100.flac")).write_bytes(b"looks like a chunk")
    old = time.time() - 86_400
    for path in home.rglob("*"):
        os.utime(path, (old, old))
    before = sorted((p, p.read_bytes()) for p in home.rglob("*") if p.is_file())
    assert main(["gc", str(out), "--chunk-cache", str(home), "--grace-s", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a chunk cache fishflow made" in err
    assert sorted((p, p.read_bytes()) for p in home.rglob("*") if p.is_file()) == before

    # The run's own cache: an unreferenced chunk goes, a stranger's file stays and is named.
    orphan = cache / "cd" / ("cd" * 16 + ".44100.flac")
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"an old chunk")
    stranger = cache / "README.txt"
    stranger.write_text("mine")
    for path in (orphan, stranger):
        os.utime(path, (old, old))
    assert main(["gc", str(out), "--chunk-cache", str(cache), "--grace-s", "0"]) == 0
    printed = capsys.readouterr().out
    assert (
        "deleted 1 chunk file(s)" in printed and "left 1 file(s) fishflow did not write" in printed
    )
    assert not orphan.exists() and stranger.read_text() == "mine"
    assert sorted(p for p in cache.rglob("*.flac")) == chunk_files  # referenced: kept
