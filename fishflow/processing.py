"""What happens to one item, and to one batch of items, with no Prefect in sight.

source row -> validated Item -> chunks -> audio per chunk (shared between identical chunks)
-> audio file written chunk by chunk, in order, with captions -> stored objects -> manifest
rows. Every row ends as exactly one ItemRow:
``ok``, ``skipped`` (unchanged since an earlier run) or ``failed`` (with its ErrorRows).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import replace

from fishflow.asr import asr_verdict, heard
from fishflow.audio import Audio, stitch
from fishflow.chunk_cache import ChunkCache
from fishflow.chunking import (
    Chunk,
    chunk_budget,
    chunk_key,
    split_at_clause,
    split_in_two,
)
from fishflow.context import RunContext
from fishflow.errors import (
    ConfigError,
    CutAtTokenCap,
    FishflowError,
    SourceError,
    StorageError,
    SynthesisError,
    TextTooLong,
    VoiceRefused,
)
from fishflow.items import Item, Rejection, audio_key, item_chunks
from fishflow.loudness import Level
from fishflow.manifest import ChunkRow, ErrorRow, ItemRow
from fishflow.markdown import code_cue
from fishflow.outcomes import (
    ItemOutcome,
    chunk_row,
    error_row,
    failed_chunk_row,
    failed_outcome,
    rejected_outcome,
)
from fishflow.pool import Synthesized
from fishflow.publish import ItemPublisher, Published, sidecar_keys
from fishflow.qa import Checked, Verdict, retry_seed
from fishflow.qa import check as check_answer
from fishflow.settings import (
    Reference,
)
from fishflow.text import (
    text_sha256,
)


def _skip_if_unchanged(ctx: RunContext, item: Item) -> ItemOutcome | None:
    prev = ctx.previous.get(item.item_id)
    if ctx.force or prev is None or prev.content_key != item.content_key:
        return None
    if prev.qa == "marked" and not ctx.spec.qa.accept_marked:
        return None  # published, but an answer in it was suspect: made again
    if prev.audio_key not in ctx.existing_audio:
        return None
    sidecars = sidecar_keys(prev.audio_key)
    has_captions = sidecars["vtt"] in ctx.existing_audio
    has_chapters = sidecars["chapters"] in ctx.existing_audio
    if ctx.spec.captions.captions == "on" and not has_captions:
        # Captions are part of the published item: redo it (its chunk audio is in the cache
        # when it had several chunks) rather than report it complete without them.
        return None
    if (
        ctx.spec.captions.chapters == "on"
        and not has_chapters
        and any(chunk.heading_level for chunk in item.chunks)
    ):
        return None  # chapters turned on since (in mp3 they are in the audio too): the same
    row = ItemRow(
        run_id=ctx.run_id,
        item_id=item.item_id,
        source_row=item.row,
        status="skipped",
        created_at=ctx.now(),
        language=item.language,
        text_sha256=text_sha256(item.text),
        content_key=item.content_key,
        chars=len(item.text),
        audio_uri=prev.audio_uri,
        audio_format=ctx.spec.audio.format,
        duration_s=prev.duration_s,
        bytes=prev.bytes,
        audio_sha256=prev.audio_sha256,
        attempts=0,
        loudness_lufs=prev.loudness_lufs,
        captions_uri=ctx.store.uri(sidecars["vtt"]) if has_captions else None,
        chapters_uri=ctx.store.uri(sidecars["chapters"]) if has_chapters else None,
        qa=prev.qa,
        seed=prev.seed,
    )
    return ItemOutcome(row)


def _split(ctx: RunContext, item: Item, text: str, exc: SynthesisError) -> list[str] | None:
    """The parts to send instead of ``text``: within the server's text limit, cut at sentence
    and clause ends (evenly sized); for audio cut at the token cap, in two near the middle."""
    if isinstance(exc, TextTooLong):
        budget = chunk_budget(
            max_new_tokens=ctx.spec.options.max_new_tokens,
            chunk_bytes=ctx.spec.chunking.max_bytes,
            max_chars=exc.limit,
            text=text,
        )
        parts = split_at_clause(text, budget, language=item.language)
        if len(parts) > 1:
            return parts
    halves = split_in_two(text)
    return list(halves) if halves else None


async def _synthesize_fitting(
    ctx: RunContext,
    item: Item,
    text: str,
    references: tuple[Reference, ...],
    depth: int = 0,
    *,
    seed: int | None = None,
) -> Synthesized:
    """Synthesise a chunk's text; where the server cannot take it whole, its parts.

    Audio cut at the token cap is cut again if sent again, and a text over the server's
    --max-text-length is refused again: the text is split (see ``_split``) and each part
    sent (split again if need be), then joined with the pause of a cut clause. ``seed``
    overrides the item's (another answer after a suspect one)."""
    try:
        return await ctx.pool.synthesize(
            text,
            ctx.spec.options,
            reference_id=item.voice,
            references=references,
            seed=item.seed if seed is None else seed,
            voice=item.voice_name,
        )
    except (CutAtTokenCap, TextTooLong) as exc:
        pieces = _split(ctx, item, text, exc) if depth < 10 else None
        if not pieces:
            raise
        spent = exc.attempts  # requests that told us to split (0: the known limit did)
        fingerprint = ctx.spec.voice_fingerprint(item.voice_identity)
        if seed is not None:
            fingerprint += f":{seed}"  # another answer: not the first one's pieces again

        def part_of(piece: str) -> Awaitable[tuple[Audio, Synthesized | None]]:
            # Through the chunk cache: a repeated piece of one item is sent once.
            return ctx.cache.get_or_make(
                chunk_key(piece, fingerprint),
                ctx.spec.audio.sample_rate,
                lambda: _synthesize_fitting(ctx, item, piece, references, depth + 1, seed=seed),
                persist=False,
            )

        parts = await asyncio.gather(*(part_of(p) for p in pieces))
    settings = ctx.spec.audio
    audio = stitch(
        [a for a, _ in parts], pause_ms=settings.pause_after_ms("clause"), fade_ms=settings.fade_ms
    )
    made = [m for _, m in parts if m is not None]
    return Synthesized(
        audio,
        made[0].server if made else "",
        spent + sum(m.attempts for m in made),
        sum(m.latency_s for m in made),
    )


