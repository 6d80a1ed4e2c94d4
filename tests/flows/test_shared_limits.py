"""Runs that share a server's limit, and runs that share an output.

A server's limit is a Prefect global concurrency limit; its slots are leased by each run (not by
its batch task runs), renewed while used and handed over to a run that waits. An output is held
by one run at a time through a lock in the output itself.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import pandas as pd
import pytest
from prefect.client.orchestration import get_client

from fishflow.cli import main
from fishflow.errors import ConfigError, OutputInUse
from fishflow.flows.refresh_catalog_audio import refresh_catalog_audio
from fishflow.lock import OutputLock
from fishflow.pool import limit_name
from fishflow.record import RunSummary
from fishflow.settings import RunSettings
from fishflow.storage import LocalStore
from fishflow.testing.emulator import Emulator, EmulatorConfig
from tests.flows.helpers import manifest
from tests.flows.test_resume import start_run


def catalog(path: Path, prefix: str, n: int) -> Path:
    path.write_text(
        "\n".join(
            json.dumps({"id": f"{prefix}{i}", "text": f"Run {prefix} item {i} is spoken here."})
            for i in range(n)
        )
    )
    return path


async def when_requests_reach(emu: Emulator, n: int) -> None:
    while emu.stats["requests"] < n:
        await asyncio.sleep(0.02)


async def lease_slots(name: str, n: int) -> list[UUID]:
    async with get_client() as client:
        return [
            UUID(
                (
                    await client.increment_concurrency_slots_with_lease(
                        names=[name], slots=1, mode="concurrency", lease_duration=300
                    )
                ).json()["lease_id"]
            )
            for _ in range(n)
        ]


async def release_when_waiting(
    leases: list[UUID], name: str, *, runs: int, procs: list[subprocess.Popen[str]]
) -> None:
    async with get_client() as client:
        while (
            await client.read_global_concurrency_limit_by_name(f"{name}-waiting")
        ).active_slots < runs:
            assert all(p.poll() is None for p in procs)
            await asyncio.sleep(0.1)
        for lease in leases:
            await client.release_concurrency_slots_with_lease(lease)


def items(out: Path, run_id: str) -> pd.DataFrame:
    return manifest(out, "items", run_id)


def test_two_concurrent_runs_of_several_batches_never_exceed_the_servers_limit(
    tmp_path: Path,
) -> None:
    """Slots outlive the batch task runs that first needed them: with one batch task run
    giving its slots back as it ended, this put 3-4 requests on a server limited to 2.

    Two `fishflow run` processes, as two deployments' runs would be (two flow runs in one
    process start one after the other here: the second waits on the test's Prefect server)."""
    # Enough work that neither run can finish before the other gets going: on a loaded 2-core
    # machine one process can stall for seconds while the other sends (80 items each did not).
    n = 150
    with Emulator(EmulatorConfig(workers=4, service_time_s=0.05)) as emu:
        assert main(["limits", "create", "--server", emu.url, "--max-in-flight", "2"]) == 0
        name = limit_name(emu.url)
        # The test holds both slots until both runs wait for one, so that they start sending
        # together (a process starting beside a busy one can take 15 s to get going here).
        held = asyncio.run(lease_slots(name, 2))
        # Each run alone would put 4 in flight: its local limit is 4, the shared one 2.
        # A short tenure makes the runs trade slots while both have work.
        procs = {
            p: start_run(
                catalog(tmp_path / f"{p}.jsonl", p, n),
                tmp_path / p,
                emu,
                f"run-{p}",
                *("--max-in-flight", "4", "--batch-size", "10", "--slot-tenure-s", "1"),
            )
            for p in "ab"
        }
        asyncio.run(release_when_waiting(held, name, runs=2, procs=list(procs.values())))
        for proc in procs.values():
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
        assert emu.stats["max_in_flight"] <= 2
        assert emu.stats["requests"] == 2 * n
    a, b = (items(tmp_path / p, f"run-{p}") for p in "ab")
    assert (a.status == "ok").all() and (b.status == "ok").all() and len(a) == len(b) == n
    # They did overlap: each started sending before the other finished.
    assert max(a.created_at.min(), b.created_at.min()) < min(a.created_at.max(), b.created_at.max())


def test_a_run_waiting_for_a_slot_is_handed_one_while_the_other_still_has_work(
    tmp_path: Path,
) -> None:
    """Hand-over, not starvation: A holds both slots with a long batch ahead; B, started then,
    gets a slot long before A is done (A gives back the slot above its fair share)."""
    with Emulator(EmulatorConfig(workers=4, service_time_s=0.08)) as emu:
        assert main(["limits", "create", "--server", emu.url, "--max-in-flight", "2"]) == 0
        settings = RunSettings(max_in_flight=2, slot_tenure_s=1)

        def run(prefix: str, n: int):
            return refresh_catalog_audio(
                source=str(catalog(tmp_path / f"{prefix}.jsonl", prefix, n)),
                out=str(tmp_path / prefix),
                servers=[emu.url],
                settings=settings,
            )

        async def both():
            first = asyncio.create_task(run("a", 120))  # one batch: ~5 s of work on 2 slots
            await when_requests_reach(emu, 10)
            b_started = datetime.now(UTC)
            second = await run("b", 8)
            return await first, second, b_started

        result_a, result_b, b_started = asyncio.run(both())
        assert (result_a.ok, result_b.ok) == (120, 8)
        assert emu.stats["max_in_flight"] <= 2
    a = items(tmp_path / "a", result_a.run_id)
    b = items(tmp_path / "b", result_b.run_id)
    b_first = b.created_at.min()
    assert (b_first - pd.Timestamp(b_started)).total_seconds() < 30
    assert (a.created_at > b_first).sum() >= 20  # A still had plenty to do when B got going


