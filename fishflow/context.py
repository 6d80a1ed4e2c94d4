"""Everything one run shares between its items (settings, servers, stores, caches, counters),
and how a run opens and closes it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fishflow.chunk_cache import ChunkCache
from fishflow.errors import (
    ConfigError,
    FishflowError,
)
from fishflow.incremental import existing_audio, load_previous
from fishflow.items import PreviousItem, RunSpec
from fishflow.lock import held_output_lock
from fishflow.manifest import ItemRow, Journal, ManifestWriter, journal_dir
from fishflow.pool import ServerPool, SlotLeaser
from fishflow.qa import SpeechRates
from fishflow.settings import RunSettings
from fishflow.storage import Store, open_store, state_dir
from fishflow.voices import ReferenceFiles

logger = logging.getLogger("fishflow.run")


@dataclass
class RunContext:
    """What a batch needs while it runs: built once per process by the tasks layer."""

    run_id: str
    spec: RunSpec
    pool: ServerPool
    store: Store
    cache: ChunkCache
    previous: dict[str, PreviousItem] = field(default_factory=dict)
    existing_audio: set[str] = field(default_factory=set)
    force: bool = False
    fatal_error: FishflowError | None = None
    on_item_done: Callable[[ItemRow], None] | None = None
    # Chunks placed in their items' files, and their audio: progress within long items.
    chunks_done: int = 0
    audio_done_s: float = 0.0
    item_slots: asyncio.Semaphore | None = None
    journal: Journal | None = None
    publisher: Executor | None = None  # runs stitch, encode and put (None: asyncio's default)
    warnings: list[str] = field(default_factory=list)  # said once each, in the run's log
    notes: list[str] = field(default_factory=list)  # the same, at info level
    references: ReferenceFiles = field(default_factory=ReferenceFiles)
    rates: SpeechRates = field(default_factory=SpeechRates)  # voices' rates learned in the run
    _voices: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _said: set[str] = field(default_factory=set)

    def warn_once(self, topic: str, message: str, *, note: bool = False) -> None:
        if topic not in self._said:
            self._said.add(topic)
            (self.notes if note else self.warnings).append(message)

    async def check_voice(self, voice: str | None) -> None:
        """Raise ConfigError for a reference_id the server lists its voices without (current
        servers answer 200 for it and speak in a default voice); with ``unknown_voice:
        default``, warn once instead."""
        voice = voice or self.spec.options.reference_id
        if not voice:
            return
        if voice not in self._voices:
            self._voices[voice] = asyncio.ensure_future(self._check_voice(voice))
        await self._voices[voice]

    async def _check_voice(self, voice: str) -> None:
        server = self.pool.servers[0]
        known = await server.client.reference_ids()
        if known is not None and voice not in known:
            if self.spec.qa.unknown_voice == "stop":
                held = ", ".join(repr(v) for v in sorted(known)[:10]) or "none"
                more = f" and {len(known) - 10} more" if len(known) > 10 else ""
                raise ConfigError(
                    f"reference_id {voice!r} is not among the voices {server.url} holds "
                    f"({held}{more}): the server would speak it in a default voice; fix the id, "
                    "add the voice with `fishflow voices add`, or pass --unknown-voice default"
                )
            self.warnings.append(
                f"reference_id {voice!r} is not among the voices {server.url} lists: current "
                "servers answer 200 for it and speak those items in a default voice, chosen by "
                "the seed (random without one); add it with `fishflow voices add`"
            )

    def now(self) -> datetime:
        return datetime.now(UTC)

    def stop(self, exc: FishflowError) -> None:
        """Stop the run: items not yet started fail with `exc`, waiting chunks are refused."""
        if self.fatal_error is None:
            self.fatal_error = exc
        self.pool.stop(exc)


@asynccontextmanager
async def open_run(
    *,
    run_id: str,
    out: str,
    servers: list[str],
    settings: RunSettings,
    force: bool,
    api_key: str | None,
    leaser: SlotLeaser | None = None,
    hold_output: bool = True,
    spec: RunSpec,
) -> AsyncIterator[tuple[RunContext, ManifestWriter]]:
    """Build everything a run's batches share, and close it when the run ends. `spec` is the
    one the run's batches are validated with (its lexicon read once, before anything).

    The output's lock is taken first, before anything is written or read for change detection:
    a second run on the same output stops here (or waits `settings.wait_for_lock` seconds).
    `hold_output=False` is for a shard of a sharded run, whose parent holds the output.
    """
    store = await asyncio.to_thread(open_store, out, settings.sse)
    pool_ref: list[ServerPool] = []

    def lost(exc: FishflowError) -> None:  # another run took the output: stop sending
        for pool in pool_ref:
            pool.stop(exc)

    async with (
        held_output_lock(
            store,
            run_id=run_id,
            ttl_s=settings.lock_ttl_s,
            wait_s=settings.wait_for_lock,
            on_lost=lost,
        )
        if hold_output
        else contextlib.nullcontext(),
        _open_run(
            store=store,
            run_id=run_id,
            servers=servers,
            settings=settings,
            force=force,
            api_key=api_key,
            leaser=leaser,
            pool_ref=pool_ref,
            spec=spec,
        ) as opened,
    ):
        yield opened


@asynccontextmanager
async def held_output(*, out: str, settings: RunSettings, run_id: str) -> AsyncIterator[None]:
    """Hold `out` for a run that does not open one itself (the parent of a sharded run, whose
    children write the output under its lock)."""
    store = await asyncio.to_thread(open_store, out, settings.sse)

    def lost(exc: FishflowError) -> None:
        logger.error("%s", exc.message)  # the children cannot be stopped from here

    async with held_output_lock(
        store,
        run_id=run_id,
        ttl_s=settings.lock_ttl_s,
        wait_s=settings.wait_for_lock,
        on_lost=lost,
    ):
        yield


@asynccontextmanager
async def _open_run(
    *,
    store: Store,
    run_id: str,
    servers: list[str],
    settings: RunSettings,
    force: bool,
    api_key: str | None,
    leaser: SlotLeaser | None,
    pool_ref: list[ServerPool],
    spec: RunSpec,
) -> AsyncIterator[tuple[RunContext, ManifestWriter]]:
    """What a run builds once it holds its output; the pool goes into `pool_ref` so that a
    lost output lock can stop it."""
    # Next to a local output; for an S3 output on this machine, so the next run here re-uses it.
    cache_dir = settings.chunk_cache or os.path.join(state_dir(store), "chunks")
    previous = {} if force else await asyncio.to_thread(load_previous, store, run_id)
    # Also under --force: what is published decides which caption files a republished item
    # leaves behind (see ItemPublisher.existing_sidecars).
    existing = await asyncio.to_thread(existing_audio, store) if previous or force else set()
    pool = ServerPool(
        settings.server_configs(servers),
        api_key=api_key,
        encoding=settings.encoding,
        retry=settings.retry_policy(),
        leaser=leaser,
        slot_tenure_s=settings.slot_tenure_s,
    )
    pool_ref.append(pool)
    # An S3 output keeps the run's state (journal, chunk audio) in itself too, so that a run
    # resumed or re-run on a fresh machine redoes only what was in flight; the local copies
    # stay in front as the fast layer. A local output already holds it (<out>/.fishflow).
    remote = store if store.remote and settings.state_in_output else None
    journal = Journal(journal_dir(store), run_id, remote=remote)
    publisher = ThreadPoolExecutor(store.write_threads, thread_name_prefix="fishflow-publish")
    ctx = RunContext(
        journal=journal,
        run_id=run_id,
        spec=spec,
        pool=pool,
        store=store,
        cache=ChunkCache(cache_dir, remote=remote),
        previous=previous,
        existing_audio=existing,
        force=force,
        # Items in progress hold their chunks' audio: keep enough to fill every server twice.
        item_slots=asyncio.Semaphore(max(8, 2 * pool.capacity)),
        publisher=publisher,
    )
    # The process holds ~340,000 long-lived objects (Prefect, pydantic, its API's models) and
    # every full collection walked them all: ~240 ms each, up to 0.36 ms per chunk measured.
    # Frozen, they are left out of collections until the run ends.
    gc.freeze()
    try:
        async with pool:
            yield ctx, ManifestWriter(store, run_id)
    finally:
        gc.unfreeze()
        publisher.shutdown()
        journal.close()
