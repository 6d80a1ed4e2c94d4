"""`fishflow deploy`: everything a Prefect server needs to run fishflow's deployments.

Idempotent, against PREFECT_API_URL: the process work pool, every deployment of
`deployments/prefect.yaml` (by module entrypoint: no path of this machine), the shared per-server
concurrency limits of the servers the deployments name, and the automation that marks a flow
run Crashed when its heartbeats stop (a worker machine that died). What an operator changed
since the last deploy (a paused schedule, a resized limit) is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prefect import Flow
from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.exceptions import ObjectNotFound
from prefect.flows import load_flow_from_entrypoint
from prefect.schedules import Cron
from prefect.types.entrypoint import EntrypointType

import fishflow
from fishflow.settings import RunSettings, validated
from fishflow.tasks.limits import create_limits

# deployments/ ships in the package (fishflow/deployments links to it in a checkout), so that
# `fishflow deploy` works from an install as from the repository.
DEPLOYMENTS = Path(fishflow.__file__).parent / "deployments"
PREFECT_FILE = DEPLOYMENTS / "prefect.yaml"
AUTOMATION_FILE = DEPLOYMENTS / "crashed-runs.yaml"


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


@dataclass(frozen=True)
class Registered:
    """What an operator may have changed on a deployment since it was deployed."""

    paused: bool
    paused_schedules: frozenset[tuple[str, str | None]]  # (cron, timezone) switched off


async def _registered(name: str) -> Registered | None:
    async with get_client() as client:
        try:
            deployment = await client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None
        schedules = await client.read_deployment_schedules(deployment.id)
    off = frozenset(
        (str(s.schedule.cron), getattr(s.schedule, "timezone", None))
        for s in schedules
        if not s.active and hasattr(s.schedule, "cron")
    )
    return Registered(paused=bool(deployment.paused), paused_schedules=off)


def _schedules(
    entries: list[dict[str, Any]] | None, registered: Registered | None
) -> tuple[list[Any], list[str]]:
    """The file's schedules, each kept switched off where an operator switched it off."""
    out, kept = [], []
    for e in entries or []:
        active = e.get("active", True)
        if registered and (e["cron"], e.get("timezone")) in registered.paused_schedules:
            kept.append(f"schedule {e['cron']!r} stays paused")
            active = False
        out.append(Cron(e["cron"], timezone=e.get("timezone"), active=active))
    return out, kept


async def _stale_deployments(flow_names: set[str], wanted: set[str], pool: str) -> list[Any]:
    """Deployments of these flows on this pool that the file no longer has."""
    async with get_client() as client:
        found = await client.read_deployments(
            flow_filter=FlowFilter(name=FlowFilterName(any_=sorted(flow_names))),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
        )
        flows = {f.id: f.name for f in await client.read_flows(
            flow_filter=FlowFilter(name=FlowFilterName(any_=sorted(flow_names)))
        )}  # fmt: skip
    return [d for d in found if f"{flows.get(d.flow_id)}/{d.name}" not in wanted]


async def _delete_deployments(ids: list[Any]) -> None:
    async with get_client() as client:
        for deployment_id in ids:
            await client.delete_deployment(deployment_id)


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


def module_flow(entrypoint: str) -> Flow[..., Any]:
    """The flow at a module entrypoint (`fishflow.flows.<module>.<function>`), imported.

    Deployed as a module path, the deployment records no folder and no pull step: a worker
    imports the flow from the fishflow installed where it runs. A file path (`flows/x.py:fn`)
    would be recorded relative to a folder of this machine."""
    module = entrypoint.rpartition(".")[0]
    if ":" in entrypoint or not module.startswith("fishflow."):
        raise ValueError(
            f"entrypoint {entrypoint!r}: give the flow's module path, such as "
            "fishflow.flows.refresh_catalog_audio.refresh_catalog_audio"
        )
    flow: Flow[..., Any] = load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False)
    # Prefect records the module the function was defined in, whatever the file says.
    if f"{flow.__module__}.{flow.fn.__name__}" != entrypoint:
        raise ValueError(f"entrypoint {entrypoint!r} names a flow defined elsewhere")
    return flow


def deploy(
    *,
    pool: str = "fishflow",
    servers: list[str] | None = None,
    heartbeat_s: int = 30,
    prefect_file: Path = PREFECT_FILE,
    prune: bool = False,
) -> dict[str, Any]:
    """Register everything (see the module docstring); returns what was done, for printing.

    Run again after an edit, it changes what the file says and keeps what operators changed
    since: a paused deployment or schedule stays paused, a resized limit keeps its size (both
    are reported under ``kept``). Deployments of fishflow's flows on the pool that the file no
    longer has are deleted with ``prune`` (their scheduled runs with them), listed otherwise."""
    spec = yaml.safe_load(prefect_file.read_text())
    deployments: list[dict[str, Any]] = spec["deployments"]
    created_pool = asyncio.run(ensure_work_pool(pool))
    names = []
    kept: list[str] = []
    flow_names: set[str] = set()
    for d in deployments:
        flow = module_flow(d["entrypoint"])
        flow_names.add(flow.name)
        full_name = f"{flow.name}/{d['name']}"
        registered = asyncio.run(_registered(full_name))
        schedules, kept_schedules = _schedules(d.get("schedules"), registered)
        kept += [f"{full_name}: {note}" for note in kept_schedules]
        if registered and registered.paused:
            kept.append(f"{full_name}: stays paused")
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
                schedules=schedules,
                paused=registered.paused if registered else None,
                job_variables={**job_variables, "env": env},
                entrypoint_type=EntrypointType.MODULE_PATH,
                build=False,
                push=False,
                print_next_steps=False,
                ignore_warnings=True,
            )
        names.append(full_name)
    limits, resized = asyncio.run(
        create_limits(server_limits(deployments, servers), keep_resized=True)
    )
    kept += [
        f"limit {name} stays {size} (the file says {limits[name]})"
        for name, size in resized.items()
    ]
    asyncio.run(ensure_crash_automation(heartbeat_s))
    stale = asyncio.run(_stale_deployments(flow_names, set(names), pool))
    if prune and stale:
        asyncio.run(_delete_deployments([d.id for d in stale]))
    return {
        "pool": pool,
        "pool_created": created_pool,
        "deployments": names,
        "limits": limits,
        "kept": kept,
        "stale": sorted(d.name for d in stale),
        "pruned": prune,
    }
