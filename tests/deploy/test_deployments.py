"""Runs of fishflow's deployments through a real Prefect server and process workers."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType

from fishflow.emulator import Emulator
from tests.deploy.conftest import API_KEY
from tests.deploy.site import PrefectSite

FINAL = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}


@pytest.fixture(scope="module")
def worker(site: PrefectSite) -> Any:
    site.start_worker("main")
    yield
    site.stop_worker("main")


def catalog(path: Path, n: int, *, prefix: str = "p", bad: bool = False) -> Path:
    rows = [
        {"id": f"{prefix}{i}", "text": f"Item {i} of {prefix} is a sturdy thing. It ships fast."}
        for i in range(n)
    ]
    if bad:
        rows.append({"id": f"{prefix}-blank", "text": " "})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def submit(site: PrefectSite, source: Path, out: Path, *flags: str) -> tuple[str, UUID]:
    """`fishflow run ... --deployment catalog-manual`, as a user submits a run."""
    done = site.fishflow("run", str(source), "--out", str(out), "--deployment", "catalog-manual",
                         *flags)  # fmt: skip
    assert done.returncode == 0, done.stderr
    words = done.stdout.split()
    run_id = words[words.index("run") + 1]
    flow_run_id = UUID(words[words.index("(flow") + 2].rstrip(")"))
    return run_id, flow_run_id


async def final_state(flow_run_id: UUID, timeout_s: float = 300) -> FlowRun:
    deadline = time.monotonic() + timeout_s
    async with get_client() as client:
        while True:
            run = await client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.type in FINAL:
                return run
            assert time.monotonic() < deadline, f"run still {run.state} after {timeout_s} s"
            await asyncio.sleep(0.5)


def items(out: Path, run_id: str) -> pd.DataFrame:
    return pd.read_parquet(out / "manifests" / f"run={run_id}" / "items.parquet")


async def artifacts(flow_run_id: UUID) -> dict[str, Any]:
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a.data for a in found}


def test_a_manual_run_with_the_key_from_a_secret_block_completes(
    site: PrefectSite, worker: None, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run_id, flow_run_id = submit(site, catalog(tmp_path / "c.csv", 6), out)
    run = asyncio.run(final_state(flow_run_id))
    assert run.state.type == StateType.COMPLETED, run.state.message
    assert run.name == run_id
    assert {"fishflow", "deployment:catalog-manual", "source:c.csv"} <= set(run.tags)
    table = items(out, run_id)
    assert sorted(table["source_row"]) == list(range(6))
    assert set(table["status"]) == {"ok"}
    found = asyncio.run(artifacts(flow_run_id))
    assert "items.parquet" in found["fishflow-catalog-manual"]
    assert found["fishflow-catalog-manual-progress"] == 100.0
    assert API_KEY not in site.worker_log("main")


def test_a_run_with_a_bad_row_ends_failed_with_counts_and_manifest(
    site: PrefectSite, worker: None, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run_id, flow_run_id = submit(site, catalog(tmp_path / "c.csv", 3, bad=True), out)
    run = asyncio.run(final_state(flow_run_id))
    assert run.state.type == StateType.FAILED
    message = run.state.message or ""
    assert "1 of 4 items failed" in message
    assert f"run={run_id}/items.parquet" in message
    table = items(out, run_id)
    assert len(table) == 4 and (table["status"] == "failed").sum() == 1
    failures = asyncio.run(artifacts(flow_run_id))["fishflow-catalog-manual-failures"]
    assert "text is empty" in str(failures)


def test_the_nightly_cron_produces_scheduled_runs(site: PrefectSite) -> None:
    async def scheduled() -> list[FlowRun]:
        async with get_client() as client:
            return await client.read_flow_runs(
                deployment_filter=DeploymentFilter(
                    name=DeploymentFilterName(any_=["catalog-nightly"])
                ),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])
                    )
                ),
            )

    deadline = time.monotonic() + 90
    while not (runs := asyncio.run(scheduled())):
        assert time.monotonic() < deadline, "the scheduler made no run of the nightly cron"
        time.sleep(1)
    starts = [r.expected_start_time.astimezone(ZoneInfo("Europe/Berlin")) for r in runs]
    assert all((s.hour, s.minute) == (2, 0) for s in starts)


def test_two_concurrent_runs_never_put_more_than_the_shared_limit_on_a_server(
    site: PrefectSite, emulator: Emulator, worker: None, tmp_path: Path
) -> None:
    emulator.reset_stats()
    # Each run has 4 batches and its own limit of 4; the shared limit is 2.
    flags = ("--batch-size", "10", "--max-in-flight", "4")
    runs = [
        submit(site, catalog(tmp_path / f"{p}.csv", 40, prefix=p), tmp_path / p, *flags)
        for p in ("a", "b")
    ]
    for _, flow_run_id in runs:
        state = asyncio.run(final_state(flow_run_id)).state
        assert state.type == StateType.COMPLETED, state.message
    assert emulator.stats["max_in_flight"] <= 2
    assert emulator.stats["requests"] == 80


def test_a_sharded_run_on_two_workers_writes_one_manifest_with_every_row_once(
    site: PrefectSite, worker: None, tmp_path: Path
) -> None:
    site.start_worker("second")
    try:
        out = tmp_path / "out"
        run_id, flow_run_id = submit(site, catalog(tmp_path / "c.csv", 30), out, "--shards", "2")
        run = asyncio.run(final_state(flow_run_id))
        assert run.state.type == StateType.COMPLETED, run.state.message
    finally:
        site.stop_worker("second")
    table = items(out, run_id)
    assert sorted(table["source_row"]) == list(range(30))
    assert set(table["status"]) == {"ok"} and set(table["run_id"]) == {run_id}
    for shard in (0, 1):  # each child wrote its own manifest under its own run id
        assert len(items(out, f"{run_id}-s{shard}")) > 0
    record = (out / "manifests" / f"run={run_id}" / "run.json").read_text()
    assert f"{run_id}-s0" in record and f"{run_id}-s1" in record


def test_a_killed_workers_run_ends_crashed_and_a_retry_loses_nothing(
    site: PrefectSite, emulator: Emulator, tmp_path: Path
) -> None:
    for name in list(site.workers):  # the run must go to the worker that dies
        site.stop_worker(name)
    emulator.reset_stats()
    site.start_worker("doomed")
    out = tmp_path / "out"
    source = catalog(tmp_path / "c.csv", 400)
    run_id, flow_run_id = submit(site, source, out, "--batch-size", "20")
    deadline = time.monotonic() + 120
    while emulator.stats["ok"] < 40:  # some items finished, many still to do
        assert time.monotonic() < deadline, "the run never got going"
        time.sleep(0.1)
    site.stop_worker("doomed", signal.SIGKILL)  # the machine is gone: worker and flow run

    run = asyncio.run(final_state(flow_run_id, timeout_s=240))
    assert run.state.type == StateType.CRASHED
    site.start_worker("rescue")
    try:
        retried = site.prefect("flow-run", "retry", str(flow_run_id))
        assert retried.returncode == 0, retried.stdout + retried.stderr
        run = asyncio.run(final_state(flow_run_id))
        assert run.state.type == StateType.COMPLETED, run.state.message
    finally:
        site.stop_worker("rescue")
    table = items(out, run_id)
    assert sorted(table["source_row"]) == list(range(400))
    assert set(table["status"]) == {"ok"}
    # Items are one chunk each: only those in flight at the kill (2 requests on the server,
    # an item or two being written) were sent twice.
    assert emulator.stats["requests"] <= 400 + 4
