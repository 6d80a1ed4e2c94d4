"""`fishflow` on the command line: run the catalog flow, or serve the emulator.

Prefect is imported only by the commands that need it (about 1.6 s), so `fishflow emulator`
starts at once. Exit status: 0 nothing failed, 2 some items failed (manifests written),
1 a run-level error (one line on stderr, no traceback), 64 a usage error, 130 stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import difflib
import functools
import importlib.metadata
import logging
import os
import signal
import sys
import time
import types
import typing
from typing import TYPE_CHECKING, Any, TypeVar, get_args, get_origin

from pydantic import BaseModel, ValidationError

from fishflow.errors import ConfigError, FishflowError
from fishflow.memory import use_one_arena
from fishflow.settings import RunSettings, ServerConfig, problems
from fishflow.untrusted import printable

if TYPE_CHECKING:
    from fishflow.record import RunSummary

DEFAULT_SERVER = "http://127.0.0.1:8080"
EX_USAGE = 64  # sysexits.h: the command was used incorrectly

EXIT_STATUS = """\
exit status:
  0    nothing failed
  1    a run-level error (unreadable source, no server answering, bad API key, no credit,
       missing bucket, disk full): one line on stderr says what to fix
  2    some items failed; the manifests say which and why (also: items published marked,
       with --qa-on-marked fail)
  64   usage error (unknown option, missing argument, bad value)
  130  stopped (Ctrl-C or SIGTERM); finished items are recorded: fishflow resume RUN_ID --out OUT
"""


class _Parser(argparse.ArgumentParser):
    """argparse that answers a usage error in one line, with the closest option or command
    when one was mistyped, and exits 64 (EX_USAGE: 2 means "some items failed" here)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.commands: dict[str, _Parser] = {}

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EX_USAGE, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")

    def parse(self, args: list[str] | None) -> argparse.Namespace:
        """parse_args, with unknown options reported by the subcommand that was given."""
        parsed, extras = self.parse_known_args(args)
        if extras:
            # argparse reports these against the top-level parser; the subcommand's options
            # are the ones to suggest from.
            parser = self.commands.get(getattr(parsed, "command", None) or "", self)
            parser.error(parser.unrecognized(extras))
        return parsed

    def unrecognized(self, extras: list[str]) -> str:
        known = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
        for arg in extras:
            if arg.startswith("-"):
                option = arg.split("=", 1)[0]
                close = difflib.get_close_matches(option, known, n=1)
                hint = f": did you mean {close[0]}?" if close else ""
                return f"unrecognized option {option}{hint}"
        return f"unexpected argument {extras[0]!r}"

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as exc:
            choices = [str(c) for c in action.choices or ()]
            close = difflib.get_close_matches(str(value), choices, n=1)
            if not close:
                raise
            raise argparse.ArgumentError(
                action, f"{exc.message}: did you mean {close[0]}?"
            ) from exc


def _version() -> str:
    try:
        return importlib.metadata.version("fishflow")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


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
        default = "none" if info.default is None else info.default
        description = info.description or ""
        if "default:" not in description:
            description += f" (default: {default})"
        flag = "--" + name.replace("_", "-")
        if kind is bool:  # --x / --no-x: argparse's type=bool would read "False" as True
            group.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, help=description
            )
            continue
        group.add_argument(
            flag,
            dest=name,
            type=kind,
            choices=choices,
            default=None,
            help=description,
        )


