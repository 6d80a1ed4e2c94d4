"""Two runs against one server share its limit through a Prefect global concurrency limit."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from fishflow.cli import main
from fishflow.emulator import Emulator, EmulatorConfig
from fishflow.settings import RunSettings
from flows.refresh_catalog_audio import refresh_catalog_audio


def catalog(path: Path, prefix: str, n: int) -> Path:
    path.write_text(
        "\n".join(
            json.dumps({"id": f"{prefix}{i}", "text": f"Run {prefix} item {i} is spoken here."})
            for i in range(n)
        )
    )
    return path


def test_two_concurrent_runs_never_exceed_the_servers_limit(tmp_path: Path, caplog) -> None:
    with Emulator(EmulatorConfig(workers=4, service_time_s=0.02)) as emu:
        assert main(["limits", "create", "--server", emu.url, "--max-in-flight", "2"]) == 0
        # Each run alone would put 4 in flight: its local limit is 4, the shared one 2.
        settings = RunSettings(max_in_flight=4, batch_size=10)

        async def both():
            return await asyncio.gather(
                *(
                    refresh_catalog_audio(
                        source=str(catalog(tmp_path / f"{p}.jsonl", p, 30)),
                        out=str(tmp_path / p),
                        servers=[emu.url],
                        settings=settings,
                    )
                    for p in ("a", "b")
                )
            )

        results = asyncio.run(both())
        assert [r["ok"] for r in results] == [30, 30]
        assert emu.stats["max_in_flight"] <= 2
        assert emu.stats["requests"] == 60


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
        assert summary["ok"] == 12
        assert emu.stats["max_in_flight"] <= 3
    warnings = [r for r in caplog.records if "no Prefect concurrency limit" in r.getMessage()]
    assert len(warnings) == 1