def _rate_voice(ctx: RunContext, item: Item) -> str:
    """Whose speaking rate a chunk's answer is judged by: the item's reference voice, else
    the run's, else the seed voices together (each item has its own: too few answers each)."""
    if item.voice or item.reference_digest:
        return item.voice or f"audio:{item.reference_digest}"
    options = ctx.spec.options
    if options.reference_id or options.references:
        return options.reference_id or "references"
    return "seed"


def _accepted(audio: Audio, verdict: Verdict) -> Audio:
    if verdict.outcome != "trim":
        return audio
    return Audio(audio.samples[verdict.start : verdict.end], audio.sample_rate)


async def _synthesize_checked(
    ctx: RunContext, item: Item, text: str, references: tuple[Reference, ...]
) -> Synthesized:
    """Synthesise a chunk's text and check the answer (``fishflow.qa``) before it is cached.

    A suspect answer of an item with a reference voice is asked for again with another seed,
    this chunk alone (the voice stays the reference's), up to ``qa.retries`` more times; the
    first that passes is kept, else the least bad. An item whose voice is its seed cannot
    change seed for one chunk: its suspect answer goes back marked, and ``process_item``
    makes the whole item again with another seed."""
    made = await _synthesize_fitting(ctx, item, text, references)
    settings = ctx.spec.qa
    if not settings.enabled:
        return made
    voice = _rate_voice(ctx, item)
    spent, latency = made.attempts, made.latency_s
    best: tuple[Synthesized, Verdict] | None = None
    answers = 0
    while True:
        answers += 1
        audio = made.audio
        verdict = check_answer(
            audio.samples,
            audio.sample_rate,
            text,
            ctx.rates.expected(voice, item.language),
            settings,
        )
        if verdict.ratio is not None:  # speech, of whatever length: its rate is the voice's
            ctx.rates.add(voice, item.language, verdict.ratio)
        if not verdict.suspect and settings.asr:  # what a listener would hear, word by word
            cer = await asyncio.to_thread(
                heard, audio.samples, audio.sample_rate, text, item.language, settings.asr
            )
            verdict = asr_verdict(cer, settings.max_cer, verdict)
        if not verdict.suspect:
            accepted = _accepted(audio, verdict)
            return Synthesized(accepted, made.server, spent, latency, Checked(answers))
        if best is None or verdict.severity < best[1].severity:
            best = (made, verdict)
        if item.seed is not None or answers > settings.retries:
            kept_made, kept = best
            checked = Checked(answers, kept.check, kept.measure)
            return Synthesized(kept_made.audio, kept_made.server, spent, latency, checked)
        seed = retry_seed(ctx.spec.options.seed, text, answers)
        made = await _synthesize_fitting(ctx, item, text, references, seed=seed)
        spent += made.attempts
        latency += made.latency_s


