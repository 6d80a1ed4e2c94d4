"""What became of an item: its manifest rows (item, chunks, errors), built in one place."""

from __future__ import annotations

from dataclasses import dataclass, field

from fishflow.chunking import (
    Chunk,
    chunk_key,
)
from fishflow.context import RunContext
from fishflow.errors import (
    FishflowError,
)
from fishflow.items import Item, Rejection
from fishflow.manifest import ChunkRow, ErrorRow, ItemRow
from fishflow.qa import Checked
from fishflow.text import (
    text_sha256,
)


@dataclass
class ItemOutcome:
    item: ItemRow
    chunks: list[ChunkRow] = field(default_factory=list)
    errors: list[ErrorRow] = field(default_factory=list)


def error_row(
    ctx: RunContext,
    row: int,
    item_id: str | None,
    exc: BaseException,
    chunk_index: int | None = None,
    stage: str | None = None,
) -> ErrorRow:
    ours = exc if isinstance(exc, FishflowError) else None
    return ErrorRow(
        run_id=ctx.run_id,
        item_id=item_id,
        source_row=row,
        chunk_index=chunk_index,
        stage=stage or (ours.stage if ours else "run"),
        error_type=type(exc).__name__,
        error_message=(ours.message if ours else str(exc)) or type(exc).__name__,
        http_status=ours.http_status if ours else None,
        retryable=bool(ours.retryable) if ours else False,
        attempts=getattr(exc, "attempts", 1),
        created_at=ctx.now(),
    )


def unprocessed(
    ctx: RunContext,
    entry: Item | Rejection,
    stage: str,
    error_type: str,
    message: str,
    *,
    retryable: bool,
) -> ItemOutcome:
    """A failed row that never reached synthesis, with its one error row."""
    now = ctx.now()
    return ItemOutcome(
        ItemRow(
            run_id=ctx.run_id,
            item_id=entry.item_id,
            source_row=entry.row,
            status="failed",
            created_at=now,
            error=message,
        ),
        errors=[
            ErrorRow(
                run_id=ctx.run_id,
                item_id=entry.item_id,
                source_row=entry.row,
                chunk_index=None,
                stage=stage,
                error_type=error_type,
                error_message=message,
                http_status=None,
                retryable=retryable,
                attempts=0,
                created_at=now,
            )
        ],
    )


def rejected_outcome(ctx: RunContext, rejection: Rejection) -> ItemOutcome:
    return unprocessed(ctx, rejection, "source", "InvalidRow", rejection.reason, retryable=False)


def internal_failure(ctx: RunContext, entry: Item | Rejection, exc: BaseException) -> ItemOutcome:
    """An item lost to a bug in fishflow itself: failed, retryable, with the exception named."""
    message = f"internal error: {type(exc).__name__}: {exc}"
    return unprocessed(ctx, entry, "run", type(exc).__name__, message, retryable=True)


def failed_outcome(
    ctx: RunContext,
    item: Item,
    errors: list[ErrorRow],
    chunks: list[ChunkRow],
    *,
    chunk_count: int | None = None,
    attempts: int | None = None,
    synth_seconds: float | None = None,
) -> ItemOutcome:
    return ItemOutcome(
        ItemRow(
            run_id=ctx.run_id,
            item_id=item.item_id,
            source_row=item.row,
            status="failed",
            created_at=ctx.now(),
            language=item.language,
            text_sha256=text_sha256(item.text),
            content_key=item.content_key,
            chars=len(item.text),
            chunk_count=chunk_count,
            attempts=attempts,
            synth_seconds=synth_seconds,
            error=errors[0].error_message,
        ),
        chunks,
        errors,
    )


def failed_chunk_row(ctx: RunContext, item: Item, chunk: Chunk, exc: Exception) -> ChunkRow:
    key = chunk_key(chunk.text, ctx.spec.voice_fingerprint(item.voice_identity))
    return chunk_row(
        ctx,
        item,
        chunk,
        key,
        server=getattr(exc, "server", None),
        attempts=getattr(exc, "attempts", 1),
        latency_s=None,
        duration_s=None,
        reused=False,
        status="failed",
    )


def chunk_row(
    ctx: RunContext,
    item: Item,
    chunk: Chunk,
    key: str,
    *,
    server: str | None,
    attempts: int,
    latency_s: float | None,
    duration_s: float | None,
    reused: bool,
    status: str,
    checked: Checked | None = None,
) -> ChunkRow:
    """A chunk's manifest row: where it sits in its item, and how it was made."""
    return ChunkRow(
        run_id=ctx.run_id,
        item_id=item.item_id,
        source_row=item.row,
        chunk_index=chunk.index,
        start_char=chunk.start,
        end_char=chunk.end,
        utf8_bytes=chunk.utf8_bytes,
        chunk_key=key,
        server=server,
        attempts=attempts,
        latency_s=latency_s,
        duration_s=duration_s,
        reused=reused,
        status=status,
        qa_check=checked.check if checked else None,
        qa_measure=checked.measure if checked else None,
        qa_attempts=checked.answers if checked else None,
    )
