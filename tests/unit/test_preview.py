"""`fishflow preview`: what a run would speak, chunk by chunk, without Prefect or a server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fishflow.cli import main

COURSE = Path(__file__).parents[2] / "examples" / "course"
LESSON = "lessons/3-cloud/README.md"


def test_preview_prints_each_chunk_with_the_pause_after_it(capsys) -> None:
    assert main(["preview", str(COURSE), "--id", LESSON]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"== {LESSON} (row 4, en, ")
    assert out[1] == "[chunk 0, 27 B] Send readings to the cloud. ⟂ 1200 ms (section)"
    assert "[chunk 2, 13 B] Introduction. ⟂ 1200 ms (section)" in out
    assert any(line.endswith("⟂ 700 ms (paragraph)") for line in out)
    assert any(line.endswith("⟂ 150 ms (clause)") for line in out)  # a sentence too long
    chunks = [line for line in out if line.startswith("[chunk ")]
    assert chunks[-1].endswith("(end)")
    assert out[-2].startswith("fishflow: 1 row, ") and "end mid-sentence" in out[-2]
    # What is said differently from how it is written: listed under its chunk, and counted.
    assert all(line.startswith(("== ", "[chunk ", "    said: ", "fishflow: ")) for line in out)
    assert out[-1].startswith("fishflow: said differently from the text: ")
    spoken = " ".join(chunks)
    assert "://" not in spoken and "<APP_NAME>" not in spoken and "`" not in spoken


def test_preview_follows_the_run_options(capsys) -> None:
    args = ["preview", str(COURSE), "--id", LESSON, "--pause-section-ms", "2000"]
    assert main([*args, "--markdown-code", "silent", "--chunk-bytes", "120"]) == 0
    out = capsys.readouterr().out
    assert "⟂ 2000 ms (section)" in out and "Code example." not in out
    assert "budget 120 B" in out
    assert main(["preview", str(COURSE), "--limit", "2", "--text-format", "plain"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n== ") + out.startswith("== ") == 2
    assert "# Getting started" in out or "# コネクテッド" in out  # plain: the Markdown as is


def test_rows_that_would_fail_are_counted_apart(tmp_path: Path, capsys) -> None:
    (tmp_path / "good.md").write_text("# Intro\n\nHello there.")
    (tmp_path / "empty.md").write_text("")
    assert main(["preview", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "== empty.md (row 0): fails: text is empty" in out
    assert out[-1].startswith("fishflow: 2 rows (1 would fail before synthesis), 2 chunks")


def test_an_unknown_id_is_one_clear_line(capsys) -> None:
    assert main(["preview", str(COURSE), "--id", "nope.md"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "fishflow: error: no item with id 'nope.md' in the source"


def test_preview_starts_neither_prefect_nor_a_server(tmp_path: Path) -> None:
    source = tmp_path / "catalog.csv"
    source.write_text("id,text\na,Hello there. This is a short row.\n")
    code = (
        "import sys; from fishflow.cli import main; "
        f"assert main(['preview', {str(source)!r}]) == 0; "
        "assert not [m for m in sys.modules if m.split('.')[0] == 'prefect'], 'prefect imported'"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "[chunk 0, 33 B] Hello there. This is a short row. (end)" in done.stdout
