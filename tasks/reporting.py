"""What a run shows in Prefect: a progress artifact, a summary with links (report.html first),
the first failures.

Artifacts are keyed per deployment (`fishflow-<deployment>`; `fishflow-run` for a run started
without one), so each deployment keeps its own history in the UI.
"""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)

from fishflow.record import RunSummary
from fishflow.storage import browser_url


def failure_rows(s: RunSummary) -> list[dict[str, Any]]:
    """The run's first failed items (a summary keeps the first few), as table rows."""
    return [f.model_dump() for f in s.failures]


def artifact_key(deployment: str | None) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    name = re.sub(r"[^a-z0-9-]+", "-", (deployment or "run").lower()).strip("-")
    return f"fishflow-{name or 'run'}"


def summary_markdown(s: RunSummary) -> str:
    t = s
    lines = [
        f"# fishflow run `{s.run_id}`",
        "",
        "| ok | skipped | failed | audio seconds | wall seconds |",
        "|---|---|---|---|---|",
        f"| {t.ok} | {t.skipped} | {t.failed} | {t.audio_seconds:.1f} | {s.wall_seconds:.1f} |",
        "",
    ]
    if s.utilisation:
        used = ", ".join(f"{u}: {v:.0%}" for u, v in s.utilisation.items())
        lines += [f"Server utilisation: {used}", ""]
    if s.report and s.report_link:
        lines += [f"**[Review the run: report.html]({s.report_link})**", ""]
    lines += [f"- {name}: [`{uri}`]({browser_url(uri)})" for name, uri in s.manifests.items()]
    if s.shards:
        lines += ["", "| shard | run id | flow run | state |", "|---|---|---|---|"]
        lines += [f"| {c.shard} | `{c.run_id}` | `{c.flow_run_id}` | {c.state} |" for c in s.shards]
    if s.error:
        lines += ["", f"**Run stopped:** {s.error}"]
    if t.failures:
        lines += ["", f"{t.failed} item(s) failed; the first are in the `-failures` artifact."]
    if t.marked:
        lines += [
            "",
            f"**{t.marked} item(s) published marked**: every answer of one of their chunks was "
            "suspect (the items manifest's `qa`, `qa_check` and `qa_measure` say which and why); "
            "the next run makes them again.",
        ]
    return "\n".join(lines)


class Reporter:
    """The run's artifacts: progress as batches finish, then the summary and failures."""

    def __init__(self, deployment: str | None, run_id: str) -> None:
        self.key = artifact_key(deployment)
        self.run_id = run_id
        self._progress: UUID | None = None
        self._total: int | None = None

    async def start(self, total_rows: int | None) -> None:
        self._total = total_rows
        self._progress = await acreate_progress_artifact(
            progress=0.0,
            key=f"{self.key}-progress",
            description=f"fishflow run {self.run_id}: share of source rows done",
        )

    async def progress(self, done: int) -> None:
        if self._progress is None or not self._total:
            return
        await aupdate_progress_artifact(self._progress, min(100.0, 100.0 * done / self._total))

    async def finish(self, s: RunSummary) -> None:
        if self._progress is not None:
            await aupdate_progress_artifact(self._progress, 100.0)
        await acreate_markdown_artifact(
            summary_markdown(s), key=self.key, description=f"fishflow run {s.run_id}"
        )
        # Published by a clean run too (an empty table): the key's latest table must be this
        # run's, not the failures of an earlier run.
        failures = failure_rows(s)
        await acreate_table_artifact(
            failures or {"item_id": [], "source_row": [], "error": []},
            key=f"{self.key}-failures",
            description=f"fishflow run {s.run_id}: "
            + ("the first failed items" if failures else "no item failed"),
        )
