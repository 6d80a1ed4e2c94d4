"""Everything one run shares between its items: settings, servers, stores, caches, counters."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fishflow.chunk_cache import ChunkCache
from fishflow.errors import (
    ConfigError,
    FishflowError,
)
from fishflow.items import PreviousItem, RunSpec
from fishflow.manifest import ItemRow, Journal
from fishflow.pool import ServerPool
from fishflow.qa import SpeechRates
from fishflow.storage import Store
from fishflow.voices import ReferenceFiles


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
