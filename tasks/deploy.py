"""`fishflow deploy`: everything a Prefect server needs to run fishflow's deployments.

Idempotent, against PREFECT_API_URL: the process work pool, every deployment of
`deployments/prefect.yaml` with this checkout as its working directory, the shared per-server
concurrency limits of the servers the deployments name, and the automation that marks a flow
run Crashed when its heartbeats stop (a worker machine that died).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import typing
from pathlib import Path
from typing import Any

import yaml
from prefect import Flow
from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound
from prefect.schedules import Cron

from fishflow.settings import RunSettings, validated
from tasks.limits import create_limits

ROOT = Path(__file__).resolve().parent.parent
PREFECT_FILE = ROOT / "deployments" / "prefect.yaml"
AUTOMATION_FILE = ROOT / "deployments" / "crashed-runs.yaml"


async def ensure_work_pool(name: str) -> bool:
    """Create a process work pool named `name` unless it exists; True if it was created."""
    from prefect.workers.process import ProcessWorker

    async with get_client() as client:
        try:
            await client.read_work_pool(name)
            return False
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            await client.create_work_pool(
                WorkPoolCreate(name=name, type="process", base_job_template=template)
            )
            return True


def crash_automation(heartbeat_s: int) -> Automation:
    """deployments/crashed-runs.yaml (what `prefect automation create` takes too), waiting
    three heartbeats of `heartbeat_s`."""
    spec = yaml.safe_load(AUTOMATION_FILE.read_text())
    spec["trigger"]["within"] = 3 * heartbeat_s
    spec["actions"][0]["message"] = (
        f"no heartbeat for {3 * heartbeat_s} s: the worker running it is gone"
    )
    return Automation.model_validate(spec)


async def ensure_crash_automation(heartbeat_s: int) -> None:
    wanted = crash_automation(heartbeat_s)
    try:
        existing = await Automation.aread(name=wanted.name)
    except ValueError:
        await wanted.acreate()
        return
    wanted.id = existing.id
    await wanted.aupdate()


def _schedules(entries: list[dict[str, Any]] | None) -> list[Any]:
    return [
        Cron(e["cron"], timezone=e.get("timezone"), active=e.get("active", True))
        for e in entries or []
    ]


def server_limits(deployments: list[dict[str, Any]], servers: list[str] | None) -> dict[str, int]:
    """Each server the deployments name (or `servers`), with its in-flight limit."""
    limits: dict[str, int] = {}
    for d in deployments:
        params = d.get("parameters") or {}
        urls = servers or params.get("servers") or []
        settings = validated(RunSettings, **(params.get("settings") or {}))
        for config in settings.server_configs(urls) if urls else []:
            limits[config.url] = max(limits.get(config.url, 0), config.max_in_flight)
    return limits


def deploy(
    *,
    pool: str = "fishflow",
    servers: list[str] | None = None,
    heartbeat_s: int = 30,
    prefect_file: Path = PREFECT_FILE,
) -> dict[str, Any]:
    """Register everything (see the module docstring); returns what was done, for printing."""
    spec = yaml.safe_load(prefect_file.read_text())
    deployments: list[dict[str, Any]] = spec["deployments"]
    created_pool = asyncio.run(ensure_work_pool(pool))
    names = []
    for d in deployments:
        # Called outside an event loop, Prefect's async dispatch returns the Flow itself.
        flow = typing.cast(
            Flow[..., Any], Flow.from_source(source=str(ROOT), entrypoint=d["entrypoint"])
        )
        job_variables = dict((d.get("work_pool") or {}).get("job_variables") or {})
        env = {
            **job_variables.get("env", {}),
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(heartbeat_s),
        }
        with contextlib.redirect_stdout(io.StringIO()):  # Prefect's own tables and tips
            flow.deploy(
                name=d["name"],
                work_pool_name=pool,
                parameters=d.get("parameters") or {},
                description=d.get("description"),
                tags=d.get("tags"),
                schedules=_schedules(d.get("schedules")),
                job_variables={**job_variables, "env": env},
                build=False,
                push=False,
                print_next_steps=False,
                ignore_warnings=True,
            )
        names.append(f"{flow.name}/{d['name']}")
    limits = asyncio.run(create_limits(server_limits(deployments, servers)))
    asyncio.run(ensure_crash_automation(heartbeat_s))
    return {"pool": pool, "pool_created": created_pool, "deployments": names, "limits": limits}
