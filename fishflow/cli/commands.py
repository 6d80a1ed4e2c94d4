"""The commands, one function each: parse (cyclopts, from the signature and docstring), call
the core or a flow, print. `fishflow.cli` registers them on the app."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
from typing import Annotated, Literal

from cyclopts import Parameter

from fishflow.cli import flow
from fishflow.cli.flags import (
    DEFAULT_SERVER,
    Servers,
    Settings,
    Switch,
    UsageError,
    check_server_flags,
    from_flags,
    given,
    server_configs,
)
from fishflow.cli.prefect_console import require_prefect_api
from fishflow.errors import ConfigError
from fishflow.settings import RunSettings, ServerConfig
from fishflow.untrusted import printable


def run(
    source: str,
    /,
    *,
    out: str,
    servers: Servers = None,
    force: Switch = False,
    prune: Switch = False,
    run_id: str | None = None,
    api_key_secret: str | None = None,
    quiet: Switch = False,
    deployment: Annotated[str | None, Parameter(metavar="NAME")] = None,
    shards: int = 1,
    settings: Settings = None,
) -> int:
    """Synthesise a catalog and publish audio + manifests.

    Parameters
    ----------
    source
        CSV/JSONL/Parquet file, folder of .txt/.md, s3:// URI, database URL (with --table or
        --query), env:NAME or secret:NAME (a Prefect Secret block).
    out
        Output folder or s3://bucket/prefix.
    servers
        Fish Speech server; repeat for a pool; URL#limit=N sets its limit
        (default: http://127.0.0.1:8080).
    force
        Redo items unchanged since a run.
    prune
        Delete audio no current item uses: items gone from the source, older formats.
    run_id
        Run id (default: time-based).
    api_key_secret
        Prefect Secret block holding the API key (default: FISHFLOW_API_KEY, or none).
    quiet
        No progress bar.
    deployment
        Submit the run to this Prefect deployment instead of running it here.
    shards
        With --deployment: split the run into N child runs any worker may take.
    """
    from fishflow.database import SOURCE_URL_ENV, split_secrets

    options = settings or RunSettings()
    # Secrets typed in the URL (a password, ?password=, ?token=...) stay in this process: the
    # flow, its parameters and the run record see the masked URL, and the core reads the
    # whole URL from this process's environment, which Prefect does not store.
    masked, unmasked = split_secrets(source)
    if deployment:
        if unmasked:
            raise ConfigError(
                "a password in the source URL would travel in the flow run's parameters: "
                "give the source as secret:NAME (a Prefect Secret block) or env:NAME"
            )
        return flow.submit(
            deployment,
            source=source,
            out=out,
            shards=shards,
            run_id=run_id,
            servers=servers,
            settings=given(settings),
            force=force,
            prune=prune,
            api_key_secret=api_key_secret,
        )
    if shards != 1:
        raise ConfigError("--shards needs --deployment: child runs are runs of a deployment")
    servers = servers or [DEFAULT_SERVER]
    configs = server_configs(options, servers)  # bad URLs are refused before Prefect starts
    if options.query is not None:  # one statement that reads: a bad value, said as one
        from fishflow.database import check_query

        try:
            check_query(options.query)
        except ConfigError as exc:
            raise UsageError(exc.message) from None
    _preflight(source, configs, options)
    from fishflow.run import new_run_id

    if unmasked:
        os.environ[SOURCE_URL_ENV] = unmasked
    return flow.refresh_catalog_audio(
        source=masked,
        out=out,
        servers=servers,
        settings=options,
        force=force,
        prune=prune,
        run_id=run_id or new_run_id(),
        api_key_secret=api_key_secret,
        quiet=quiet,
    )


def resume(run_id: str, /, *, out: str, quiet: Switch = False) -> int:
    """Finish a run that was stopped or killed.

    Parameters
    ----------
    run_id
        The run to finish (see <out>/manifests/run=<id>).
    out
        The run's output folder or s3:// prefix.
    quiet
        No progress bar.
    """
    from fishflow.record import read_run_record
    from fishflow.storage import open_store

    record = read_run_record(open_store(out), run_id)
    _preflight(record.source, record.settings.server_configs(record.servers), record.settings)
    return flow.refresh_catalog_audio(
        source=record.source,
        out=out,
        servers=record.servers,
        settings=record.settings,
        force=record.force,
        prune=record.prune,
        run_id=run_id,
        api_key_secret=record.api_key_secret,
        quiet=quiet,
        resume=True,
        only_rows=record.only_rows,
    )


def retry_errors(
    out: str,
    /,
    *,
    run_id: Annotated[str | None, Parameter(name="--run", metavar="RUN_ID")] = None,
    servers: Servers = None,
    quiet: Switch = False,
) -> int:
    """Re-run only the items that failed in a run.

    Parameters
    ----------
    out
        Output folder or s3://bucket/prefix.
    run_id
        Run id (default: the latest run).
    servers
        Servers to use instead of the run's own (default: the run's own).
    quiet
        No progress bar.
    """
    check_server_flags(servers or [])
    return flow.retry_errors(out=out, run_id=run_id, servers=servers, quiet=quiet)


def plan(
    source: str,
    /,
    *,
    out: str,
    servers: Servers = None,
    force: Switch = False,
    json: Switch = False,
    settings: Settings = None,
) -> int:
    """What a run would do and cost (rows, chunks, cache, audio, GPU time); sends nothing.

    No Prefect, no server contact, nothing written: the run's own code, counting.

    Parameters
    ----------
    source
        CSV/JSONL/Parquet file, folder of .txt/.md, or s3:// URI.
    out
        Output folder or s3://bucket/prefix.
    servers
        The servers the run would use (only their number counts; none is contacted).
    force
        As `run --force`: redo everything.
    json
        Print the plan as one JSON object.
    """
    import json as json_module

    from fishflow.plan import describe, make_plan

    options = settings or RunSettings()
    count = len(server_configs(options, servers or [DEFAULT_SERVER]))
    made = make_plan(source, out, options, servers=count, force=force)
    print(json_module.dumps(made.as_dict()) if json else describe(made, source, out))
    return 0


def gc(
    out: str,
    /,
    *,
    chunk_cache: str | None = None,
    dry_run: Switch = False,
    adopt: Switch = False,
    grace_s: float = 3600.0,
) -> int:
    """Delete chunk audio that no manifest of OUT references.

    Parameters
    ----------
    out
        Output folder or s3://bucket/prefix.
    chunk_cache
        The runs' chunk folder, if they used --chunk-cache
        (default: <out>/.fishflow/chunks; ~/.cache/fishflow/<hash>/chunks for S3).
    dry_run
        List what would go, delete nothing.
    adopt
        Collect a chunk folder that has no fishflow marker (made by an older version) when
        every file in it is chunk audio in fishflow's layout.
    grace_s
        Keep unreferenced files younger than this: a run going on now may need them.
    """
    from fishflow.hygiene import collect_garbage, describe_collection

    found = collect_garbage(
        out, chunk_cache=chunk_cache, dry_run=dry_run, grace_s=grace_s, adopt=adopt
    )
    for line in describe_collection(found, dry_run=dry_run, grace_s=grace_s):
        print(line)
    return 0


def preview(
    source: str,
    /,
    *,
    item_ids: Annotated[list[str] | None, Parameter(name="--id", metavar="ID", negative=())] = None,
    limit: Annotated[int | None, Parameter(metavar="N")] = None,
    settings: Settings = None,
) -> int:
    """Print what a run would speak, chunk by chunk, with pauses (sends nothing).

    Chunks as `run` would send them, from the same code path, without Prefect or servers.

    Parameters
    ----------
    source
        CSV/JSONL/Parquet file, folder of .txt/.md, or s3:// URI.
    item_ids
        Only this item; repeat.
    limit
        At most N items.
    """
    from fishflow.items import Rejection, item_chunks
    from fishflow.run import entry_batches, run_spec
    from fishflow.spoken import rule_summary, said_as

    options = settings or RunSettings()
    spec = run_spec(options)
    wanted = set(item_ids or ())
    items = chunks = mid_sentence = failing = 0
    rules: collections.Counter[str] = collections.Counter()
    for batch in entry_batches(source, options, spec):
        for entry in batch.entries:
            if wanted and entry.item_id not in wanted:
                continue
            if limit is not None and items >= limit:
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


def limits(
    action: Literal["create"],
    /,
    *,
    servers: Annotated[
        list[str], Parameter(name="--server", metavar="URL", negative=(), required=True)
    ],
    max_in_flight: int = 2,
) -> int:
    """Shared per-server limits on the Prefect API (PREFECT_API_URL).

    Parameters
    ----------
    action
        Create or resize the limits.
    servers
        Server URL; URL#limit=N sets its limit.
    max_in_flight
        Default limit per server.
    """
    configs = server_configs(from_flags(RunSettings, max_in_flight=max_in_flight), servers)
    require_prefect_api("shared limits live on the Prefect server your runs use")
    from fishflow.tasks.limits import create_limits

    created, _ = asyncio.run(create_limits({c.url: c.max_in_flight for c in configs}))
    for name, limit in created.items():
        print(f"fishflow: limit {name} = {limit}")
    return 0


def deploy(
    *,
    pool: str = "fishflow",
    servers: Servers = None,
    heartbeat_s: int = 30,
    prune: Switch = False,
    prefect_file: str | None = None,
) -> int:
    """Register the work pool, deployments, shared limits and crash automation on the Prefect
    API (PREFECT_API_URL).

    Parameters
    ----------
    pool
        Process work pool.
    servers
        Create shared limits for these servers instead of the deployments' own.
    heartbeat_s
        Flow-run heartbeat interval; a run silent for 3 of them is marked Crashed
        (30 is Prefect's minimum).
    prune
        Delete deployments of fishflow's flows on the pool that the file no longer has.
    prefect_file
        Deployments file (default: deployments/prefect.yaml of this checkout).
    """
    require_prefect_api("deployments live on the Prefect server your workers use")
    from pathlib import Path

    from fishflow.tasks.deploy import PREFECT_FILE
    from fishflow.tasks.deploy import deploy as register

    done = register(
        pool=pool,
        servers=servers,
        heartbeat_s=heartbeat_s,
        prefect_file=Path(prefect_file) if prefect_file else PREFECT_FILE,
        prune=prune,
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


def voices(
    action: Literal["list", "add", "delete"],
    voice_id: Annotated[str | None, Parameter(name="ID")] = None,
    /,
    *,
    audio: Annotated[str | None, Parameter(metavar="FILE")] = None,
    text: str | None = None,
    server: Annotated[str, Parameter(metavar="URL")] = DEFAULT_SERVER,
) -> int:
    """List, add or delete the voices a Fish Speech server holds (its /v1/references API).

    Parameters
    ----------
    action
        What to do.
    voice_id
        Voice id (add, delete): letters, digits, - _ space.
    audio
        add: reference recording (10-30 s).
    text
        add: what is said in the recording.
    server
        The server; its key from FISHFLOW_API_KEY.
    """
    from fishflow.fish_speech import FishSpeechClient
    from fishflow.settings import EnvSettings

    if action != "list" and not voice_id:
        raise ConfigError(f"voices {action} needs a voice id: fishflow voices {action} ID")
    recording = b""
    if action == "add":
        if not audio or not (text or "").strip():
            raise ConfigError("voices add needs --audio FILE and --text 'what the file says'")
        try:
            with open(audio, "rb") as fh:
                recording = fh.read()
        except OSError as exc:
            raise ConfigError(f"cannot read {audio}: {exc.strerror}") from None
    url = from_flags(ServerConfig, server=server).url
    key = EnvSettings().api_key

    async def call() -> int:
        api_key = key.get_secret_value() if key else None
        async with FishSpeechClient(url, api_key=api_key) as fish:
            if action == "list":
                ids = await fish.list_references()
                print("\n".join(ids) if ids else f"fishflow: {url} holds no voices")
            elif action == "add":
                name = os.path.basename(audio or "")
                added = await fish.add_reference(
                    voice_id or "", audio=recording, text=text or "", filename=name
                )
                print(added)
            else:
                print(await fish.delete_reference(voice_id or ""))
        return 0

    return asyncio.run(call())


def emulator(
    *,
    listen: str = "127.0.0.1:8080",
    workers: int = 1,
    rtf: float = 0.0,
    level_db: float | None = None,
    service_time: float | None = None,
    api_key: str | None = None,
    max_text_length: int | None = None,
    bad_answers: Annotated[float, Parameter(metavar="SHARE")] = 0.0,
    speak: Switch = False,
    accept_any_reference_id: Switch = False,
    error_rate: float = 0.0,
    reset_rate: float = 0.0,
    truncate_rate: float = 0.0,
    busy_rate: float = 0.0,
    short_audio_rate: float = 0.0,
    slow_rate: float = 0.0,
    retry_after: float = 1.0,
    slow_s: float = 5.0,
    tier_limit: int | None = None,
    latency: float = 0.0,
) -> int:
    """Serve the bundled Fish Speech emulator.

    Parameters
    ----------
    listen
        host:port.
    workers
        Serial workers.
    rtf
        Compute seconds per audio second.
    level_db
        Peak level of the voice, dBFS (e.g. -30).
    service_time
        Fixed seconds per request (default: none, --rtf decides).
    api_key
        Require this Bearer key (default: FISHFLOW_EMULATOR_API_KEY, or none).
    max_text_length
        400 above this length (default: no limit).
    bad_answers
        Share of answers (0..1) that are 200 with the wrong speech: the end said again, the end
        swallowed, a noise tail or babble, drawn from text and seed.
    speak
        Say the text in real words (espeak-ng: pip install 'fishflow[speech]') instead of a
        tone.
    accept_any_reference_id
        Answer ids outside [a-zA-Z0-9 _-] like servers before March 2026 (default voice).
    error_rate
        Fault: share of requests answered with a 500.
    reset_rate
        Fault: share of requests whose connection is reset.
    truncate_rate
        Fault: share of requests answered with a truncated body.
    busy_rate
        Fault: share of requests answered with a 429.
    short_audio_rate
        Fault: share of requests answered with too short audio.
    slow_rate
        Fault: share of requests whose generation hangs (--slow-s).
    retry_after
        Retry-After of 429s.
    slow_s
        How long a slow generation hangs.
    tier_limit
        Answer 429 beyond this many requests in flight, like the cloud (default: no limit).
    latency
        Extra seconds per request.
    """
    from fishflow.testing.emulator import Emulator, EmulatorConfig, Faults

    host, _, port = listen.rpartition(":")
    faults = Faults(
        error_rate=error_rate,
        reset_rate=reset_rate,
        truncate_rate=truncate_rate,
        busy_rate=busy_rate,
        short_audio_rate=short_audio_rate,
        slow_rate=slow_rate,
        slow_s=slow_s,
        retry_after_s=retry_after,
        latency_s=latency,
    )
    config = EmulatorConfig(
        workers=workers,
        rtf=rtf,
        level_db=level_db,
        service_time_s=service_time,
        api_key=api_key or os.environ.get("FISHFLOW_EMULATOR_API_KEY"),
        max_text_length=max_text_length,
        check_reference_ids=not accept_any_reference_id,
        tier_limit=tier_limit,
        faults=faults,
        bad_answers=bad_answers,
        speak=speak,
    )
    server = Emulator(config, host=host or "127.0.0.1", port=int(port))
    print(f"fishflow emulator on {server.url} ({workers} worker(s))", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


def _preflight(source: str, servers: list[ServerConfig], settings: RunSettings) -> None:
    """What would stop the run at once, found before Prefect starts (seconds) and before
    anything is written: a source that cannot be read (a database's table or query too),
    servers that all refuse connections."""
    from fishflow.pool import check_servers
    from fishflow.run import columns
    from fishflow.sources import check_source

    check_source(source, columns=columns(settings), table=settings.table, query=settings.query)
    asyncio.run(check_servers(servers))