def _build_parser() -> _Parser:
    parser = _Parser(prog="fishflow", description=__doc__.splitlines()[0], epilog=EXIT_STATUS)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run", help="synthesise a catalog and publish audio + manifests", epilog=EXIT_STATUS
    )
    run.add_argument(
        "source",
        help="CSV/JSONL/Parquet file, folder of .txt/.md, s3:// URI, database URL (with --table "
        "or --query), env:NAME or secret:NAME (a Prefect Secret block)",
    )
    run.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    run.add_argument(
        "--server",
        action="append",
        dest="servers",
        metavar="URL",
        help="Fish Speech server; repeat for a pool; URL#limit=N sets its limit "
        f"(default: {DEFAULT_SERVER})",
    )
    run.add_argument("--force", action="store_true", help="redo items unchanged since a run")
    run.add_argument(
        "--prune",
        action="store_true",
        help="delete audio no current item uses: items gone from the source, older formats",
    )
    run.add_argument("--run-id", help="run id (default: time-based)")
    run.add_argument(
        "--api-key-secret",
        help="Prefect Secret block holding the API key (default: FISHFLOW_API_KEY, or none)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument(
        "--deployment",
        metavar="NAME",
        help="submit the run to this Prefect deployment instead of running it here",
    )
    run.add_argument(
        "--shards",
        type=int,
        default=1,
        help="with --deployment: split the run into N child runs any worker may take (default: 1)",
    )
    _add_settings_flags(run)

    resume = sub.add_parser(
        "resume", help="finish a run that was stopped or killed", epilog=EXIT_STATUS
    )
    resume.add_argument("run_id", help="the run to finish (see <out>/manifests/run=<id>)")
    resume.add_argument("--out", required=True, help="the run's output folder or s3:// prefix")
    resume.add_argument("--quiet", action="store_true", help="no progress bar")

    retry = sub.add_parser(
        "retry-errors", help="re-run only the items that failed in a run", epilog=EXIT_STATUS
    )
    retry.add_argument("out", help="output folder or s3://bucket/prefix")
    retry.add_argument("--run", dest="run_id", help="run id (default: the latest run)")
    retry.add_argument(
        "--server",
        action="append",
        dest="servers",
        metavar="URL",
        help="servers to use instead of the run's own (default: the run's own)",
    )
    retry.add_argument("--quiet", action="store_true", help="no progress bar")

    plan = sub.add_parser(
        "plan",
        help="what a run would do and cost (rows, chunks, cache, audio, GPU time); sends nothing",
    )
    plan.add_argument("source", help="CSV/JSONL/Parquet file, folder of .txt/.md, or s3:// URI")
    plan.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    plan.add_argument(
        "--server",
        action="append",
        dest="servers",
        metavar="URL",
        help="the servers the run would use (only their number counts; none is contacted)",
    )
    plan.add_argument("--force", action="store_true", help="as `run --force`: redo everything")
    plan.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    _add_settings_flags(plan)

    gc = sub.add_parser("gc", help="delete chunk audio that no manifest of OUT references")
    gc.add_argument("out", help="output folder or s3://bucket/prefix")
    gc.add_argument(
        "--chunk-cache",
        default=None,
        help="the runs' chunk folder, if they used --chunk-cache "
        "(default: <out>/.fishflow/chunks; ~/.cache/fishflow/<hash>/chunks for S3)",
    )
    gc.add_argument("--dry-run", action="store_true", help="list what would go, delete nothing")
    gc.add_argument(
        "--adopt",
        action="store_true",
        help="collect a chunk folder that has no fishflow marker (made by an older version) "
        "when every file in it is chunk audio in fishflow's layout",
    )
    gc.add_argument(
        "--grace-s",
        type=float,
        default=3600.0,
        help="keep unreferenced files younger than this: a run going on now may need them "
        "(default 3600)",
    )

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
    limits.add_argument(
        "--max-in-flight", type=int, default=2, help="default limit per server (default: 2)"
    )

    preview = sub.add_parser(
        "preview",
        help="print what a run would speak, chunk by chunk, with pauses (sends nothing)",
    )
    preview.add_argument("source", help="CSV/JSONL/Parquet file, folder of .txt/.md, or s3:// URI")
    preview.add_argument(
        "--id", dest="item_ids", action="append", metavar="ID", help="only this item; repeat"
    )
    preview.add_argument("--limit", type=int, default=None, metavar="N", help="at most N items")
    _add_settings_flags(preview)

    dep = sub.add_parser(
        "deploy",
        help="register the work pool, deployments, shared limits and crash automation "
        "on the Prefect API (PREFECT_API_URL)",
    )
    dep.add_argument("--pool", default="fishflow", help="process work pool (default fishflow)")
    dep.add_argument(
        "--server",
        action="append",
        dest="servers",
        metavar="URL",
        help="create shared limits for these servers instead of the deployments' own",
    )
    dep.add_argument(
        "--heartbeat-s",
        type=int,
        default=30,
        help="flow-run heartbeat interval; a run silent for 3 of them is marked Crashed "
        "(default 30, Prefect's minimum)",
    )
    dep.add_argument(
        "--prune",
        action="store_true",
        help="delete deployments of fishflow's flows on the pool that the file no longer has",
    )
    dep.add_argument(
        "--prefect-file",
        default=None,
        help="deployments file (default: deployments/prefect.yaml of this checkout)",
    )

    voices = sub.add_parser(
        "voices", help="list, add or delete the voices a Fish Speech server holds"
    )
    voices.add_argument("action", choices=["list", "add", "delete"], help="what to do")
    voices.add_argument("id", nargs="?", help="voice id (add, delete): letters, digits, - _ space")
    voices.add_argument("--audio", metavar="FILE", help="add: reference recording (10-30 s)")
    voices.add_argument("--text", help="add: what is said in the recording")
    voices.add_argument(
        "--server",
        default="http://127.0.0.1:8080",
        metavar="URL",
        help="the server (default http://127.0.0.1:8080); key from FISHFLOW_API_KEY",
    )

    emu = sub.add_parser("emulator", help="serve the bundled Fish Speech emulator")
    emu.add_argument(
        "--listen", default="127.0.0.1:8080", help="host:port (default 127.0.0.1:8080)"
    )
    emu.add_argument("--workers", type=int, default=1, help="serial workers (default 1)")
    emu.add_argument(
        "--rtf", type=float, default=0.0, help="compute seconds per audio second (default: 0)"
    )
    emu.add_argument(
        "--level-db", type=float, default=None, help="peak level of the voice, dBFS (e.g. -30)"
    )
    emu.add_argument(
        "--service-time",
        type=float,
        default=None,
        help="fixed seconds per request (default: none, --rtf decides)",
    )
    emu.add_argument(
        "--api-key",
        default=os.environ.get("FISHFLOW_EMULATOR_API_KEY"),
        help="require this Bearer key (default: FISHFLOW_EMULATOR_API_KEY, or none)",
    )
    emu.add_argument(
        "--max-text-length",
        type=int,
        default=None,
        help="400 above this length (default: no limit)",
    )
    emu.add_argument(
        "--bad-answers",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share of answers (0..1) that are 200 with the wrong speech: the end said again, "
        "the end swallowed, a noise tail or babble, drawn from text and seed (default: 0)",
    )
    emu.add_argument(
        "--speak",
        action="store_true",
        help="say the text in real words (espeak-ng: pip install 'fishflow[speech]') "
        "instead of a tone",
    )
    emu.add_argument(
        "--accept-any-reference-id",
        action="store_true",
        help="answer ids outside [a-zA-Z0-9 _-] like servers before March 2026 (default voice)",
    )
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
            help=f"fault: share of requests answered with {fault.split('_')[0]} (default: 0)",
        )
    emu.add_argument(
        "--retry-after", type=float, default=1.0, help="Retry-After of 429s (default: 1)"
    )
    emu.add_argument(
        "--slow-s", type=float, default=5.0, help="how long a slow generation hangs (default: 5)"
    )
    emu.add_argument(
        "--tier-limit",
        type=int,
        default=None,
        help="answer 429 beyond this many requests in flight, like the cloud (default: no limit)",
    )
    emu.add_argument(
        "--latency", type=float, default=0.0, help="extra seconds per request (default: 0)"
    )
    parser.commands = dict(sub.choices)
    return parser


