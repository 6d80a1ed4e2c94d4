"""`fishflow` on the command line: run the catalog flow, or serve the emulator.

Prefect is imported only by the commands that need it (about 1.6 s), so `fishflow emulator`
starts at once. Exit status: 0 nothing failed, 2 some items failed (manifests written),
1 a run-level error (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
import types
import typing
from typing import Any, get_args, get_origin

from fishflow.errors import ConfigError, FishflowError
from fishflow.settings import RunSettings, validated


def _field_type(annotation: Any) -> tuple[Any, list[str] | None]:
    """argparse type and choices for a RunSettings field annotation."""
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
        origin = get_origin(annotation)
    if origin is typing.Literal:
        return str, [str(a) for a in get_args(annotation)]
    return annotation, None


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run settings (also the flow's `settings` parameter)")
    for name, info in RunSettings.model_fields.items():
        kind, choices = _field_type(info.annotation)
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=kind,
            choices=choices,
            default=None,
            help=f"{info.description} (default: {info.default})",
        )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fishflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="synthesise a catalog and publish audio + manifests")
    run.add_argument("source", help="CSV/JSONL/Parquet file, folder of .txt/.md, or s3:// URI")
    run.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    run.add_argument(
        "--server",
        action="append",
        dest="servers",
        metavar="URL",
        help="Fish Speech server; repeat for a pool; URL#limit=N sets its limit",
    )
    run.add_argument("--force", action="store_true", help="redo items unchanged since a run")
    run.add_argument("--run-id", help="run id (default: time-based)")
    run.add_argument("--api-key-secret", help="Prefect Secret block holding the API key")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_settings_flags(run)

    resume = sub.add_parser("resume", help="finish a run that was stopped or killed")
    resume.add_argument("run_id", help="the run to finish (see <out>/manifests/run=<id>)")
    resume.add_argument("--out", required=True, help="the run's output folder or s3:// prefix")
    resume.add_argument("--quiet", action="store_true", help="no progress bar")

    retry = sub.add_parser("retry-errors", help="re-run only the items that failed in a run")
    retry.add_argument("out", help="output folder or s3://bucket/prefix")
    retry.add_argument("--run", dest="run_id", help="run id (default: the latest run)")
    retry.add_argument(
        "--server",
        action="append",
        dest="servers",
        metavar="URL",
        help="servers to use instead of the run's own",
    )
    retry.add_argument("--quiet", action="store_true", help="no progress bar")

    limits = sub.add_parser(
        "limits", help="shared per-server limits on the Prefect API (PREFECT_API_URL)"
    )
    limits.add_argument("action", choices=["create"], help="create or resize the limits")
    limits.add_argument(
        "--server",
        action="append",
        dest="servers",
        metavar="URL",
        required=True,
        help="server URL; URL#limit=N sets its limit",
    )
    limits.add_argument("--max-in-flight", type=int, default=2, help="default limit per server")

    emu = sub.add_parser("emulator", help="serve the bundled Fish Speech emulator")
    emu.add_argument(
        "--listen", default="127.0.0.1:8080", help="host:port (default 127.0.0.1:8080)"
    )
    emu.add_argument("--workers", type=int, default=1, help="serial workers (default 1)")
    emu.add_argument("--rtf", type=float, default=0.0, help="compute seconds per audio second")
    emu.add_argument(
        "--level-db", type=float, default=None, help="peak level of the voice, dBFS (e.g. -30)"
    )
    emu.add_argument("--service-time", type=float, default=None, help="fixed seconds per request")
    emu.add_argument(
        "--api-key",
        default=os.environ.get("FISHFLOW_EMULATOR_API_KEY"),
        help="require this Bearer key (or FISHFLOW_EMULATOR_API_KEY)",
    )
    emu.add_argument("--max-text-length", type=int, default=None, help="400 above this length")
    for fault in (
        "error_rate",
        "reset_rate",
        "truncate_rate",
        "busy_rate",
        "short_audio_rate",
        "slow_rate",
    ):
        emu.add_argument(
            "--" + fault.replace("_", "-"),
            type=float,
            default=0.0,
            help=f"fault: share of requests answered with {fault.split('_')[0]}",
        )
    emu.add_argument("--retry-after", type=float, default=1.0, help="Retry-After of 429s")
    emu.add_argument("--slow-s", type=float, default=5.0, help="how long a slow generation hangs")
    emu.add_argument(
        "--tier-limit",
        type=int,
        default=None,
        help="answer 429 beyond this many requests in flight (like the cloud)",
    )
    emu.add_argument("--latency", type=float, default=0.0, help="extra seconds per request")
    return parser


def _quiet_prefect() -> None:
    """Keep Prefect's start-up and shutdown noise away from a user's terminal."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


def _run(args: argparse.Namespace) -> int:
    overrides = {k: v for k in RunSettings.model_fields if (v := getattr(args, k)) is not None}
    settings = validated(RunSettings, **overrides)
    servers = args.servers or ["http://127.0.0.1:8080"]
    settings.server_configs(servers)  # refuse bad URLs before paying for Prefect's start-up
    from fishflow.run import new_run_id

    run_id = args.run_id or new_run_id()
    return _with_flow(
        args,
        run_id,
        args.out,
        lambda flows: flows.refresh_catalog_audio(
            source=args.source,
            out=args.out,
            servers=servers,
            settings=settings,
            force=args.force,
            run_id=run_id,
            api_key_secret=args.api_key_secret,
        ),
    )