def test_a_run_without_a_shared_limit_works_and_says_so_once(tmp_path: Path, caplog) -> None:
    with Emulator(EmulatorConfig(workers=4)) as emu:
        source = catalog(tmp_path / "c.jsonl", "c", 12)
        summary = asyncio.run(
            refresh_catalog_audio(
                source=str(source),
                out=str(tmp_path / "o"),
                servers=[emu.url],
                settings=RunSettings(max_in_flight=3, batch_size=4),
            )
        )
        assert isinstance(summary, RunSummary) and summary.ok == 12
        assert emu.stats["max_in_flight"] <= 3
    warnings = [
        r for r in caplog.records if "no active Prefect concurrency limit" in r.getMessage()
    ]
    assert len(warnings) == 1


def test_every_name_of_a_server_shares_one_limit_and_a_server_without_one_stops_the_run(
    tmp_path: Path,
) -> None:
    """`localhost` and `127.0.0.1` are one server: one limit. On a Prefect server that shares
    limits for some servers, a run on another server without one would overrun what they
    share: it stops before anything is written, unless told to keep to its own limit."""
    with (
        Emulator(EmulatorConfig(workers=4, service_time_s=0.02)) as shared,
        Emulator(EmulatorConfig(workers=4)) as other,
    ):
        assert main(["limits", "create", "--server", shared.url, "--max-in-flight", "2"]) == 0
        by_name = shared.url.replace("127.0.0.1", "localhost")
        assert limit_name(by_name) == limit_name(shared.url)
        source = catalog(tmp_path / "c.jsonl", "c", 16)
        settings = RunSettings(max_in_flight=4, batch_size=4)
        # Two names of one server in one run: still at most 2 in flight.
        summary = asyncio.run(
            refresh_catalog_audio(source=str(source), out=str(tmp_path / "o"),
                                  servers=[shared.url, by_name], settings=settings)
        )  # fmt: skip
        assert isinstance(summary, RunSummary)
        assert summary.ok == 16 and shared.stats["max_in_flight"] <= 2
        with pytest.raises(ConfigError, match=f"no shared limit for {other.url}"):
            asyncio.run(
                refresh_catalog_audio(source=str(source), out=str(tmp_path / "x"),
                                      servers=[other.url], settings=settings)
            )  # fmt: skip
        assert other.stats["requests"] == 0 and not (tmp_path / "x").exists()
        local = settings.model_copy(update={"local_limit": True})
        summary = asyncio.run(
            refresh_catalog_audio(source=str(source), out=str(tmp_path / "y"),
                                  servers=[other.url], settings=local)
        )  # fmt: skip
        assert isinstance(summary, RunSummary) and summary.ok == 16


def test_two_runs_on_one_output_never_synthesise_an_item_twice(tmp_path: Path) -> None:
    with Emulator(EmulatorConfig(workers=2, service_time_s=0.1)) as emu:
        source = catalog(tmp_path / "s.jsonl", "s", 80)

        def run():
            return refresh_catalog_audio(
                source=str(source), out=str(tmp_path / "out"), servers=[emu.url]
            )

        async def both():
            first = asyncio.create_task(run())
            await when_requests_reach(emu, 2)  # the first holds the output and sends
            second = await asyncio.gather(run(), return_exceptions=True)
            return [await first, *second]

        results = asyncio.run(both())
        assert emu.stats["requests"] == 80  # each item once
    finished = [r for r in results if isinstance(r, RunSummary)]
    refused = [r for r in results if isinstance(r, OutputInUse)]
    assert len(finished) == 1 and len(refused) == 1, results
    assert finished[0].ok == 80
    assert f"run {finished[0].run_id}" in refused[0].message
    assert len(list((tmp_path / "out" / "manifests").iterdir())) == 1  # the refused wrote none


def test_the_cli_stops_at_once_naming_the_run_that_holds_the_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    holder = OutputLock(LocalStore(str(out)), run_id="20261125T000000Z-abcdef", ttl_s=300)
    holder.acquire()  # another run, alive and writing
    with Emulator(EmulatorConfig()) as emu:
        source = catalog(tmp_path / "s.jsonl", "s", 3)
        code = main(["run", str(source), "--out", str(out), "--server", emu.url, "--quiet"])
        assert emu.stats["requests"] == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("fishflow: error: output ")
    assert "run 20261125T000000Z-abcdef" in err[-1] and "--wait-for-lock" in err[-1]
    assert not (out / "manifests").exists() and not (out / "audio").exists()
    holder.release()