def _quiet_prefect() -> None:
    """Keep Prefect's start-up and shutdown noise away from a user's terminal.

    Call before importing Prefect. Its run logs still reach the Prefect API (and its UI) at
    Prefect's own level; only the console is filtered, by `_filter_prefect_console`.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # telemetry notices
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    # The ephemeral API takes 10-25 s to start here, more on a busy machine; the default
    # 20 s limit turned a slow start into a failed run.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


class _OwnWarningsOnly(logging.Filter):
    """On the console: warnings from fishflow (and other libraries), nothing Prefect says
    itself. A run that fails is reported in one line by `main`; Prefect's engine would
    print its traceback and "Finished in state Failed" first, and its event worker adds
    "Still processing items" at exit. All of it still goes to the Prefect API."""

    def __init__(self, prefect_dir: str) -> None:
        super().__init__()
        self.prefect_dir = prefect_dir

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or record.pathname.startswith(self.prefect_dir):
            return False
        # Run loggers carry what fishflow's flows and tasks log; other prefect.* and server
        # loggers are Prefect's own, whoever calls them.
        return record.name.startswith(("prefect.flow_runs", "prefect.task_runs")) or (
            not record.name.startswith(("prefect", "uvicorn", "fastapi"))
        )


def _filter_prefect_console() -> None:
    """Attach `_OwnWarningsOnly` to the handlers Prefect writes to the terminal with."""
    import prefect
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()  # a no-op once done; later set-ups are incremental and keep filters
    prefect_dir = os.path.dirname(prefect.__file__)
    # The root's console handler, and the one of Prefect's internal machinery (its services
    # log ERROR lines there, e.g. while a concurrency slot is awaited).
    names = ["", "uvicorn", "fastapi", "prefect._internal"]
    handlers = {h for name in names for h in logging.getLogger(name).handlers}
    for handler in handlers:
        if isinstance(handler, logging.StreamHandler) and not any(
            isinstance(f, _OwnWarningsOnly) for f in handler.filters
        ):
            handler.addFilter(_OwnWarningsOnly(prefect_dir))


_Model = TypeVar("_Model", bound=BaseModel)


class _BadFlag(Exception):
    """A flag's value out of range or malformed: a usage error (exit 64), naming the flag."""


