"""Runs of fishflow's deployments through a real Prefect server and process workers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
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
    FlowRunFilterName,
    FlowRunFilterState,
    FlowRunFilterStateType,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun, State, StateType
from pydantic import SecretStr

from fishflow.manifest import ItemRow, ManifestWriter
from fishflow.storage import LocalStore
from fishflow.testing.emulator import Emulator, EmulatorConfig
from tests.deploy.conftest import API_KEY
from tests.deploy.site import ROOT, PrefectSite
from tests.flows.test_resume import finished_before

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


def start_without_run_id(source: Path, out: Path, *, settings: dict[str, Any]) -> UUID:
    """A run of catalog-manual started as the UI's Run does: parameters only, no run id."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    parameters = {"source": str(source), "out": str(out), "settings": settings}
    run = run_deployment("refresh-catalog-audio/catalog-manual", parameters=parameters,
                         timeout=0, as_subflow=False)  # fmt: skip
    assert isinstance(run, FlowRun)
    return run.id


def state_of(run: FlowRun) -> State:
    assert run.state is not None, f"flow run {run.name} has no state"
    return run.state


async def final_state(flow_run_id: UUID, timeout_s: float = 300) -> FlowRun:
    deadline = time.monotonic() + timeout_s
    async with get_client() as client:
        while True:
            run = await client.read_flow_run(flow_run_id)
            if run.state is not None and state_of(run).type in FINAL:
                return run
            assert time.monotonic() < deadline, f"run still {run.state} after {timeout_s} s"
            await asyncio.sleep(0.5)


def items(out: Path, run_id: str) -> pd.DataFrame:
    return pd.read_parquet(out / "manifests" / f"run={run_id}" / "items.parquet")


async def logged(flow_run_id: UUID, fragment: str, timeout_s: float = 60) -> list[str]:
    """The flow run's log messages holding `fragment`, waiting for its logs to reach the API
    (the run's process sends them in batches, the last ones as it exits)."""
    deadline = time.monotonic() + timeout_s
    async with get_client() as client:
        while True:
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
            if found := [log.message for log in logs if fragment in log.message]:
                return found
            if time.monotonic() > deadline:
                return []
            await asyncio.sleep(0.5)


async def artifacts(flow_run_id: UUID) -> dict[str, Any]:
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a.data for a in found if a.key is not None}


