"""Output hygiene end to end: removed items, --prune, gc, plan, progress lines off a terminal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
from prefect.settings import get_current_settings

from fishflow.cli import main
from fishflow.testing.emulator import Emulator, EmulatorConfig
from tests.flows.helpers import as_text, flow_run_messages, latest_run, manifest, run

LONG = " ".join(
    f"Sentence {i} of the long lesson explains one more idea in detail." for i in range(8)
)
ROWS = {
    "a": "A stoneware mug. Dishwasher safe, 350 ml.",
    "b": "A walnut board, oiled by hand.",
    "c": "这款绿茶产自杭州。每罐250克。",
}


def write_catalog(path: Path, rows: dict[str, str]) -> str:
    pd.DataFrame({"id": list(rows), "text": list(rows.values())}).to_csv(path, index=False)
    return str(path)


def cli(capsys, *args: str) -> tuple[int, str]:
    code = main([*args])
    return code, capsys.readouterr().out


def test_an_item_gone_from_the_source_gets_one_removed_row(
    tmp_path: Path, emulator: Emulator, capsys
) -> None:
    out = tmp_path / "out"
    source = tmp_path / "catalog.csv"
    write_catalog(source, ROWS)
    code, _ = cli(capsys, "run", str(source), "--out", str(out), "--server", emulator.url)
    assert code == 0
    first = manifest(out, "items", latest_run(out)).set_index("item_id")

    write_catalog(source, {k: v for k, v in ROWS.items() if k != "b"})
    # A retry of some rows sees only those rows: it must not call the others gone.
    partial = run(source, out, [emulator.url], only_rows=[0])
    assert partial.removed == 0
    assert "removed" not in set(manifest(out, "items", partial.run_id).status)

    code, printed = cli(capsys, "run", str(source), "--out", str(out), "--server", emulator.url)
    assert code == 0
    assert "0 ok, 2 skipped, 0 failed, 1 removed" in printed
    items = manifest(out, "items", latest_run(out))
    removed = items[items.status == "removed"]
    assert list(removed.item_id) == ["b"]
    assert list(removed.source_row) == [-1]
    assert removed.audio_uri.iloc[0] == first.loc["b", "audio_uri"]
    # Every source row still exactly once, as before.
    assert sorted(items[items.status != "removed"].source_row) == [0, 1]
    assert Path(as_text(first.loc["b", "audio_uri"])).exists()  # kept: no --prune

    code, printed = cli(capsys, "run", str(source), "--out", str(out), "--server", emulator.url)
    assert code == 0 and "removed" not in printed  # reported once
    assert "removed" not in set(manifest(out, "items", latest_run(out)).status)

    # The id comes back: a new item, synthesised again.
    write_catalog(source, ROWS)
    code, printed = cli(capsys, "run", str(source), "--out", str(out), "--server", emulator.url)
    assert "1 ok, 2 skipped, 0 failed" in printed


def test_prune_deletes_removed_audio_captions_and_old_formats_only(
    tmp_path: Path, emulator: Emulator, capsys
) -> None:
    out = tmp_path / "out"
    source = tmp_path / "catalog.csv"
    write_catalog(source, ROWS)
    assert cli(capsys, "run", str(source), "--out", str(out), "--server", emulator.url)[0] == 0
    audio = out / "audio"
    captions = [audio / f"b{s}" for s in (".vtt", ".srt", ".chapters.vtt")] + [audio / "a.vtt"]
    for path in captions:
        path.write_text("WEBVTT\n")
    (out / "notes.txt").write_text("mine")

    write_catalog(source, {k: v for k, v in ROWS.items() if k != "b"})
    code, printed = cli(
        capsys, "run", str(source), "--out", str(out), "--server", emulator.url,
        "--audio-format", "flac", "--prune",
    )  # fmt: skip
    assert code == 0
    assert "2 ok, 0 skipped, 0 failed, 1 removed, 6 pruned" in printed
    # The first five by name, and where the rest are.
    assert printed.count("  pruned: ") == 5 and f"  pruned: {audio / 'b.wav'}" in printed
    assert "every pruned file is named in the run's log" in printed
    left = sorted(p.relative_to(out).as_posix() for p in audio.rglob("*"))
    # Each current item keeps its audio in the new format and its captions.
    current = [f"audio/{i}.{ext}" for i in ("a", "c") for ext in ("flac", "srt", "vtt")]
    assert left == current
    assert (out / "notes.txt").read_text() == "mine"
    # The manifests say the same: a and c are current as flac, b is removed.
    items = manifest(out, "items", latest_run(out)).set_index("item_id")
    assert items.loc["a", "audio_uri"] == str(audio / "a.flac")
    assert items.loc["b", "status"] == "removed"


def test_a_republished_item_leaves_no_caption_files_it_no_longer_has(
    tmp_path: Path, emulator: Emulator, capsys
) -> None:
    out, source = tmp_path / "out", tmp_path / "course"
    source.mkdir()
    lesson = source / "lesson.md"
    lesson.write_text("# Intro\n\nA first idea. A second idea.\n\n## Setup\n\nInstall it.\n")
    assert cli(capsys, "run", str(source), "--out", str(out), "--server", emulator.url)[0] == 0
    audio = out / "audio"
    assert (audio / "lesson.chapters.vtt").exists()

    lesson.write_text("A first idea. A second idea, said differently.\n\nInstall it.\n")
    assert cli(capsys, "run", str(source), "--out", str(out), "--server", emulator.url)[0] == 0
    assert sorted(p.name for p in audio.iterdir()) == ["lesson.srt", "lesson.vtt", "lesson.wav"]
    assert "differently" in (audio / "lesson.vtt").read_text()
    assert manifest(out, "items", latest_run(out)).chapters_uri.isna().all()

    lesson.write_text("A first idea, once more. A second idea.\n")
    code, _ = cli(
        capsys, "run", str(source), "--out", str(out), "--server", emulator.url,
        "--captions", "off",
    )  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in audio.iterdir()) == ["lesson.wav"]


def test_chapters_turned_on_later_are_added_to_unchanged_items(
    tmp_path: Path, emulator: Emulator, capsys
) -> None:
    out, source = tmp_path / "out", tmp_path / "course"
    source.mkdir()
    (source / "lesson.md").write_text("# Intro\n\nA first idea.\n\n## Setup\n\nInstall it.\n")
    (source / "notes.md").write_text("No headings here. Just a note.\n")
    run = ["run", str(source), "--out", str(out), "--server", emulator.url, "--audio-format", "mp3"]
    assert cli(capsys, *run, "--chapters", "off")[0] == 0
    assert not (out / "audio" / "lesson.chapters.vtt").exists()
    requests = emulator.stats["requests"]

    assert cli(capsys, *run)[0] == 0
    items = manifest(out, "items", latest_run(out)).set_index("item_id")
    # The lesson is published again with its chapters, from the chunk cache; the note, which
    # has no headings, stays as it was.
    assert items.loc["lesson.md", "status"] == "ok"
    assert as_text(items.loc["lesson.md", "chapters_uri"]).endswith("lesson.chapters.vtt")
    assert "Setup" in (out / "audio" / "lesson.chapters.vtt").read_text()
    assert items.loc["notes.md", "status"] == "skipped"
    assert emulator.stats["requests"] == requests
    from mutagen.id3 import ID3

    assert len(ID3(out / "audio" / "lesson.mp3").getall("CHAP")) == 2

    assert cli(capsys, *run)[0] == 0  # now complete: skipped, and still naming its chapters
    again = manifest(out, "items", latest_run(out)).set_index("item_id")
    assert set(again.status) == {"skipped"}
    assert as_text(again.loc["lesson.md", "chapters_uri"]) == as_text(
        items.loc["lesson.md", "chapters_uri"]
    )


def test_gc_drops_only_unreferenced_chunk_audio(tmp_path: Path, emulator: Emulator, capsys) -> None:
    out = tmp_path / "out"
    source = tmp_path / "catalog.csv"
    rows = {"long": LONG, "edit": LONG.replace("Sentence", "Step"), "gone": LONG.upper()}
    write_catalog(source, rows)
    assert cli(capsys, "run", str(source), "--out", str(out), "--server", emulator.url)[0] == 0
    first = manifest(out, "chunks", latest_run(out))
    # Chunk audio is kept compressed: well under the wav audio it was made for.
    assert not list((out / ".fishflow" / "chunks").rglob("*.s16"))  # all used, so compressed
    cache_bytes = sum(p.stat().st_size for p in (out / ".fishflow" / "chunks").rglob("*.flac"))
    audio_bytes = manifest(out, "items", latest_run(out))["bytes"].sum()
    assert 0 < cache_bytes <= 0.5 * audio_bytes
    edited = rows["edit"].replace("Step 3 of", "Stage 3 of")
    write_catalog(source, {"long": LONG, "edit": edited})
    assert cli(capsys, "run", str(source), "--out", str(out), "--server", emulator.url)[0] == 0
    second = manifest(out, "chunks", latest_run(out))
    assert len(second) and second.reused.sum() == len(second) - 1  # one sentence re-made

    referenced = set(first[first.item_id == "long"].chunk_key) | set(second.chunk_key)
    unreferenced = set(first.chunk_key) - referenced
    assert unreferenced  # the edited chunk's old audio and every chunk of "gone"
    cache = out / ".fishflow" / "chunks"

    def cached() -> set[str]:
        files = [p for p in cache.rglob("*") if p.is_file() and p.name != ".fishflow-chunk-cache"]
        return {p.name.split(".", 1)[0] for p in files}

    assert cached() == set(first.chunk_key) | set(second.chunk_key)
    code, printed = cli(capsys, "gc", str(out), "--dry-run", "--grace-s", "0")
    assert code == 0
    assert len([ln for ln in printed.splitlines() if ln.startswith("would delete")]) == len(
        unreferenced
    )
    assert cached() == set(first.chunk_key) | set(second.chunk_key)  # dry run: nothing gone
    code, printed = cli(capsys, "gc", str(out))
    assert "deleted 0 chunk file(s)" in printed  # all younger than the default grace
    code, printed = cli(capsys, "gc", str(out), "--grace-s", "0")
    assert f"deleted {len(unreferenced)} chunk file(s)" in printed
    assert cached() == referenced

    # What gc kept is what the next run reuses: a forced run sends nothing.
    before = emulator.stats["requests"]
    code, _ = cli(
        capsys, "run", str(source), "--out", str(out), "--server", emulator.url, "--force"
    )
    assert code == 0 and emulator.stats["requests"] == before


def test_plan_counts_what_a_run_would_do_and_sends_nothing(
    tmp_path: Path, emulator: Emulator, capsys
) -> None:
    out = tmp_path / "out"
    source = tmp_path / "catalog.csv"
    rows = {**ROWS, "long": LONG, "copy": LONG, "blank": " "}
    write_catalog(source, rows)

    def plan() -> dict:
        code, printed = cli(capsys, "plan", str(source), "--out", str(out), "--json")
        assert code == 0
        return json.loads(printed)

    before = plan()
    assert not out.exists()  # nothing written, not even the folder
    assert emulator.stats["requests"] == 0
    assert (before["rows"], before["rejected"], before["items"]) == (6, 1, 5)
    summary = run(source, out, [emulator.url])
    chunks = manifest(out, "chunks", summary.run_id)
    items = manifest(out, "items", summary.run_id)
    # The plan's counts are what the run did.
    assert before["chunks"] == len(chunks)
    assert before["distinct_chunks"] == chunks.chunk_key.nunique() == before["requests"]
    assert before["requests"] == emulator.stats["requests"]
    assert before["chars"] == items.chars.sum()
    assert before["skipped_items"] == 0

    requests = emulator.stats["requests"]
    rows["b"] = "A walnut board, oiled by hand twice."
    write_catalog(source, rows)
    after = plan()
    assert emulator.stats["requests"] == requests
    assert (after["skipped_items"], after["items_to_make"], after["requests"]) == (4, 1, 1)
    # Measured on the first run: audio per character and server time per audio second.
    assert "measured" in after["audio_basis"] and "measured" in after["server_basis"]
    measured = items[items.item_id == "b"].duration_s.iloc[0]
    assert 0.5 * measured < after["request_audio_s"] < 2 * measured
    assert after["server_s"] > 0


def test_without_a_terminal_progress_lines_go_to_stderr(tmp_path: Path) -> None:
    source = tmp_path / "catalog.csv"
    write_catalog(source, {f"item-{i}": f"Item number {i} is here." for i in range(12)})
    env = {
        **os.environ,
        "PREFECT_API_URL": str(get_current_settings().api.url),
        "FISHFLOW_PROGRESS_INTERVAL_S": "0.2",
    }
    # Slow answers so that the run outlasts a few intervals.
    with Emulator(EmulatorConfig(workers=1, service_time_s=0.1)) as emu:
        done = subprocess.run(
            [sys.executable, "-m", "fishflow.cli", "run", str(source), "--out",
             str(tmp_path / "out"), "--server", emu.url],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("fishflow: ")]
    pattern = re.compile(
        r"fishflow: (\d+) of 12 items \(\d+%\), (\d+) ok, (\d+) failed(, ETA \d+(m\d\d)?s)?$"
    )
    matches = [pattern.match(ln) for ln in lines]
    assert lines and all(matches), done.stderr
    counts = [int(m.group(1)) for m in matches if m is not None]
    assert counts == sorted(counts)
    assert any(0 < c < 12 for c in counts)  # seen mid-run, not only before or after
    assert "12 ok, 0 skipped, 0 failed" in done.stdout


def test_a_flow_without_the_cli_logs_progress_with_chunks_and_audio(
    tmp_path: Path, monkeypatch
) -> None:
    """A deployment's run (the flow on a worker, no CLI): one long item is not silent."""
    source = tmp_path / "book.jsonl"
    text = " ".join(f"Sentence number {i} of the only chapter is here." for i in range(40))
    source.write_text(json.dumps({"id": "book", "text": text}) + "\n")
    monkeypatch.setenv("FISHFLOW_PROGRESS_INTERVAL_S", "0.2")
    # Slow answers so that the run outlasts a few intervals.
    with (
        flow_run_messages() as logged,
        Emulator(EmulatorConfig(workers=1, service_time_s=0.1)) as emu,
    ):
        summary = run(source, tmp_path / "out", [emu.url], settings_kw={"chunk_bytes": 200})
    assert summary.ok == 1
    pattern = re.compile(
        r"fishflow: (\d) of 1 items \(\d+%\), \d ok, 0 failed(?:, ETA \S+)?; "
        r"([\d,]+) chunks, (\d+s|\d+m\d\ds|\d+h\d\dm) of audio$"
    )
    progress = [message for message in logged if message.startswith("fishflow: ")]
    lines = [m for message in progress if (m := pattern.match(message))]
    assert progress and len(lines) == len(progress), progress  # every line reads as it should
    # The first line comes as the run's items start, before any of them.
    assert lines[0].group(0) == "fishflow: 0 of 1 items (0%), 0 ok, 0 failed; 0 chunks, 0s of audio"
    chunks = len(manifest(tmp_path / "out", "chunks", summary.run_id))
    assert chunks >= 10
    # Seen mid-item: some chunks placed, the item not yet finished.
    assert any(m.group(1) == "0" and 0 < int(m.group(2)) < chunks for m in lines)