def _from_flags(model_class: type[_Model], /, **values: object) -> _Model:
    """A settings model from flags; ``server=`` stands for ServerConfig's url (--server)."""
    if "server" in values:
        values["url"] = values.pop("server")
    try:
        return model_class(**values)
    except ValidationError as exc:
        raise _BadFlag(problems(exc, _flag)) from None


def _flag(loc: tuple[Any, ...]) -> str:
    """The flag an error's location stands for ("" for the model as a whole)."""
    if not loc:
        return ""
    return "--server" if loc[0] == "url" else "--" + str(loc[0]).replace("_", "-")


def _check_server_flags(urls: list[str]) -> None:
    """Each `--server` value's URL (before any #limit=N) is one a server can have."""
    for url in urls:
        _from_flags(ServerConfig, server=url.partition("#")[0])


def _server_flags(settings: RunSettings, urls: list[str]) -> list[ServerConfig]:
    """`--server` values as server configs; a malformed one is a usage error."""
    _check_server_flags(urls)
    try:
        return settings.server_configs(urls)
    except ConfigError as exc:  # URL#limit=N with a bad N
        raise _BadFlag(f"--server: {exc.message}") from None


def _preflight(source: str, servers: list[ServerConfig], settings: RunSettings) -> None:
    """What would stop the run at once, found before Prefect starts (seconds) and before
    anything is written: a source that cannot be read (a database's table or query too),
    servers that all refuse connections."""
    from fishflow.pool import check_servers
    from fishflow.run import columns
    from fishflow.sources import check_source

    check_source(source, columns=columns(settings), table=settings.table, query=settings.query)
    asyncio.run(check_servers(servers))


def _run(args: argparse.Namespace) -> int:
    overrides = {k: v for k in RunSettings.model_fields if (v := getattr(args, k)) is not None}
    settings = _from_flags(RunSettings, **overrides)
    from fishflow.database import SOURCE_URL_ENV, split_secrets

    # Secrets typed in the URL (a password, ?password=, ?token=...) stay in this process: the
    # flow, its parameters and the run record see the masked URL, and the core reads the
    # whole URL from this process's environment, which Prefect does not store.
    source, unmasked = split_secrets(args.source)
    if args.deployment:
        if unmasked:
            raise ConfigError(
                "a password in the source URL would travel in the flow run's parameters: "
                "give the source as secret:NAME (a Prefect Secret block) or env:NAME"
            )
        return _submit(args, overrides)
    if args.shards != 1:
        raise ConfigError("--shards needs --deployment: child runs are runs of a deployment")
    servers = args.servers or [DEFAULT_SERVER]
    configs = _server_flags(settings, servers)  # bad URLs are refused before Prefect starts
    if settings.query is not None:  # one statement that reads: a bad value, said as one
        from fishflow.database import check_query

        try:
            check_query(settings.query)
        except ConfigError as exc:
            raise _BadFlag(exc.message) from None
    _preflight(args.source, configs, settings)
    from fishflow.run import new_run_id

    run_id = args.run_id or new_run_id()
    if unmasked:
        os.environ[SOURCE_URL_ENV] = unmasked
    return _with_flow(
        args,
        run_id,
        args.out,
        lambda flows: flows.refresh_catalog_audio(
            source=source,
            out=args.out,
            servers=servers,
            settings=settings,
            force=args.force,
            prune=args.prune,
            run_id=run_id,
            api_key_secret=args.api_key_secret,
        ),
    )