async def _chunk_audio(
    ctx: RunContext,
    item: Item,
    chunk: Chunk,
    references: tuple[Reference, ...],
    *,
    persist: bool,
) -> tuple[Audio | None, ChunkRow]:
    """The chunk's audio (None when it was persisted: the writer reads it back from the cache
    when its turn comes, so chunks that finish early do not pile up in memory) and its row."""
    key = chunk_key(chunk.text, ctx.spec.voice_fingerprint(item.voice_identity))
    rate = ctx.spec.audio.sample_rate

    def make() -> Awaitable[Synthesized]:
        return _synthesize_checked(ctx, item, chunk.text, references)

    audio, made = await ctx.cache.get_or_make(key, rate, make, persist=persist)
    checked = made.checked if made else None
    row = chunk_row(
        ctx,
        item,
        chunk,
        key,
        server=made.server if made else None,
        attempts=made.attempts if made else 0,
        latency_s=made.latency_s if made else None,
        duration_s=audio.duration_s,
        reused=made is None,
        status="ok",
        checked=checked,
    )
    # A marked answer is not on disk (see ChunkCache.get_or_make): handed over as it is.
    kept_on_disk = persist and not (checked is not None and checked.marked)
    return (None if kept_on_disk else audio), row


async def _references(ctx: RunContext, item: Item) -> tuple[Reference, ...]:
    if not item.reference_audio or item.reference_text is None:
        return ()
    uri, text = item.reference_audio, item.reference_text
    if ctx.references.cached(uri):
        return (ctx.references.reference(uri, text),)
    return (await asyncio.to_thread(ctx.references.reference, uri, text),)


def _add_chunk(
    cache: ChunkCache, publisher: ItemPublisher, chunk: Chunk, key: str, audio: Audio | None
) -> tuple[Level | None, Published | None]:
    """In a publisher thread: the chunk's audio (read back from the cache's disk when it has
    left memory) added to its item's file; then its raw copy on disk compressed."""
    if audio is None and (audio := cache.read(key, publisher.sample_rate)) is None:
        raise StorageError(f"chunk audio {key} vanished from the chunk cache")
    added = publisher.add(chunk, audio)
    cache.compress(key, audio)
    return added