def _resume(args: argparse.Namespace) -> int:
    from fishflow.manifest import read_run_record
    from fishflow.storage import open_store

    record = read_run_record(open_store(args.out), args.run_id)
    return _with_flow(
        args,
        args.run_id,
        args.out,
        lambda flows: flows.refresh_catalog_audio(
            source=record["source"],
            out=args.out,
            servers=record["servers"],
            settings=validated(RunSettings, **record["settings"]),
            force=record["force"],
            run_id=args.run_id,
            api_key_secret=record.get("api_key_secret"),
            resume=True,
            only_rows=record.get("only_rows"),
        ),
    )


def _retry_errors(args: argparse.Namespace) -> int:
    return _with_flow(
        args,
        None,
        args.out,
        lambda flows: flows.retry_errors(out=args.out, run_id=args.run_id, servers=args.servers),
    )


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _with_flow(args: argparse.Namespace, run_id: str | None, out: str, call: Any) -> int:
    """Run a flow in this process with a progress bar, then print the summary."""
    _quiet_prefect()
    from prefect.exceptions import TerminationSignal  # Prefect's own SIGTERM handler raises it

    import flows.refresh_catalog_audio
    import flows.retry_errors
    from tasks import runtime

    namespace = types.SimpleNamespace(
        refresh_catalog_audio=flows.refresh_catalog_audio.refresh_catalog_audio,
        retry_errors=flows.retry_errors.retry_errors,
    )
    progress = _Progress(enabled=not args.quiet and sys.stderr.isatty())
    runtime.set_progress_listener(progress.update)
    # SIGTERM (a scheduler stopping us) ends the run like Ctrl-C: in-flight work is abandoned,
    # finished items stay recorded in the journal and manifest parts.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    try:
        summary = asyncio.run(call(namespace))
    except (KeyboardInterrupt, TerminationSignal):
        progress.close()
        hint = f"; finish it with: fishflow resume {run_id} --out {out}" if run_id else ""
        print(f"fishflow: stopped; finished items are recorded{hint}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        progress.close()
        runtime.set_progress_listener(None)
    wall = time.monotonic() - started
    if summary.get("run_id") is None:
        print(f"fishflow: run {summary.get('retried_run')} has no failed items: nothing to do")
        return 0
    print(
        f"fishflow: {summary['ok']} ok, {summary['skipped']} skipped, {summary['failed']} failed; "
        f"{summary['audio_seconds']:.1f} s of audio in {wall:.1f} s\n"
        f"manifests: {summary['manifests']['items'].rsplit('/', 1)[0]}"
    )
    return 2 if summary["failed"] else 0


class _Progress:
    def __init__(self, enabled: bool) -> None:
        self.counts = {"ok": 0, "skipped": 0, "failed": 0}
        self.bar = None
        if enabled:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                transient=True,
            )
            self.task = self.bar.add_task("starting Prefect...", total=None)
            self.bar.start()

    def update(self, row: Any) -> None:
        self.counts[row.status] += 1
        if self.bar is not None:
            c = self.counts
            self.bar.update(
                self.task,
                description=(f"items: {c['ok']} ok, {c['skipped']} skipped, {c['failed']} failed"),
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _emulator(args: argparse.Namespace) -> int:
    from fishflow.emulator import Emulator, EmulatorConfig, Faults

    host, _, port = args.listen.rpartition(":")
    faults = Faults(
        error_rate=args.error_rate,
        reset_rate=args.reset_rate,
        truncate_rate=args.truncate_rate,
        busy_rate=args.busy_rate,
        short_audio_rate=args.short_audio_rate,
        slow_rate=args.slow_rate,
        slow_s=args.slow_s,
        retry_after_s=args.retry_after,
        latency_s=args.latency,
    )
    config = EmulatorConfig(
        workers=args.workers,
        rtf=args.rtf,
        level_db=args.level_db,
        service_time_s=args.service_time,
        api_key=args.api_key,
        max_text_length=args.max_text_length,
        tier_limit=args.tier_limit,
        faults=faults,
    )
    emulator = Emulator(config, host=host or "127.0.0.1", port=int(port))
    print(f"fishflow emulator on {emulator.url} ({args.workers} worker(s))", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        emulator.serve_forever()
    return 0


def _limits(args: argparse.Namespace) -> int:
    settings = validated(RunSettings, max_in_flight=args.max_in_flight)
    configs = settings.server_configs(args.servers)
    _quiet_prefect()
    from prefect.settings import get_current_settings

    from tasks.limits import create_limits

    if not get_current_settings().api.url:
        raise ConfigError(
            "PREFECT_API_URL is not set: shared limits live on the Prefect server your runs use"
        )
    created = asyncio.run(create_limits({c.url: c.max_in_flight for c in configs}))
    for name, limit in created.items():
        print(f"fishflow: limit {name} = {limit}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "limits":
            return _limits(args)
        if args.command == "resume":
            return _resume(args)
        if args.command == "retry-errors":
            return _retry_errors(args)
        return _emulator(args)
    except FishflowError as exc:
        print(f"fishflow: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fishflow: interrupted", file=sys.stderr)
        return 130
    finally:
        logging.shutdown()


if __name__ == "__main__":
    sys.exit(main())