def _resume(args: argparse.Namespace) -> int:
    from fishflow.record import read_run_record
    from fishflow.storage import open_store

    record = read_run_record(open_store(args.out), args.run_id)
    settings = record.settings
    _preflight(record.source, settings.server_configs(record.servers), settings)
    return _with_flow(
        args,
        args.run_id,
        args.out,
        lambda flows: flows.refresh_catalog_audio(
            source=record.source,
            out=args.out,
            servers=record.servers,
            settings=settings,
            force=record.force,
            prune=record.prune,
            run_id=args.run_id,
            api_key_secret=record.api_key_secret,
            resume=True,
            only_rows=record.only_rows,
        ),
    )


def _retry_errors(args: argparse.Namespace) -> int:
    _check_server_flags(args.servers or [])
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
    from prefect.settings import get_current_settings

    _filter_prefect_console()
    if not get_current_settings().api.url:  # Prefect will start a server of its own for us
        from fishflow.watchdog import guard_children

        guard_children()  # which must not outlive this process, even SIGKILLed

    from fishflow.flows.refresh_catalog_audio import refresh_catalog_audio
    from fishflow.flows.retry_errors import retry_errors
    from fishflow.run import progress_listener
    from fishflow.tasks.prefect_run import run_result

    async def summary_of(flow_fn: Any, **kwargs: Any) -> RunSummary:
        # A run with too many failed items ends Failed in Prefect; the CLI still prints its
        # summary and exits 2, as it always has.
        return await run_result(await flow_fn(**kwargs, return_state=True))

    namespace = types.SimpleNamespace(
        refresh_catalog_audio=functools.partial(summary_of, refresh_catalog_audio),
        retry_errors=functools.partial(summary_of, retry_errors),
    )
    from fishflow.settings import EnvSettings

    mode = "off" if args.quiet else "bar" if sys.stderr.isatty() else "lines"
    progress = _Progress(mode, EnvSettings().progress_interval_s)
    watching = progress_listener.set(progress)
    # SIGTERM (a scheduler stopping us) ends the run like Ctrl-C: in-flight work is abandoned,
    # finished items stay recorded in the journal and manifest parts.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    stops = (KeyboardInterrupt, TerminationSignal)
    try:
        summary = asyncio.run(call(namespace))
    except BaseException as exc:
        # The signal may land inside anyio's task group (an HTTP connect to Prefect's API),
        # which wraps it in an exception group.
        stopped = isinstance(exc, stops) or (
            isinstance(exc, BaseExceptionGroup) and exc.subgroup(stops) is not None
        )
        if not stopped:
            raise
        progress.close()
        hint = f"; finish it with: fishflow resume {run_id} --out {out}" if run_id else ""
        print(f"fishflow: stopped; finished items are recorded{hint}", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        if "ephemeral Prefect API" not in str(exc):
            raise
        # Its message carries the server's whole stdout and stderr: not a line to print.
        raise ConfigError(
            "Prefect's temporary API did not start in time: start one with `prefect server "
            "start` and set PREFECT_API_URL (or raise "
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)"
        ) from exc
    finally:
        signal.signal(signal.SIGTERM, previous)
        progress.close()
        progress_listener.reset(watching)
    wall = time.monotonic() - started
    if summary.run_id is None:
        print(f"fishflow: run {summary.retried_run} has no failed items: nothing to do")
        return 0
    # Removed items are extra manifest rows (gone from the source), not among the run's items.
    counts = {"marked": summary.marked, "removed": summary.removed, "pruned": summary.pruned}
    hygiene = "".join(f", {n} {what}" for what, n in counts.items() if n)
    print(
        f"fishflow: {summary.ok} ok, {summary.skipped} skipped, {summary.failed} failed"
        f"{hygiene}; {summary.audio_seconds:.1f} s of audio in {wall:.1f} s\n"
        f"manifests: {summary.manifests['items'].rsplit('/', 1)[0]}"
    )
    if summary.report:
        print(f"report: {summary.report}")
    for uri in summary.pruned_files[:PRINTED]:
        print(f"  pruned: {uri}")
    if summary.pruned > min(len(summary.pruned_files), PRINTED):
        print("  (every pruned file is named in the run's log)")
    _print_failures(summary)
    if marked := summary.marked:
        print(
            f"  marked: {marked} item(s) published with an answer that failed the check on every "
            "try (items.parquet: qa, qa_check); the next run makes them again",
            file=sys.stderr,
        )
    return summary.exit_code


