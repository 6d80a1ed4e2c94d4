"""What a run shows in Prefect: a progress artifact, a summary with links (report.html first),
the first failures.

Artifacts are keyed per deployment (`fishflow-<deployment>`; `fishflow-run` for a run started
without one), so each deployment keeps its own history in the UI.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)

from fishflow import report
from fishflow.run import RunTotals
from fishflow.storage import Store, browser_url


@dataclass
class Summary:
    run_id: str
    totals: RunTotals
    wall_s: float
    manifests: dict[str, str]
    utilisation: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    shards: list[dict[str, Any]] = field(default_factory=list)
    qa_on_marked: str = "warn"  # the CLI exits 2 for marked items under "fail"
    report: str | None = None  # report.html's URI
    report_link: str | None = None  # an address a browser opens (presigned for S3)

    def as_dict(self) -> dict[str, Any]:
        """The flow's return value (and what the CLI prints from)."""
        t = self.totals
        result = {
            "run_id": self.run_id,
            "ok": t.ok,
            "skipped": t.skipped,
            "failed": t.failed,
            "marked": t.marked,
            "qa_on_marked": self.qa_on_marked,
            "removed": t.removed,
            "pruned": t.pruned,
            "audio_seconds": round(t.audio_seconds, 3),
            "wall_seconds": round(self.wall_s, 3),
            "manifests": self.manifests,
            "report": self.report,
            "utilisation": self.utilisation,
            "error": self.error,
            "pruned_files": t.pruned_files,
            # The first failed items, so a terminal shows why without opening a manifest.
            "failures": failure_rows(t),
        }
        if self.shards:
            result["shards"] = self.shards
        return result


def failure_rows(t: RunTotals) -> list[dict[str, Any]]:
    """The run's first failed items (RunTotals keeps the first few), as table rows."""
    return [{"item_id": item, "source_row": row, "error": error} for item, row, error in t.failures]


def artifact_key(deployment: str | None) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    name = re.sub(r"[^a-z0-9-]+", "-", (deployment or "run").lower()).strip("-")
    return f"fishflow-{name or 'run'}"


def link(uri: str) -> str:
    """A clickable address for a manifest: the S3 console for s3://, file:// for a path."""
    return browser_url(uri)


def summary_markdown(s: Summary) -> str:
    t = s.totals
    lines = [
        f"# fishflow run `{s.run_id}`",
        "",
        "| ok | skipped | failed | audio seconds | wall seconds |",
        "|---|---|---|---|---|",
        f"| {t.ok} | {t.skipped} | {t.failed} | {t.audio_seconds:.1f} | {s.wall_s:.1f} |",
        "",
    ]
    if s.utilisation:
        used = ", ".join(f"{u}: {v:.0%}" for u, v in s.utilisation.items())
        lines += [f"Server utilisation: {used}", ""]
    if s.report and s.report_link:
        lines += [f"**[Review the run: report.html]({s.report_link})**", ""]
    lines += [f"- {name}: [`{uri}`]({link(uri)})" for name, uri in s.manifests.items()]
    if s.shards:
        lines += ["", "| shard | run id | flow run | state |", "|---|---|---|---|"]
        lines += [
            f"| {c['shard']} | `{c['run_id']}` | `{c['flow_run_id']}` | {c['state']} |"
            for c in s.shards
        ]
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


async def write_report(
    store: Store, run_id: str, logger: logging.Logger | logging.LoggerAdapter[Any]
) -> tuple[str | None, str | None]:
    """Write the run's report.html (manifests final); returns its URI and a link to it, or
    (None, None) if it could not be written: the page is never a reason to fail a run."""
    try:
        uri = await asyncio.to_thread(report.write_report, store, run_id)
        # Never a presigned link here: it carries the signer's access key id (and a session
        # token with temporary credentials), and artifacts hold no credentials. The console
        # opens an S3 page for whoever may read it.
        address = link(uri)
    except Exception:
        logger.exception("run %s: report.html not written", run_id)
        return None, None
    logger.info("run %s: report %s", run_id, uri)
    return uri, address


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

    async def finish(self, s: Summary) -> None:
        if self._progress is not None:
            await aupdate_progress_artifact(self._progress, 100.0)
        await acreate_markdown_artifact(
            summary_markdown(s), key=self.key, description=f"fishflow run {s.run_id}"
        )
        # Published by a clean run too (an empty table): the key's latest table must be this
        # run's, not the failures of an earlier run.
        failures = failure_rows(s.totals)
        await acreate_table_artifact(
            failures or {"item_id": [], "source_row": [], "error": []},
            key=f"{self.key}-failures",
            description=f"fishflow run {s.run_id}: "
            + ("the first failed items" if failures else "no item failed"),
        )
