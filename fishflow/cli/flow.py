"""Running a flow in this process for `run`, `resume` and `retry-errors`, or submitting one to
a deployment (`run --deployment`): progress while it runs, its summary printed after.

The flow returns a typed `RunSummary`; the CLI prints it and exits by it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import typing
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fishflow.cli.prefect_console import filter_prefect_console, quiet_prefect, require_prefect_api
from fishflow.errors import ConfigError
from fishflow.settings import RunSettings
from fishflow.untrusted import printable

if TYPE_CHECKING:
    from prefect.states import State

    from fishflow.manifest import ItemRow
    from fishflow.record import RunSummary

PRINTED = 5  # failed items, and pruned files, named after a run


def refresh_catalog_audio(
    *,
    source: str,
    out: str,
    servers: list[str],
    settings: RunSettings,
    force: bool,
    prune: bool,
    run_id: str,
    api_key_secret: str | None,
    quiet: bool,
    resume: bool = False,
    only_rows: list[int] | None = None,
) -> int:
    """Run the catalog flow here (`run`, `resume`); the exit status."""

    async def start() -> State:
        from fishflow.flows.refresh_catalog_audio import refresh_catalog_audio

        return await refresh_catalog_audio(
            source=source,
            out=out,
            servers=servers,
            settings=settings,
            force=force,
            prune=prune,
            run_id=run_id,
            api_key_secret=api_key_secret,
            resume=resume,
            only_rows=only_rows,
            return_state=True,
        )

    return _run_here(start, quiet=quiet, resume_hint=f"fishflow resume {run_id} --out {out}")


def retry_errors(*, out: str, run_id: str | None, servers: list[str] | None, quiet: bool) -> int:
    """Run the retry-errors flow here; the exit status."""

    async def start() -> State:
        from fishflow.flows.retry_errors import retry_errors

        return await retry_errors(out=out, run_id=run_id, servers=servers, return_state=True)

    return _run_here(start, quiet=quiet, resume_hint=None)


def submit(
    deployment: str,
    *,
    source: str,
    out: str,
    shards: int,
    run_id: str | None,
    servers: list[str] | None,
    settings: dict[str, Any],
    force: bool,
    prune: bool,
    api_key_secret: str | None,
) -> int:
    """Start a run of a deployment with this command's source, output and options (only the
    options given: the rest come from the deployment), and say where to follow it."""
    require_prefect_api("--deployment submits the run to the Prefect server your workers use")
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    from fishflow.run import new_run_id
    from fishflow.storage import is_relative_path

    name = deployment if "/" in deployment else f"refresh-catalog-audio/{deployment}"
    # The worker runs in a temporary folder of its own: local paths must not be relative.
    source, out = (os.path.abspath(p) if is_relative_path(p) else p for p in (source, out))
    run_id = run_id or new_run_id()
    parameters: dict[str, Any] = {"source": source, "out": out, "shards": shards, "run_id": run_id}
    if servers:
        parameters["servers"] = servers
    if settings:
        parameters["settings"] = settings
    if force:
        parameters["force"] = True
    if prune:
        parameters["prune"] = True
    if api_key_secret:
        parameters["api_key_secret"] = api_key_secret
    try:
        # Called outside an event loop, run_deployment returns the FlowRun itself.
        flow_run = typing.cast(
            FlowRun,
            run_deployment(
                name, parameters=parameters, flow_run_name=run_id, timeout=0, as_subflow=False
            ),
        )
    except Exception as exc:
        raise ConfigError(f"could not start a run of deployment {name!r}: {exc}") from exc
    print(f"fishflow: submitted run {run_id} (flow run {flow_run.id}) of {name}")
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _run_here(
    start: Callable[[], Awaitable[State]], *, quiet: bool, resume_hint: str | None
) -> int:
    """Run a flow in this process with a progress bar, then print the summary."""
    quiet_prefect()
    from prefect.exceptions import TerminationSignal  # Prefect's own SIGTERM handler raises it
    from prefect.settings import get_current_settings

    filter_prefect_console()
    if not get_current_settings().api.url:  # Prefect will start a server of its own for us
        from fishflow.watchdog import guard_children

        guard_children()  # which must not outlive this process, even SIGKILLed

    from fishflow.run import progress_listener
    from fishflow.settings import EnvSettings
    from fishflow.tasks.prefect_run import run_result

    async def summary() -> RunSummary:
        # A run with too many failed items ends Failed in Prefect; the CLI still prints its
        # summary and exits 2, as it always has.
        return await run_result(await start())

    mode = "off" if quiet else "bar" if sys.stderr.isatty() else "lines"
    progress = Progress(mode, EnvSettings().progress_interval_s)
    watching = progress_listener.set(progress)
    # SIGTERM (a scheduler stopping us) ends the run like Ctrl-C: in-flight work is abandoned,
    # finished items stay recorded in the journal and manifest parts.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    stops = (KeyboardInterrupt, TerminationSignal)
    try:
        outcome = asyncio.run(summary())
    except BaseException as exc:
        # The signal may land inside anyio's task group (an HTTP connect to Prefect's API),
        # which wraps it in an exception group.
        stopped = isinstance(exc, stops) or (
            isinstance(exc, BaseExceptionGroup) and exc.subgroup(stops) is not None
        )
        if isinstance(exc, RuntimeError) and "ephemeral Prefect API" in str(exc):
            # Its message carries the server's whole stdout and stderr: not a line to print.
            raise ConfigError(
                "Prefect's temporary API did not start in time: start one with `prefect server "
                "start` and set PREFECT_API_URL (or raise "
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)"
            ) from exc
        if not stopped:
            raise
        progress.close()
        hint = f"; finish it with: {resume_hint}" if resume_hint else ""
        print(f"fishflow: stopped; finished items are recorded{hint}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        progress.close()
        progress_listener.reset(watching)
    return print_outcome(outcome, wall_s=time.monotonic() - started)


def print_outcome(run: RunSummary, *, wall_s: float) -> int:
    """The summary after a run; its exit status (2: items failed, or published marked with
    --qa-on-marked fail)."""
    if run.run_id is None:
        print(f"fishflow: run {run.retried_run} has no failed items: nothing to do")
        return 0
    # Removed items are extra manifest rows (gone from the source), not among the run's items.
    counts = {"marked": run.marked, "removed": run.removed, "pruned": run.pruned}
    hygiene = "".join(f", {n} {what}" for what, n in counts.items() if n)
    print(
        f"fishflow: {run.ok} ok, {run.skipped} skipped, {run.failed} failed"
        f"{hygiene}; {run.audio_seconds:.1f} s of audio in {wall_s:.1f} s\n"
        f"manifests: {run.manifests.get('items', '').rsplit('/', 1)[0]}"
    )
    if run.report:
        print(f"report: {run.report}")
    for uri in run.pruned_files[:PRINTED]:
        print(f"  pruned: {uri}")
    if run.pruned > min(len(run.pruned_files), PRINTED):
        print("  (every pruned file is named in the run's log)")
    print_failures(run)
    if run.marked:
        print(
            f"  marked: {run.marked} item(s) published with an answer that failed the check on "
            "every try (items.parquet: qa, qa_check); the next run makes them again",
            file=sys.stderr,
        )
    return run.exit_code


def print_failures(run: RunSummary) -> None:
    """The first failed items and why, on stderr: the errors manifest has them all."""
    for failure in run.failures[:PRINTED]:
        first_line = failure.error.splitlines()[0] if failure.error else ""
        # Ids and error text come from the source and the servers: escaped for the terminal.
        print(
            f"  failed: {printable(failure.item_id or '(no id)')} "
            f"(row {failure.source_row}): {printable(first_line[:200])}",
            file=sys.stderr,
        )
    if run.failed > min(len(run.failures), PRINTED):
        print(
            "  (all failures, with their stage: errors.parquet in the manifests)", file=sys.stderr
        )


class Progress:
    """A bar with a total and ETA on a terminal; otherwise (mode "lines": a scheduler's log,
    nohup, CI) a progress line on stderr every `interval_s`, so a long run is never silent."""

    def __init__(self, mode: str, interval_s: float) -> None:
        from fishflow.progress import Tally, Ticker

        self.tally = Tally(None)  # the flow gives the total it estimates (start)
        self.bar: Any = None
        self.ticker: Ticker | None = None
        if mode == "bar":
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            # Until the flow gives its total (start), the bar pulses and the count reads "n/?".
            self.bar = Bar(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TimeElapsedColumn(),
                transient=True,
            )
            self.task = self.bar.add_task("starting Prefect...", total=None)
            self.bar.start()
        elif mode == "lines":  # ticking from when the flow starts its items, total known
            self.ticker = Ticker(interval_s, self._print_line)

    def _print_line(self) -> None:
        print(self.tally.line(), file=sys.stderr, flush=True)

    def start(self, already: int, total: int | None) -> None:
        """The flow starts its items: `already` of them finished before (a resumed run:
        counted, not paced), about `total` in all (its estimate from the source)."""
        self.tally.already = already
        self.tally.total = total
        if self.ticker is not None:
            self.ticker.start()
        if self.bar is not None:
            self.bar.update(self.task, completed=self.tally.done, total=self.tally.total)

    def update(self, row: ItemRow) -> None:
        self.tally.add(row.status)
        if self.bar is not None:
            c = self.tally.counts
            self.bar.update(
                self.task,
                completed=self.tally.done,
                description=(f"items: {c['ok']} ok, {c['skipped']} skipped, {c['failed']} failed"),
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        if self.ticker is not None:
            self.ticker.stop()
            self.ticker = None