async def process_item(ctx: RunContext, item: Item) -> ItemOutcome:
    """Synthesise, stitch and publish one item; never raises for the item's own failures.

    Chunks are requested all at once and written to the item's file in order as they come
    in; a chunk that finishes before its predecessors waits in the chunk cache (on disk), so
    memory does not grow with the item's length.
    """
    if (skipped := _skip_if_unchanged(ctx, item)) is not None:
        return skipped
    if ctx.fatal_error is not None:
        err = error_row(ctx, item.row, item.item_id, ctx.fatal_error, stage="run")
        return failed_outcome(ctx, item, [err], [])
    if not item.reference_audio:  # a recording, not an id, is this item's voice
        try:
            await ctx.check_voice(item.voice)
        except ConfigError as exc:  # a voice the server does not hold: stop the run
            ctx.stop(exc)
            return failed_outcome(ctx, item, [error_row(ctx, item.row, item.item_id, exc)], [])
    if item.seed is not None:
        ctx.warn_once(
            "seed",
            "no voice given (--reference-id, a reference_id column or reference audio): the "
            "server picks a voice from the seed, so fishflow pins one per item (--seed, or one "
            "derived from the item id) and all its chunks share it; items may differ in voice",
            note=True,
        )
    if item.only_code:
        ctx.warn_once(
            f"only-code:{item.item_id}",
            f"{item.item_id!r} (row {item.row}) is only code blocks: its audio is the code cue "
            f"alone ({code_cue(item.language)!r}); with --markdown-code silent such items fail "
            "instead",
        )
    try:
        references = await _references(ctx, item)
    except SourceError as exc:
        return failed_outcome(ctx, item, [error_row(ctx, item.row, item.item_id, exc)], [])
    chunks = item_chunks(item, ctx.spec)
    started = time.monotonic()
    qa = ctx.spec.qa
    voiced = item  # the item as made: its seed may change (a seed voice answered badly)
    prev = ctx.previous.get(item.item_id)
    if (
        item.seed is not None
        and ctx.spec.options.seed is None
        and prev is not None
        and prev.seed is not None
        and prev.qa != "marked"
    ):
        # Its text changed: keep the voice (the seed) its published audio was accepted in.
        voiced = replace(item, seed=prev.seed)
    spent = 0
    attempt = 1
    while True:
        may_redo = qa.enabled and voiced.seed is not None and attempt <= qa.retries
        made = await _make_item(
            ctx, voiced, chunks, references, started, may_redo=may_redo, spent=spent
        )
        if isinstance(made, ItemOutcome):
            return _with_qa(ctx, made, voiced, attempt)
        # A suspect answer, in a voice that is the seed's: the whole item in another voice.
        spent = made
        voiced = replace(item, seed=retry_seed(item.seed, item.item_id, attempt))
        attempt += 1


def _with_qa(ctx: RunContext, outcome: ItemOutcome, item: Item, attempt: int) -> ItemOutcome:
    """The item's row with what the answer check found: "marked" when a chunk's kept answer
    was suspect (the first such chunk's check and measure), else "pass"; for a seed voice,
    the whole-item attempts as every chunk's answers tried."""
    row = outcome.item
    if row.status != "ok":
        return outcome
    if not ctx.spec.qa.enabled:
        return replace(outcome, item=replace(row, seed=item.seed))
    chunks = outcome.chunks
    if item.seed is not None:
        chunks = [
            replace(c, qa_attempts=attempt) if c.qa_attempts is not None else c for c in chunks
        ]
    marked = next((c for c in chunks if c.qa_check is not None), None)
    tried = [c.qa_attempts for c in chunks if c.qa_attempts is not None]
    row = replace(
        row,
        qa="marked" if marked else "pass",
        qa_check=marked.qa_check if marked else None,
        qa_measure=marked.qa_measure if marked else None,
        qa_attempts=attempt if item.seed is not None else max(tried, default=1),
        seed=item.seed,
    )
    return ItemOutcome(row, chunks, outcome.errors)


