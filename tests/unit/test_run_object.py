"""The core runs a whole run without Prefect: `Run.execute()` with its plain step, against the
emulator over a real socket, in a process that never imports Prefect."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import soundfile as sf

SCRIPT = """
import asyncio, json, sys
from fishflow.record import RunRequest, read_run_record
from fishflow.run import Run, new_run_id, run_spec
from fishflow.storage import open_store
from fishflow.testing.emulator import Emulator

source, out = sys.argv[1], sys.argv[2]
with Emulator() as emulator:
    request = RunRequest(run_id=new_run_id(), source=source, out=out, servers=[emulator.url])
    run = Run(request, source=source, spec=run_spec(request.settings))
    summary = asyncio.run(run.execute())  # the plain step: each batch processed in place
record = read_run_record(open_store(out), request.run_id)
print(json.dumps({
    "summary": summary.model_dump(mode="json"),
    "record_source": record.source,
    "prefect_imported": any(m == "prefect" or m.startswith("prefect.") for m in sys.modules),
}))
"""


def test_a_run_executes_without_prefect(tmp_path: Path) -> None:
    source = tmp_path / "catalog.csv"
    source.write_text(
        "id,text\n"
        "a,The first lamp is bright.\n"
        "b,The second lamp is dim.\n"
        "c,\n"  # no text: one failed row, with its reason
        "d,The fourth lamp is warm.\n"
    )
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(source), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    summary = result["summary"]
    assert (summary["ok"], summary["failed"]) == (3, 1)
    assert summary["failures"][0]["item_id"] == "c"
    assert not result["prefect_imported"]
    assert result["record_source"] == str(source)
    items = pd.read_parquet(summary["manifests"]["items"])
    assert sorted(items["item_id"]) == ["a", "b", "c", "d"]
    ok = items[items["status"] == "ok"]
    for uri, duration in zip(ok["audio_uri"], ok["duration_s"], strict=True):
        assert sf.info(uri).duration == pytest.approx(duration, abs=0.01) and duration > 1.0
