"""What a flow run learns from Prefect about itself: its deployment, its secrets, its tags."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from prefect.states import Cancelled, State

from fishflow.errors import ConfigError, FishflowError
from fishflow.fish_speech import ApiKey
from fishflow.record import RunSummary
from fishflow.settings import EnvSettings, RunSettings, validated


class RunFailed(FishflowError):
    """The run stopped early; the manifests account for every row read so far."""

    fatal = True


@dataclass(frozen=True)
class DeploymentContext:
    """The deployment a flow run belongs to (all None/empty for a run started directly)."""

    name: str | None = None
    flow_name: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def full_name(self) -> str | None:
        return f"{self.flow_name}/{self.name}" if self.name and self.flow_name else None

    def merged_settings(self, given: RunSettings | None) -> RunSettings:
        """The deployment's settings with the fields this run set on top.

        Prefect replaces a dict parameter whole (`--param settings='{...}'`); a run that only
        wants another audio format must not lose the deployment's other settings.
        """
        base = self.parameters.get("settings") or {}
        if given is None:
            return validated(RunSettings, **base)
        overrides = given.model_dump(include=given.model_fields_set)
        return validated(RunSettings, **{**base, **overrides})


async def deployment_context() -> DeploymentContext:
    context = FlowRunContext.get()
    deployment_id = context.flow_run.deployment_id if context and context.flow_run else None
    if not deployment_id:
        return DeploymentContext()
    async with get_client() as client:
        deployment = await client.read_deployment(deployment_id)
        flow = await client.read_flow(deployment.flow_id)
    return DeploymentContext(deployment.name, flow.name, dict(deployment.parameters or {}))


async def secret_value(name: str) -> str | None:
    """The text a Prefect Secret block holds (None when there is no block of that name)."""
    from prefect.blocks.system import Secret

    try:
        block = await Secret.aload(name)
    except ValueError:
        return None
    value = block.get()  # type: ignore[attr-defined]  # aload's return type is unbound
    return value if isinstance(value, str) else str(value)


async def api_key(secret_block: str | None) -> str | None:
    """The servers' API key: from a Prefect Secret block if named (an ``ApiKey`` naming the
    block, for a 401 to point at), else FISHFLOW_API_KEY."""
    if secret_block:
        value = await secret_value(secret_block)
        if value is None:
            raise ConfigError(
                f"no Prefect Secret block named {secret_block!r} (create it with "
                f"`prefect block create secret` or in the UI, or set FISHFLOW_API_KEY)"
            )
        return ApiKey(value, source=f"Prefect Secret block {secret_block!r}")
    key = EnvSettings().api_key
    return key.get_secret_value() if key else None


async def cancel_requested() -> bool:
    """Whether an operator cancelled this flow run (it is Cancelling): a stop then means that,
    not a crash."""
    if not flow_run.id:
        return False
    with contextlib.suppress(Exception):  # unknown: the run stops as it would have
        async with get_client() as client:
            run = await asyncio.wait_for(client.read_flow_run(flow_run.id), timeout=5)
        return run.state is not None and run.state.type in (
            StateType.CANCELLING,
            StateType.CANCELLED,
        )
    return False


async def cancelled_state(
    run_id: str, out: str, *, shards: int = 1, parent_run_id: str | None = None
) -> State | None:
    """After a run stopped mid-way: say so once, with how to finish it, and return the state to
    end in: Cancelled when an operator cancelled it, else None (re-raise: a crash)."""
    from prefect import get_run_logger

    cancelled = await cancel_requested()
    message = stopped_message(
        run_id, out, cancelled=cancelled, shards=shards, parent_run_id=parent_run_id
    )
    get_run_logger().warning(message)
    return Cancelled(message=f"run {run_id} cancelled") if cancelled else None


def stopped_message(
    run_id: str,
    out: str,
    *,
    cancelled: bool,
    shards: int = 1,
    parent_run_id: str | None = None,
) -> str:
    """The log line of a run stopped mid-way: what finished is kept, and how to finish it."""
    how = "cancelled" if cancelled else "stopped"
    if parent_run_id is not None:  # a shard: its parent runs it again
        return (
            f"run {run_id} (a shard of run {parent_run_id}): {how}; the items it finished are "
            f"kept: retrying run {parent_run_id} resumes it"
        )
    if shards > 1:
        return (
            f"run {run_id}: {how}, and its {shards} shards with it; the items they finished are "
            f"kept: retry this flow run (`prefect flow-run retry {flow_run.id}`, the UI's "
            "Retry) and each shard resumes where it stopped"
        )
    return (
        f"run {run_id}: {how}; the items it finished are kept: `fishflow resume {run_id} "
        f"--out {out}` finishes it (or run the deployment again: finished items are skipped)"
    )


def _source_tag(source: str) -> str:
    """A short, secret-free name of the source: its file or folder name."""
    name = source.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return f"source:{name or source.split(':', 1)[0]}"[:100]


async def tag_flow_run(*, source: str, deployment: str | None, shard: int | None) -> None:
    """Tags to find runs by in the UI: the deployment, the source, the shard. (`fishflow`
    comes with the deployments: the crashed-run automation matches it, and only deployed runs
    send heartbeats often enough for it.)"""
    if not flow_run.id:
        return
    tags = {_source_tag(source)}
    if deployment:
        tags.add(f"deployment:{deployment}")
    if shard is not None:
        tags.add(f"shard:{shard}")
    async with get_client() as client:
        current = await client.read_flow_run(flow_run.id)
        await client.update_flow_run(flow_run.id, tags=sorted(set(current.tags) | tags))


async def run_result(state: State) -> RunSummary:
    """The summary a flow run returned, whether it ended Completed or Failed for its failed
    items (a run that raised re-raises here). Call flows with `return_state=True`: a flow that
    returns a Failed state raises a TypeError in a caller that asked for its result."""
    result = await state.aresult(raise_on_failure=False)
    if isinstance(result, BaseException):
        raise result
    if not isinstance(result, RunSummary):
        raise TypeError(f"a fishflow flow returned {type(result).__name__}, not a RunSummary")
    return result
