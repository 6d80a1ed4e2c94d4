"""Per-process registry of running runs.

Batch tasks take plain data (a run id and a batch of items) and look up the run's shared parts
here: the server pool, its HTTP clients and limits are asyncio objects bound to the flow's event
loop, so they are built once by the flow and never passed through Prefect.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fishflow.manifest import ItemRow, ManifestWriter
from fishflow.context import RunContext
from fishflow.run import RunTotals


@dataclass
class OpenRun:
    ctx: RunContext
    writer: ManifestWriter
    totals: RunTotals = field(default_factory=RunTotals)


_runs: dict[str, OpenRun] = {}
_progress: Callable[[ItemRow], None] | None = None
_progress_start: Callable[[int, int | None], None] | None = None


def register(ctx: RunContext, writer: ManifestWriter) -> OpenRun:
    ctx.on_item_done = _progress
    _runs[ctx.run_id] = run = OpenRun(ctx, writer)
    return run


def unregister(run_id: str) -> None:
    _runs.pop(run_id, None)


def lookup(run_id: str) -> OpenRun:
    try:
        return _runs[run_id]
    except KeyError as exc:
        raise RuntimeError(f"run {run_id} is not open in this process") from exc


def set_progress_listener(
    listener: Callable[[ItemRow], None] | None,
    on_start: Callable[[int, int | None], None] | None = None,
) -> None:
    """``listener`` is called with each finished item's row (the CLI's progress bar), and
    ``on_start`` once a run knows how many items it had finished before (a resumed run) and
    about how many its source holds."""
    global _progress, _progress_start
    _progress, _progress_start = listener, on_start


def progress_started(already: int, total: int | None) -> None:
    """A run starts its items: ``already`` of them finished by an earlier session, about
    ``total`` in all (None: not known)."""
    if _progress_start is not None:
        _progress_start(already, total)


def progress_shown() -> bool:
    """Whether a listener (the CLI) shows this process's progress."""
    return _progress is not None