PRINTED = 5  # failed items, and pruned files, named after a run


def _print_failures(summary: RunSummary) -> None:
    """The first failed items and why, on stderr: the errors manifest has them all."""
    for failure in summary.failures[:PRINTED]:
        first_line = failure.error.splitlines()[0] if failure.error else ""
        # Ids and error text come from the source and the servers: escaped for the terminal.
        print(
            f"  failed: {printable(failure.item_id or '(no id)')} "
            f"(row {failure.source_row}): {printable(first_line[:200])}",
            file=sys.stderr,
        )
    if summary.failed > min(len(summary.failures), PRINTED):
        print(
            "  (all failures, with their stage: errors.parquet in the manifests)", file=sys.stderr
        )


class _Progress:
    """A bar with a total and ETA on a terminal; otherwise (mode "lines": a scheduler's log,
    nohup, CI) a progress line on stderr every `interval_s`, so a long run is never silent."""

    def __init__(self, mode: str, interval_s: float) -> None:
        from fishflow.progress import Tally, Ticker

        self.tally = Tally(None)  # the flow gives the total it estimates (start)
        self.bar = None
        self.ticker: Ticker | None = None
        if mode == "bar":
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            # Until the flow gives its total (start), the bar pulses and the count reads "n/?".
            self.bar = Progress(
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

    def update(self, row: Any) -> None:
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


def _plan(args: argparse.Namespace) -> int:
    """No Prefect, no server contact, nothing written: the run's own code, counting."""
    import json

    from fishflow.plan import describe, make_plan

    overrides = {k: v for k in RunSettings.model_fields if (v := getattr(args, k)) is not None}
    settings = _from_flags(RunSettings, **overrides)
    servers = _server_flags(settings, args.servers or ["http://127.0.0.1:8080"])
    plan = make_plan(args.source, args.out, settings, servers=len(servers), force=args.force)
    print(json.dumps(plan.as_dict()) if args.json else describe(plan, args.source, args.out))
    return 0


def _size(n: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} TB"


def _gc(args: argparse.Namespace) -> int:
    from fishflow.chunk_cache import RemoteChunks
    from fishflow.hygiene import (
        Collected,
        chunk_cache_dir,
        collect_chunks,
        collect_output_chunks,
        referenced_chunk_keys,
    )
    from fishflow.storage import open_store, output_exists

    if not output_exists(args.out):
        raise ConfigError(f"{args.out}: no such output folder")
    store = open_store(args.out)
    cache_dir = chunk_cache_dir(store, args.chunk_cache)
    keys = referenced_chunk_keys(store)
    found: list[tuple[str, Collected]] = []
    if os.path.isdir(cache_dir):
        local = collect_chunks(
            store,
            cache_dir,
            dry_run=args.dry_run,
            min_age_s=args.grace_s,
            keys=keys,
            adopt=args.adopt,
        )
        found.append((cache_dir, local))
    if store.remote:  # the output's own copy, which runs on any machine reuse
        copy = collect_output_chunks(store, dry_run=args.dry_run, min_age_s=args.grace_s, keys=keys)
        found.append((store.uri(RemoteChunks.PREFIX), copy))
    if not found:
        print(f"fishflow: no chunk audio in {cache_dir}: nothing to collect")
        return 0
    verb = "would delete" if args.dry_run else "deleted"
    for where, done in found:
        if args.dry_run:
            for path, size in done.deleted:
                print(f"would delete {path} ({_size(size)})")
        young = (
            f"; {done.recent_files:,} unreferenced file(s) younger than {args.grace_s:g} s kept"
            if done.recent_files
            else ""
        )
        foreign = (
            f"; left {len(done.foreign):,} file(s) fishflow did not write, e.g. {done.foreign[0]}"
            if done.foreign
            else ""
        )
        if done.adopted:
            adopted = "would adopt" if args.dry_run else "adopted"
            print(f"fishflow: {where}: {adopted} as a chunk cache (every file is chunk audio)")
        print(
            f"fishflow: {verb} {len(done.deleted):,} chunk file(s), "
            f"{_size(done.deleted_bytes)}; kept {done.kept_files:,} referenced, "
            f"{_size(done.kept_bytes)}{young}{foreign} ({where})"
        )
    return 0


def _preview(args: argparse.Namespace) -> int:
    """Chunks as `run` would send them, from the same code path, without Prefect or servers."""
    from fishflow.items import Rejection, item_chunks
    from fishflow.run import entry_batches, run_spec
    from fishflow.spoken import rule_summary, said_as

    overrides = {k: v for k in RunSettings.model_fields if (v := getattr(args, k)) is not None}
    settings = _from_flags(RunSettings, **overrides)
    spec = run_spec(settings)
    wanted = set(args.item_ids or ())
    items = chunks = mid_sentence = failing = 0
    rules: collections.Counter[str] = collections.Counter()
    for batch in entry_batches(args.source, settings, spec):
        for entry in batch.entries:
            if wanted and entry.item_id not in wanted:
                continue
            if args.limit is not None and items >= args.limit:
                break
            items += 1
            wanted.discard(entry.item_id or "")
            if isinstance(entry, Rejection):
                shown = printable(entry.item_id or "(no id)")
                print(f"== {shown} (row {entry.row}): fails: {printable(entry.reason)}")
                failing += 1
                continue
            parts = item_chunks(entry, spec)
            print(
                f"== {printable(entry.item_id)} (row {entry.row}, {printable(entry.language)}, "
                f"{len(entry.text):,} characters, {len(parts)} chunk{'s' * (len(parts) != 1)})"
            )
            for c in parts:
                join = (
                    "(end)"
                    if c.boundary == "end"
                    else f"⟂ {spec.audio.pause_after_ms(c.boundary)} ms ({c.boundary})"
                )
                print(f"[chunk {c.index}, {c.utf8_bytes} B] {printable(c.text)} {join}")
                if c.said:
                    said = " · ".join(said_as(w, s, r) for w, s, r in c.said)
                    print(f"    said: {printable(said)}")
                rules.update(r for _, _, r in c.said)
            chunks += len(parts)
            mid_sentence += sum(c.ends_mid_sentence for c in parts)
    if wanted:
        raise ConfigError(f"no item with id {', '.join(sorted(map(repr, wanted)))} in the source")
    share = f"{mid_sentence / chunks:.1%}" if chunks else "0%"
    fails = f" ({failing} would fail before synthesis)" if failing else ""
    print(
        f"fishflow: {items} row{'s' * (items != 1)}{fails}, {chunks} chunks "
        f"(budget {spec.chunking.max_bytes} B), {mid_sentence} end mid-sentence ({share})"
    )
    if rules:
        print(f"fishflow: said differently from the text: {rule_summary(rules)}")
    return 0


def _emulator(args: argparse.Namespace) -> int:
    from fishflow.testing.emulator import Emulator, EmulatorConfig, Faults

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
        check_reference_ids=not args.accept_any_reference_id,
        tier_limit=args.tier_limit,
        faults=faults,
        bad_answers=args.bad_answers,
        speak=args.speak,
    )
    emulator = Emulator(config, host=host or "127.0.0.1", port=int(port))
    print(f"fishflow emulator on {emulator.url} ({args.workers} worker(s))", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        emulator.serve_forever()
    return 0


def _require_prefect_api(what: str) -> None:
    _quiet_prefect()
    from prefect.settings import get_current_settings

    _filter_prefect_console()

    if not get_current_settings().api.url:
        raise ConfigError(f"PREFECT_API_URL is not set: {what}")


def _submit(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    """Start a run of a deployment with this command's source, output and options (only the
    options given: the rest come from the deployment), and say where to follow it."""
    _require_prefect_api("--deployment submits the run to the Prefect server your workers use")
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    from fishflow.run import new_run_id

    name = args.deployment
    if "/" not in name:
        name = f"refresh-catalog-audio/{name}"
    # The worker runs in the project's folder, not here: local paths must not be relative.
    source, out = (p if "://" in p else os.path.abspath(p) for p in (args.source, args.out))
    run_id = args.run_id or new_run_id()
    parameters: dict[str, Any] = {
        "source": source,
        "out": out,
        "shards": args.shards,
        "run_id": run_id,
    }
    if args.servers:
        parameters["servers"] = args.servers
    if overrides:
        parameters["settings"] = overrides
    if args.force:
        parameters["force"] = True
    if args.prune:
        parameters["prune"] = True
    if args.api_key_secret:
        parameters["api_key_secret"] = args.api_key_secret
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


def _deploy(args: argparse.Namespace) -> int:
    _require_prefect_api("deployments live on the Prefect server your workers use")
    from pathlib import Path

    from fishflow.tasks.deploy import PREFECT_FILE, deploy

    done = deploy(
        pool=args.pool,
        servers=args.servers,
        heartbeat_s=args.heartbeat_s,
        prefect_file=Path(args.prefect_file) if args.prefect_file else PREFECT_FILE,
        prune=args.prune,
    )
    state = "created" if done["pool_created"] else "exists"
    print(f"fishflow: work pool {done['pool']} ({state})")
    for name in done["deployments"]:
        print(f"fishflow: deployment {name}")
    for name, limit in done["limits"].items():
        print(f"fishflow: limit {name} = {limit}")
    for note in done["kept"]:
        print(f"fishflow: left as an operator set it: {note}")
    for name in done["stale"]:
        if done["pruned"]:
            print(f"fishflow: deleted deployment {name} (no longer in the file)")
        else:
            print(
                f"fishflow: deployment {name} is no longer in the file; "
                "`fishflow deploy --prune` deletes it and its scheduled runs"
            )
    print(
        f"fishflow: start a worker with: prefect worker start --pool {done['pool']} "
        "(from this project's environment)"
    )
    return 0


def _limits(args: argparse.Namespace) -> int:
    settings = _from_flags(RunSettings, max_in_flight=args.max_in_flight)
    configs = _server_flags(settings, args.servers)
    _quiet_prefect()
    from prefect.settings import get_current_settings

    _filter_prefect_console()

    from fishflow.tasks.limits import create_limits

    if not get_current_settings().api.url:
        raise ConfigError(
            "PREFECT_API_URL is not set: shared limits live on the Prefect server your runs use"
        )
    created, _ = asyncio.run(create_limits({c.url: c.max_in_flight for c in configs}))
    for name, limit in created.items():
        print(f"fishflow: limit {name} = {limit}")
    return 0


def _voices(args: argparse.Namespace) -> int:
    """`fishflow voices list|add|delete` over the server's /v1/references API."""
    from fishflow.fish_speech import FishSpeechClient
    from fishflow.settings import EnvSettings, ServerConfig

    if args.action != "list" and not args.id:
        raise ConfigError(
            f"voices {args.action} needs a voice id: fishflow voices {args.action} ID"
        )
    audio = b""
    if args.action == "add":
        if not args.audio or not (args.text or "").strip():
            raise ConfigError("voices add needs --audio FILE and --text 'what the file says'")
        try:
            with open(args.audio, "rb") as fh:
                audio = fh.read()
        except OSError as exc:
            raise ConfigError(f"cannot read {args.audio}: {exc.strerror}") from None
    url = _from_flags(ServerConfig, server=args.server).url
    key = EnvSettings().api_key

    async def call() -> int:
        api_key = key.get_secret_value() if key else None
        async with FishSpeechClient(url, api_key=api_key) as fish:
            if args.action == "list":
                ids = await fish.list_references()
                print("\n".join(ids) if ids else f"fishflow: {url} holds no voices")
            elif args.action == "add":
                name = os.path.basename(args.audio)
                print(await fish.add_reference(args.id, audio=audio, text=args.text, filename=name))
            else:
                print(await fish.delete_reference(args.id))
        return 0

    return asyncio.run(call())


def main(argv: list[str] | None = None) -> int:
    use_one_arena()  # before any thread allocates (see fishflow.memory)
    args = _build_parser().parse(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "limits":
            return _limits(args)
        if args.command == "deploy":
            return _deploy(args)
        if args.command == "resume":
            return _resume(args)
        if args.command == "retry-errors":
            return _retry_errors(args)
        if args.command == "voices":
            return _voices(args)
        if args.command == "plan":
            return _plan(args)
        if args.command == "gc":
            return _gc(args)
        if args.command == "preview":
            return _preview(args)
        return _emulator(args)
    except _BadFlag as exc:
        command = f"fishflow {args.command}"
        print(f"{command}: error: {exc} (see: {command} --help)", file=sys.stderr)
        return EX_USAGE
    except FishflowError as exc:
        print(f"fishflow: error: {printable(exc.message)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fishflow: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        try:  # only stdout's reader going away (`fishflow plan ... | head`) ends quietly
            sys.stdout.flush()
        except BrokenPipeError:
            # stdout goes to /dev/null so that Python's flush at exit does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        raise
    finally:
        logging.shutdown()


if __name__ == "__main__":
    sys.exit(main())
