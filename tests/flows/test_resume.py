"""Never redo, never lose: SIGKILL and resume, SIGTERM, retry-errors.

Runs here are `fishflow` processes pointed at the session's Prefect API, killed at points chosen
by how many requests the emulator has answered (counted, not timed).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.settings import get_current_settings

from fishflow.cli import main
from fishflow.manifest import Journal, journal_dir
from fishflow.storage import LocalStore
from fishflow.testing.emulator import Emulator, EmulatorConfig, Faults
from tests.flows.helpers import as_text, decode, latest_run, manifest, spoken

N = 40


def catalog(tmp_path: Path) -> Path:
    path = tmp_path / "c.jsonl"
    path.write_text(
        "\n".join(
            json.dumps({"id": f"i{i:02d}", "text": f"Item {i} has a sentence of its own to say."})
            for i in range(N)
        )
    )
    return path


def fishflow(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`fishflow` in its own process on the test's Prefect API (in `env`, else this one's)."""
    env = {**(env or os.environ), "PREFECT_API_URL": str(get_current_settings().api.url)}
    return subprocess.Popen(
        [sys.executable, "-m", "fishflow.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def start_run(source: Path, out: Path, emu: Emulator, run_id: str, *extra: str) -> subprocess.Popen:
    """`fishflow run` in its own process, quiet, with a known run id."""
    return fishflow(
        "run",
        str(source),
        "--out",
        str(out),
        "--server",
        emu.url,
        "--quiet",
        "--run-id",
        run_id,
        *extra,
    )


def wait_for_requests(emu: Emulator, count: int, proc: subprocess.Popen) -> None:
    while emu.stats["ok"] < count:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)


def finished_before(out: Path, run_id: str) -> set[str]:
    path = os.path.join(journal_dir(LocalStore(str(out))), f"run={run_id}.jsonl")
    done: set[str] = set()
    for item, _, _ in Journal.read(path):
        if item.status == "ok":
            assert item.item_id is not None  # only a row without an id has none, and it fails
            done.add(item.item_id)
    return done


def test_sigkill_at_several_points_then_resume(tmp_path: Path) -> None:
    source, out = catalog(tmp_path), tmp_path / "out"
    texts = {f"i{i:02d}": spoken(f"Item {i} has a sentence of its own to say.") for i in range(N)}
    rng = random.Random(11)
    with Emulator(EmulatorConfig(service_time_s=0.03)) as emu:
        run_id = "killed-run"
        proc = start_run(source, out, emu, run_id, "--batch-size", "7")
        finished: set[str] = set()
        requests_when_done: dict[str, int] = {}
        for point in sorted(rng.sample(range(4, N - 4), 3)):
            wait_for_requests(emu, point, proc)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            done = finished_before(out, run_id)
            assert finished <= done  # nothing recorded is ever lost
            before = emu.stats["texts"]
            requests_when_done.update({i: before[texts[i]] for i in done - finished})
            finished = done
            proc = fishflow("resume", run_id, "--out", str(out), "--quiet")
            # Resumed work never asks again for an item that was recorded as finished.
            wait_for_requests(emu, emu.stats["ok"] + 2, proc)
            again = [
                i
                for i in finished
                if emu.stats["texts"].get(texts[i], 0) != before.get(texts[i], 0)
            ]
            assert not again, (again, sorted(finished))
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        counts = emu.stats["texts"]
    items = manifest(out, "items", run_id)
    assert sorted(items["source_row"]) == list(range(N))  # every row exactly once
    assert (items["status"] == "ok").all()
    # An item recorded as finished was never synthesised again (requests in flight when a run
    # was killed may be, which is why this compares with the count at the kill).
    assert all(counts[texts[i]] == n for i, n in requests_when_done.items())
    for row in items.itertuples():
        assert decode(Path(as_text(row.audio_uri)).read_bytes())[1] == pytest.approx(
            row.duration_s, abs=1e-3
        )
    assert not os.path.exists(
        os.path.join(journal_dir(LocalStore(str(out))), f"run={run_id}.jsonl")
    )


def test_rerun_with_the_same_arguments_after_a_kill_skips_finished_items(tmp_path: Path) -> None:
    source, out = catalog(tmp_path), tmp_path / "out"
    with Emulator(EmulatorConfig(service_time_s=0.03)) as emu:
        proc = start_run(source, out, emu, "first")
        wait_for_requests(emu, N // 2, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        finished = finished_before(out, "first")
        code = main(["run", str(source), "--out", str(out), "--server", emu.url])
        counts = emu.stats["texts"]
    items = manifest(out, "items", latest_run(out)).set_index("item_id")
    assert code == 0 and len(items) == N
    assert finished and all(items.loc[i, "status"] == "skipped" for i in finished)
    assert max(counts.values()) <= 2 and sum(counts.values()) < 2 * N


def test_sigterm_stops_cleanly_and_resume_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fishflow.cli.flow import Progress

    started: list[int] = []
    original = Progress.start

    def start(self: Progress, already: int, total: int | None) -> None:
        started.append(already)  # what the progress line counts from
        original(self, already, total)

    monkeypatch.setattr(Progress, "start", start)
    source, out = catalog(tmp_path), tmp_path / "out"
    with Emulator(EmulatorConfig(service_time_s=0.03)) as emu:
        proc = start_run(source, out, emu, "termed", "--batch-size", "5")
        wait_for_requests(emu, N // 3, proc)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        assert "fishflow resume termed" in stderr and "Traceback" not in stderr
        parts = list((out / "manifests" / "run=termed" / "parts").glob("items-*.parquet"))
        assert parts  # the batches finished so far are on record, as whole Parquet files
        import pyarrow.parquet as pq

        recorded = sum(pq.read_table(p).num_rows for p in parts)
        assert recorded > 0
        assert main(["resume", "termed", "--out", str(out)]) == 0
    # Progress counts on from what was recorded (the parts, and items the journal holds since
    # the last part), not from 0.
    assert len(started) == 1 and recorded <= started[0] < N
    items = manifest(out, "items", "termed")
    assert sorted(items["source_row"]) == list(range(N))


def test_retry_errors_reruns_only_the_failed_items(tmp_path: Path, capsys) -> None:
    source, out = catalog(tmp_path), tmp_path / "out"
    faults = Faults(error_rate=0.3)
    with Emulator(EmulatorConfig(faults=faults, seed=2)) as flaky:
        code = main(
            ["run", str(source), "--out", str(out), "--server", flaky.url, "--max-attempts", "1"]
        )
    first = latest_run(out)
    failed = manifest(out, "items", first).query("status == 'failed'")
    assert code == 2 and len(failed) > 0
    assert manifest(out, "errors", first)["retryable"].all()
    with Emulator() as healthy:
        code = main(["retry-errors", str(out), "--run", first, "--server", healthy.url])
        requests = healthy.stats["requests"]
    retried = manifest(out, "items", latest_run(out))
    assert code == 0 and latest_run(out) != first
    assert sorted(retried["source_row"]) == sorted(failed["source_row"])
    assert (retried["status"] == "ok").all() and requests == len(failed)
    assert main(["retry-errors", str(out)]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_an_edited_sentence_is_the_only_chunk_synthesised_again(tmp_path: Path) -> None:
    paragraphs = [
        f"Paragraph {i} of the lesson explains one idea in enough words to fill it."
        for i in range(5)
    ]
    source, out = tmp_path / "c.jsonl", tmp_path / "out"
    source.write_text(json.dumps({"id": "lesson", "text": "\n\n".join(paragraphs)}))
    with Emulator() as emu:
        assert (
            main(
                ["run", str(source), "--out", str(out), "--server", emu.url, "--chunk-bytes", "100"]
            )
            == 0
        )
        first = emu.stats["requests"]
        paragraphs[2] = "Paragraph 2 now says something else entirely, in new words."
        source.write_text(json.dumps({"id": "lesson", "text": "\n\n".join(paragraphs)}))
        assert (
            main(
                ["run", str(source), "--out", str(out), "--server", emu.url, "--chunk-bytes", "100"]
            )
            == 0
        )
        second = emu.stats["requests"] - first
    chunks = manifest(out, "chunks", latest_run(out))
    assert first == 5 and second == 1
    assert chunks["reused"].sum() == 4 and len(chunks) == 5
