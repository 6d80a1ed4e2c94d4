"""A full disk loses nothing: the run stops with one line, and once there is room `resume`
redoes every item the disk refused (a real tmpfs of a few MB, mounted for the test)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fishflow.cli import main
from fishflow.cli.prefect_console import OwnWarningsOnly
from fishflow.testing.emulator import Emulator, EmulatorConfig
from tests.flows.helpers import as_text, decode, manifest

N = 60  # about 9 MB of WAV: more than the 6 MB disk holds


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.skip(f"mounting a 6 MB tmpfs needs root: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("again", ["resume", "rerun"])
def test_disk_full_stops_in_one_line_and_resume_or_a_rerun_redoes_what_it_refused(
    again: str,
    tmp_path: Path,
    small_disk: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import prefect

    console = OwnWarningsOnly(os.path.dirname(prefect.__file__))
    source, out = tmp_path / "c.jsonl", small_disk / "out"
    rows = [
        {"id": f"i{i:02d}", "text": f"Item {i} is a sturdy oak chair with a woven seat, cheap."}
        for i in range(N)
    ]
    rows.append({"id": "blank", "text": "   "})  # fails on its own account, not the disk's
    source.write_text("\n".join(json.dumps(r) for r in rows))
    with Emulator(EmulatorConfig(workers=4)) as emu:
        run = ["run", str(source), "--out", str(out), "--server", emu.url, "--quiet"]
        code = main([*run, "--run-id", "full", "--batch-size", "10"])
        stderr = capsys.readouterr().err
        assert code == 1, stderr
        assert stderr.count("\n") == 1 and "No space left on device" in stderr, stderr
        assert stderr.startswith("fishflow: error: ")
        # Nor on the console through logging: what the CLI lets through has no traceback.
        shown = [r for r in caplog.records if console.filter(r)]
        assert not [r.getMessage() for r in shown if r.exc_info], [r.getMessage() for r in shown]
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
        if again == "resume":
            code = main(["resume", "full", "--out", str(out), "--quiet"])
        else:
            code = main([*run, "--run-id", "again"])
    # Exit status as `run`'s: 2, for the blank row (failed on its own account).
    stdout, stderr = capsys.readouterr()
    assert code == 2 and "1 failed" in stdout, stdout + stderr
    items = manifest(out, "items", "full" if again == "resume" else "again")
    assert sorted(items["source_row"]) == list(range(N + 1))  # every row exactly once
    if again == "resume":  # the whole run's count, not only what this session did
        assert f"{N} ok, 0 skipped, 1 failed" in stdout
    else:  # what the first run published is skipped, the rest made now
        assert f"{(items['status'] == 'ok').sum()} ok, " in stdout
    done = items[items["status"] != "failed"]
    assert list(items[items["status"] == "failed"]["item_id"]) == ["blank"]
    for row in done.itertuples():
        assert decode(Path(as_text(row.audio_uri)).read_bytes())[1] == pytest.approx(
            row.duration_s, abs=1e-3
        )