async def _make_item(
    ctx: RunContext,
    item: Item,
    chunks: list[Chunk],
    references: tuple[Reference, ...],
    started: float,
    *,
    may_redo: bool,
    spent: int,
) -> ItemOutcome | int:
    """One attempt at an item: its outcome, or (``may_redo`` and a chunk's answer suspect)
    the requests it spent, abandoned: nothing of it is published."""
    multi = len(chunks) > 1
    tasks = [
        asyncio.ensure_future(_chunk_audio(ctx, item, c, references, persist=multi)) for c in chunks
    ]
    settings = ctx.spec.audio
    key = audio_key(item.item_id, settings.format)
    publisher = ItemPublisher(
        store=ctx.store,
        key=key,
        audio=settings,
        captions=ctx.spec.captions,
        language=item.language,
        chunk_count=len(chunks),
        sample_rate=settings.sample_rate,
        metadata={"text-sha256": text_sha256(item.text), "content-key": item.content_key},
        existing_sidecars=frozenset(sidecar_keys(key).values()) & ctx.existing_audio,
    )
    loop = asyncio.get_running_loop()
    rows: list[ChunkRow] = []
    errors: list[ErrorRow] = []
    published: Published | None = None
    try:
        for chunk, task in zip(chunks, tasks, strict=True):
            try:
                audio, row = await task
            except Exception as exc:
                if isinstance(exc, FishflowError) and exc.fatal:
                    ctx.stop(exc)
                if isinstance(exc, VoiceRefused):
                    ctx.warn_once(f"voice:{exc.voice}", exc.message)
                errors.append(error_row(ctx, item.row, item.item_id, exc, chunk.index))
                rows.append(failed_chunk_row(ctx, item, chunk, exc))
                continue
            rows.append(row)
            if errors:
                continue  # the item fails: collect the other chunks' rows, write nothing
            if may_redo and row.qa_check is not None:
                # Progress counted for this attempt's chunks is taken back: they are redone.
                ctx.chunks_done -= len(rows) - 1
                ctx.audio_done_s -= sum(r.duration_s or 0.0 for r in rows[:-1])
                return spent + sum(r.attempts for r in rows)  # the `finally` drops the rest
            if audio is None:
                audio = ctx.cache.recall(row.chunk_key)  # else read back in the publisher thread
            try:
                level, published = await loop.run_in_executor(
                    ctx.publisher, _add_chunk, ctx.cache, publisher, chunk, row.chunk_key, audio
                )
            except RuntimeError as exc:
                # The run's threads are shut down: it is stopping (Ctrl-C, SIGTERM) and its
                # tasks are being cancelled; this item is abandoned like the others.
                raise asyncio.CancelledError from exc
            if level is not None:
                ctx.cache.keep_level(row.chunk_key, level)
            ctx.chunks_done += 1
            ctx.audio_done_s += row.duration_s or 0.0
    except StorageError as exc:
        if exc.fatal:
            ctx.stop(exc)
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        rows = [r[1] for r in results if isinstance(r, tuple)]
        return failed_outcome(
            ctx,
            item,
            [error_row(ctx, item.row, item.item_id, exc)],
            rows,
            chunk_count=len(chunks),
            attempts=spent + sum(r.attempts for r in rows),
        )
    finally:
        for task in tasks:
            task.cancel()  # only those still running: the item is being cancelled
        if published is None:
            publisher.abort()  # not in the publisher threads: they may be shut down already
    synth_seconds = time.monotonic() - started
    attempts = spent + sum(r.attempts for r in rows)
    if errors or published is None:
        return failed_outcome(
            ctx,
            item,
            errors,
            rows,
            chunk_count=len(chunks),
            attempts=attempts,
            synth_seconds=synth_seconds,
        )
    item_row = ItemRow(
        run_id=ctx.run_id,
        item_id=item.item_id,
        source_row=item.row,
        status="ok",
        created_at=ctx.now(),
        language=item.language,
        text_sha256=text_sha256(item.text),
        content_key=item.content_key,
        chars=len(item.text),
        chunk_count=len(chunks),
        reused_chunks=sum(r.reused for r in rows),
        audio_uri=published.audio_uri,
        audio_format=settings.format,
        sample_rate=published.sample_rate,
        duration_s=published.duration_s,
        bytes=published.bytes,
        audio_sha256=published.sha256,
        attempts=attempts,
        synth_seconds=synth_seconds,
        loudness_lufs=published.loudness_lufs,
        captions_uri=published.captions_uri,
        chapters_uri=published.chapters_uri,
    )
    return ItemOutcome(item_row, rows)


async def process_batch(ctx: RunContext, entries: list[Item | Rejection]) -> list[ItemOutcome]:
    """Process a batch, items concurrently; outcomes come back in input order."""

    async def one(entry: Item | Rejection) -> ItemOutcome:
        if isinstance(entry, Rejection):
            outcome = rejected_outcome(ctx, entry)
        elif ctx.item_slots is None:
            outcome = await process_item(ctx, entry)
        else:
            # Bound the items in progress so that audio in memory does not grow with the batch.
            async with ctx.item_slots:
                outcome = await process_item(ctx, entry)
        if ctx.journal is not None:
            try:
                ctx.journal.append(outcome.item, outcome.chunks, outcome.errors)
            except StorageError as exc:  # disk full: the batch's part may still record it
                ctx.stop(exc)
            await ctx.journal.durable()  # in the output too (an S3 output's run state)
        if ctx.on_item_done is not None:
            ctx.on_item_done(outcome.item)
        return outcome

    return list(await asyncio.gather(*(one(e) for e in entries)))