def test_a_manual_run_with_the_key_from_a_secret_block_completes(
    site: PrefectSite, worker: None, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run_id, flow_run_id = submit(site, catalog(tmp_path / "c.csv", 6), out)
    run = asyncio.run(final_state(flow_run_id))
    assert state_of(run).type == StateType.COMPLETED, state_of(run).message
    assert run.name == run_id
    assert {"fishflow", "deployment:catalog-manual", "source:c.csv"} <= set(run.tags)
    table = items(out, run_id)
    assert sorted(table["source_row"]) == list(range(6))
    assert set(table["status"]) == {"ok"}
    found = asyncio.run(artifacts(flow_run_id))
    assert "items.parquet" in found["fishflow-catalog-manual"]
    assert found["fishflow-catalog-manual-progress"] == 100.0
    # A clean run's failures table is empty, so the key's latest is not an earlier run's.
    empty: dict[str, list[object]] = {"item_id": [], "source_row": [], "error": []}
    assert json.loads(found["fishflow-catalog-manual-failures"]) == empty
    # No CLI watches a deployment's run: the flow logs its own progress lines.
    lines = asyncio.run(logged(flow_run_id, "fishflow: "))
    assert "fishflow: 0 of 6 items (0%), 0 ok, 0 failed; 0 chunks, 0s of audio" in lines
    assert API_KEY not in site.worker_log("main")


def test_a_run_with_a_bad_row_ends_failed_with_counts_and_manifest(
    site: PrefectSite, worker: None, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run_id, flow_run_id = submit(site, catalog(tmp_path / "c.csv", 3, bad=True), out)
    run = asyncio.run(final_state(flow_run_id))
    assert state_of(run).type == StateType.FAILED
    message = state_of(run).message or ""
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
    starts = [
        r.expected_start_time.astimezone(ZoneInfo("Europe/Berlin"))
        for r in runs
        if r.expected_start_time is not None
    ]
    assert len(starts) == len(runs)
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
        state = state_of(asyncio.run(final_state(flow_run_id)))
        assert state.type == StateType.COMPLETED, state.message
    assert emulator.stats["max_in_flight"] <= 2
    assert emulator.stats["requests"] == 80


def flow_run_processes(flow_run_id: UUID) -> list[int]:
    """The processes a worker started for a flow run (found by the id in their environment)."""
    marker = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue  # gone, or not ours to read
    return found


async def flow_runs_named(name: str) -> list[FlowRun]:
    async with get_client() as client:
        return await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
        )


def test_a_sharded_run_on_two_workers_writes_one_manifest_with_every_row_once(
    site: PrefectSite, worker: None, tmp_path: Path
) -> None:
    """Two child runs on two workers; one is killed mid-way (its process, as when a machine
    dies) and run again; the parent writes one manifest, with the item gone since an earlier
    run recorded as removed (only the parent sees the whole source)."""
    out = tmp_path / "out"
    store = LocalStore(str(out))
    gone = ItemRow(run_id="20261124T000000Z-000000", item_id="gone", source_row=0, status="ok",
                   created_at=datetime(2026, 11, 24, tzinfo=UTC), content_key="k",
                   audio_uri=store.uri("audio/gone.wav"))  # fmt: skip
    ManifestWriter(store, gone.run_id).write_part("p", [gone], [], [])
    n = 160
    site.start_worker("second")
    # A server of its own without a shared limit (so the run says --local-limit: the site has
    # limits for others): a killed run's slots would stay leased for a minute, and this test
    # is about the re-run.
    with Emulator(EmulatorConfig(workers=2, service_time_s=0.05)) as emu:
        try:
            source = catalog(tmp_path / "c.csv", n)
            run_id, flow_run_id = submit(site, source, out, "--shards", "2", "--batch-size",
                                         "10", "--server", emu.url, "--local-limit")  # fmt: skip
            child_id = f"{run_id}-s0"
            deadline = time.monotonic() + 120
            while len(finished_before(out, child_id)) < 10:  # shard 0 is well under way
                assert time.monotonic() < deadline, "shard 0 never got going"
                time.sleep(0.1)
            (child,) = asyncio.run(flow_runs_named(child_id))
            for pid in flow_run_processes(child.id):
                os.kill(pid, signal.SIGKILL)
            run = asyncio.run(final_state(flow_run_id))
            assert state_of(run).type == StateType.COMPLETED, state_of(run).message
        finally:
            site.stop_worker("second")
        requests = emu.stats["requests"]
    assert state_of(asyncio.run(final_state(child.id))).type == StateType.CRASHED
    table = items(out, run_id)
    done = table[table.status != "removed"]
    assert sorted(done["source_row"]) == list(range(n))
    assert set(done["status"]) == {"ok"} and set(table["run_id"]) == {run_id}
    assert table[table.status == "removed"]["item_id"].tolist() == ["gone"]
    for shard in (0, 1):  # each child wrote its own manifest under its own run id
        assert len(items(out, f"{run_id}-s{shard}")) > 0
    record = json.loads((out / "manifests" / f"run={run_id}" / "run.json").read_text())
    assert [(s["run_id"], s["runs"]) for s in record["shard_runs"]] == [
        (f"{run_id}-s0", 2),
        (f"{run_id}-s1", 1),
    ]
    # Nothing done twice but what was in flight at the kill (its local limit: 4 requests).
    assert requests <= n + 4


async def active_slots(name: str) -> int:
    async with get_client() as client:
        return int((await client.read_global_concurrency_limit_by_name(name)).active_slots)


def wait_for(what: str, check: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.2)


@pytest.fixture
def slow_server(site: PrefectSite) -> Iterator[Emulator]:
    """A server of its own with a shared limit of 2, slow enough (0.25 s a request) that a run
    of a hundred items (15 s) is still going when its cancel arrives."""
    with Emulator(EmulatorConfig(workers=2, service_time_s=0.25)) as emu:
        created = site.fishflow("limits", "create", "--server", f"{emu.url}#limit=2")
        assert created.returncode == 0, created.stderr
        yield emu


def test_a_cancelled_run_stops_gives_its_slots_back_and_resumes_with_every_row_once(
    site: PrefectSite, slow_server: Emulator, worker: None, tmp_path: Path
) -> None:
    """`prefect flow-run cancel` (the UI's Cancel): the run stops within seconds, its slots of
    the server's shared limit come back at once (not when their leases expire a minute
    later), it ends Cancelled with one line saying how to finish it, and `fishflow resume`
    finishes it."""
    from fishflow.pool import limit_name

    name, n = limit_name(slow_server.url), 120
    out = tmp_path / "out"
    run_id, flow_run_id = submit(site, catalog(tmp_path / "c.csv", n), out, "--batch-size",
                                 "10", "--server", slow_server.url)  # fmt: skip
    wait_for("the run holds the whole shared limit", lambda: asyncio.run(active_slots(name)) == 2,
             120)  # fmt: skip
    wait_for("some items finished", lambda: len(finished_before(out, run_id)) >= 10, 60)
    cancelled = site.prefect("flow-run", "cancel", str(flow_run_id))
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    wait_for("slots given back", lambda: asyncio.run(active_slots(name)) == 0, 15)
    run = asyncio.run(final_state(flow_run_id, timeout_s=15))
    assert state_of(run).type == StateType.CANCELLED, run.state
    wait_for("the run's process exits", lambda: not flow_run_processes(flow_run_id), 10)
    stopped = f"run {run_id}: cancelled; the items it finished are kept"
    assert len(asyncio.run(logged(flow_run_id, stopped))) == 1
    for noise in ("Crash detected", "Finished in state Running"):
        assert not asyncio.run(logged(flow_run_id, noise, timeout_s=0)), noise
    # Batches cut short are not recorded as failed: their items are done again on resume.
    parts = (out / "manifests" / f"run={run_id}" / "parts").glob("items-*.parquet")
    assert "failed" not in {s for part in parts for s in pd.read_parquet(part)["status"]}
    assert slow_server.stats["requests"] < n  # it did stop mid-way

    resumed = site.fishflow("resume", run_id, "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    table = items(out, run_id)
    assert sorted(table["source_row"]) == list(range(n))
    assert set(table["status"]) == {"ok"} and set(table["run_id"]) == {run_id}
    # Only what was in flight at the cancel (2 requests, an item or two being written) was
    # sent twice.
    assert slow_server.stats["requests"] <= n + 4


def test_a_killed_runs_slots_come_back_within_seconds(
    site: PrefectSite, slow_server: Emulator, worker: None, tmp_path: Path
) -> None:
    """The run's process is killed (out of memory, SIGKILL): its worker ends it Crashed and the
    flow's on-crashed hook gives its slots back, rather than their leases expiring a minute
    later while every other run on the server waits."""
    from fishflow.pool import limit_name

    name = limit_name(slow_server.url)
    out = tmp_path / "out"
    _, flow_run_id = submit(site, catalog(tmp_path / "c.csv", 120), out, "--batch-size", "10",
                            "--server", slow_server.url)  # fmt: skip
    wait_for("the run holds the whole shared limit", lambda: asyncio.run(active_slots(name)) == 2,
             120)  # fmt: skip
    for pid in flow_run_processes(flow_run_id):
        os.kill(pid, signal.SIGKILL)
    # The hook says so in the run's log: given back by it, not by their leases expiring (the
    # deadline is loose for a loaded machine; the log line is what tells the two apart).
    assert asyncio.run(logged(flow_run_id, "gave back 2 slot(s)", timeout_s=90))
    wait_for("slots given back", lambda: asyncio.run(active_slots(name)) == 0, 30)
    assert state_of(asyncio.run(final_state(flow_run_id, timeout_s=30))).type == StateType.CRASHED


def test_cancelling_a_sharded_run_cancels_its_children_and_their_slots_come_back(
    site: PrefectSite, slow_server: Emulator, worker: None, tmp_path: Path
) -> None:
    """Cancel the parent: its children stop too and their slots come back; the parent's log
    says to retry it (its children then resume where they stopped)."""
    from fishflow.pool import limit_name

    name, n = limit_name(slow_server.url), 160
    out = tmp_path / "out"
    run_id, flow_run_id = submit(site, catalog(tmp_path / "c.csv", n), out, "--shards", "2",
                                 "--batch-size", "10", "--server", slow_server.url)  # fmt: skip

    def children() -> list[FlowRun]:
        return [r for i in (0, 1) for r in asyncio.run(flow_runs_named(f"{run_id}-s{i}"))]

    wait_for("both children running", lambda: [state_of(r).type for r in children()]
             == [StateType.RUNNING] * 2, 120)  # fmt: skip
    wait_for("the children hold slots", lambda: asyncio.run(active_slots(name)) > 0, 60)
    cancelled = site.prefect("flow-run", "cancel", str(flow_run_id))
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    run = asyncio.run(final_state(flow_run_id, timeout_s=30))
    assert state_of(run).type == StateType.CANCELLED, run.state
    for child in children():
        state = state_of(asyncio.run(final_state(child.id, timeout_s=30)))
        assert state.type == StateType.CANCELLED, (child.name, state)
    wait_for("slots given back", lambda: asyncio.run(active_slots(name)) == 0, 15)
    assert asyncio.run(logged(flow_run_id, f"`prefect flow-run retry {flow_run_id}`"))


def test_a_401_with_the_key_from_a_secret_block_names_that_block(
    site: PrefectSite, emulator: Emulator, worker: None, tmp_path: Path
) -> None:
    from prefect.blocks.system import Secret

    block, wrong = "fish-speech-wrong-key", "wrong-key-never-logged-91c2"
    Secret(value=SecretStr(wrong)).save(block, overwrite=True)
    try:
        _, flow_run_id = submit(site, catalog(tmp_path / "c.csv", 3), tmp_path / "out",
                                "--api-key-secret", block)  # fmt: skip
        run = asyncio.run(final_state(flow_run_id))
    finally:  # the site's other runs know one Secret block only
        Secret.delete(block)
    assert state_of(run).type == StateType.FAILED
    message = state_of(run).message or ""
    assert f"HTTP 401 from {emulator.url}" in message
    assert f"(check the API key: Prefect Secret block '{block}')" in message
    assert "FISHFLOW_API_KEY" not in message
    assert wrong not in message and wrong not in site.worker_log("main")


def test_a_killed_workers_run_ends_crashed_and_a_retry_loses_nothing(
    site: PrefectSite, emulator: Emulator, tmp_path: Path
) -> None:
    for name in list(site.workers):  # the run must go to the worker that dies
        site.stop_worker(name)
    emulator.reset_stats()
    site.start_worker("doomed")
    out = tmp_path / "out"
    source = catalog(tmp_path / "c.csv", 400)
    # Started as the UI or `prefect deployment run` starts it: no run id given, so the flow
    # run is named after the run id the run picks.
    flow_run_id = start_without_run_id(source, out, settings={"batch_size": 20})
    deadline = time.monotonic() + 120
    while emulator.stats["ok"] < 40:  # some items finished, many still to do
        assert time.monotonic() < deadline, "the run never got going"
        time.sleep(0.1)
    site.stop_worker("doomed", signal.SIGKILL)  # the machine is gone: worker and flow run

    run = asyncio.run(final_state(flow_run_id, timeout_s=240))
    assert state_of(run).type == StateType.CRASHED
    run_id = run.name
    site.start_worker("rescue")
    try:
        retried = site.prefect("flow-run", "retry", str(flow_run_id))
        assert retried.returncode == 0, retried.stdout + retried.stderr
        run = asyncio.run(final_state(flow_run_id))
        assert state_of(run).type == StateType.COMPLETED, state_of(run).message
    finally:
        site.stop_worker("rescue")
    # The retry finished the same run: same run id, one run folder, its journal gone.
    assert run.name == run_id
    assert [p.name for p in (out / "manifests").iterdir()] == [f"run={run_id}"]
    assert not (out / ".fishflow" / "journal" / f"run={run_id}.jsonl").exists()
    table = items(out, run_id)
    assert sorted(table["source_row"]) == list(range(400))
    assert set(table["status"]) == {"ok"} and set(table["run_id"]) == {run_id}
    # Items are one chunk each: only those in flight at the kill (2 requests on the server,
    # an item or two being written) were sent twice.
    assert emulator.stats["requests"] <= 400 + 4


def test_deploying_again_keeps_what_operators_changed_and_names_what_the_file_dropped(
    site: PrefectSite, emulator: Emulator
) -> None:
    """`fishflow deploy` after an edit (as the README says to): a schedule an operator paused
    stays paused, a limit an operator resized keeps its size, and a deployment the file no
    longer has is listed, then deleted with --prune."""
    import yaml

    from fishflow.pool import limit_name

    prefect_file = site.home / "prefect.yaml"
    spec = yaml.safe_load(prefect_file.read_text())
    extra = {**next(d for d in spec["deployments"] if d["name"] == "catalog-manual")}
    extra["name"] = "catalog-retired"
    with_extra = site.home / "prefect-extra.yaml"
    with_extra.write_text(yaml.safe_dump({**spec, "deployments": [*spec["deployments"], extra]}))
    limits = ("--server", f"{emulator.url}#limit=2")
    assert site.fishflow("deploy", "--prefect-file", str(with_extra), *limits).returncode == 0
    name = limit_name(emulator.url)

    async def operate() -> None:
        async with get_client() as client:
            nightly = await client.read_deployment_by_name("refresh-catalog-audio/catalog-nightly")
            [schedule] = await client.read_deployment_schedules(nightly.id)
            await client.update_deployment_schedule(nightly.id, schedule.id, active=False)
            await client.upsert_global_concurrency_limit_by_name(name, 3)

    async def state() -> tuple[list[bool], int, set[str]]:
        async with get_client() as client:
            nightly = await client.read_deployment_by_name("refresh-catalog-audio/catalog-nightly")
            schedules = await client.read_deployment_schedules(nightly.id)
            limit = await client.read_global_concurrency_limit_by_name(name)
            names = {d.name for d in await client.read_deployments()}
        return [s.active for s in schedules], int(limit.limit), names

    asyncio.run(operate())
    try:
        again = site.fishflow("deploy", "--prefect-file", str(prefect_file), *limits)
        assert again.returncode == 0, again.stderr
        assert "refresh-catalog-audio/catalog-nightly: schedule '0 2 * * *' stays paused" in (
            again.stdout
        )
        assert f"limit {name} stays 3 (the file says 2)" in again.stdout
        assert "deployment catalog-retired is no longer in the file" in again.stdout
        active, limit, names = asyncio.run(state())
        assert active == [False] and limit == 3 and "catalog-retired" in names
        pruned = site.fishflow("deploy", "--prefect-file", str(prefect_file), "--prune", *limits)
        assert pruned.returncode == 0, pruned.stderr
        assert "deleted deployment catalog-retired" in pruned.stdout
        assert "catalog-retired" not in asyncio.run(state())[2]
    finally:  # the other tests expect the nightly schedule on and the limit at 2

        async def restore() -> None:
            async with get_client() as client:
                nightly = await client.read_deployment_by_name(
                    "refresh-catalog-audio/catalog-nightly"
                )
                [schedule] = await client.read_deployment_schedules(nightly.id)
                await client.update_deployment_schedule(nightly.id, schedule.id, active=True)
                await client.upsert_global_concurrency_limit_by_name(name, 2)

        asyncio.run(restore())


def paths_in(recorded: Any) -> list[str]:
    """Every string in a deployment's recorded fields that names a folder of some machine."""
    if isinstance(recorded, dict):
        return [p for v in recorded.values() for p in paths_in(v)]
    if isinstance(recorded, list):
        return [p for v in recorded for p in paths_in(v)]
    if isinstance(recorded, str) and (recorded.startswith(("/", "~", ".")) or "/" in recorded):
        return [recorded]
    return []


async def what_workers_get(names: list[str]) -> dict[str, dict[str, Any]]:
    """What the server hands a worker for each deployment: where the code is and how to run it."""
    async with get_client() as client:
        found = [await client.read_deployment_by_name(n) for n in names]
    return {
        name: {"path": d.path, "pull_steps": d.pull_steps, "entrypoint": d.entrypoint,
               "job_variables": d.job_variables, "storage": d.storage_document_id}
        for name, d in zip(names, found, strict=True)
    }  # fmt: skip


def test_fishflow_deploy_records_no_path_of_the_machine_it_ran_on(site: PrefectSite) -> None:
    names = [f"refresh-catalog-audio/{n}" for n in ("catalog-nightly", "course-weekly",
             "catalog-manual")] + ["retry-errors/retry-errors"]  # fmt: skip
    recorded = asyncio.run(what_workers_get(names))
    assert str(ROOT) not in json.dumps(recorded)
    for name, fields in recorded.items():
        # No folder, no pull step: a worker imports the flow from the fishflow it has.
        assert fields["path"] is None and not fields["pull_steps"], name
        assert fields["storage"] is None, name
        assert fields["entrypoint"].startswith("fishflow.flows."), name
        assert paths_in(fields) == [], name


def test_prefect_deploy_records_no_path_and_a_worker_elsewhere_runs_it(
    site: PrefectSite, tmp_path: Path
) -> None:
    """The project's file registered with `prefect deploy` from a folder that is not the
    checkout, run by a worker started in another empty folder (its own pool, so that no other
    worker takes the run)."""
    import yaml

    from fishflow.tasks.deploy import ensure_work_pool

    pool = "fishflow-elsewhere"
    spec = yaml.safe_load((site.home / "prefect.yaml").read_text())
    assert spec["pull"] == []  # the project's own setting, copied by the site
    manual = next(d for d in spec["deployments"] if d["name"] == "catalog-manual")
    manual = {**manual, "name": "catalog-elsewhere", "work_pool": {**manual["work_pool"],
              "name": pool}}  # fmt: skip
    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text(yaml.safe_dump({**spec, "deployments": [manual]}))
    asyncio.run(ensure_work_pool(pool))
    done = site.prefect("--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file))
    assert done.returncode == 0, done.stdout + done.stderr
    name = "refresh-catalog-audio/catalog-elsewhere"
    fields = asyncio.run(what_workers_get([name]))[name]
    assert str(ROOT) not in json.dumps(fields)
    assert fields["path"] is None and fields["pull_steps"] == []
    assert fields["entrypoint"] == "fishflow.flows.refresh_catalog_audio.refresh_catalog_audio"
    assert paths_in(fields) == []

    from prefect.deployments import run_deployment

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    site.start_worker("elsewhere", pool=pool, cwd=elsewhere)
    try:
        out = tmp_path / "out"
        source = catalog(tmp_path / "c.csv", 3)
        run = run_deployment(name, parameters={"source": str(source), "out": str(out)},
                             timeout=0, as_subflow=False)  # fmt: skip
        assert isinstance(run, FlowRun)
        finished = asyncio.run(final_state(run.id))
    finally:
        site.stop_worker("elsewhere")
        asyncio.run(delete_deployment(name))
    state = finished.state
    assert state is not None and state.type == StateType.COMPLETED, state
    assert sorted(items(out, finished.name)["source_row"]) == [0, 1, 2]


async def delete_deployment(name: str) -> None:
    async with get_client() as client:
        await client.delete_deployment((await client.read_deployment_by_name(name)).id)
