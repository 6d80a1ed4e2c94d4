"""Parquet manifests: the record of what happened to every input row.

Layout under the output: ``manifests/run=<run_id>/{items,chunks,errors}.parquet``. While a run
goes, each finished batch is written at once as part files under ``.../parts/``, so completed
work is on record before the run ends (and a crashed run can be resumed from them); at the end
the parts are merged, one at a time, into the three files.

Each schema is one ``pa.schema`` constant and each row one dataclass; ``tests/unit`` checks that
they agree, because ``pa.Table.from_pylist`` silently drops, fills or truncates what does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import secrets
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fishflow.errors import ConfigError, StorageError
from fishflow.storage import (
    PARQUET_TYPE,
    Store,
    read_parquet,
    state_dir,
    write_error,
    write_parquet,
)

TS = pa.timestamp("us", tz="UTC")

ITEMS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string()),  # null when the source row had none
        pa.field("source_row", pa.int64(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # ok | skipped | failed
        pa.field("language", pa.string()),
        pa.field("text_sha256", pa.string()),
        pa.field("content_key", pa.string()),
        pa.field("chars", pa.int64()),
        pa.field("chunk_count", pa.int32()),
        pa.field("reused_chunks", pa.int32()),
        pa.field("audio_uri", pa.string()),
        pa.field("audio_format", pa.string()),
        pa.field("sample_rate", pa.int32()),
        pa.field("duration_s", pa.float64()),
        pa.field("bytes", pa.int64()),
        pa.field("audio_sha256", pa.string()),  # of the published file, to check it whole
        pa.field("attempts", pa.int32()),
        pa.field("synth_seconds", pa.float64()),
        pa.field("error", pa.string()),
        pa.field("created_at", TS, nullable=False),
        pa.field("loudness_lufs", pa.float64()),  # integrated (BS.1770) as published
        pa.field("captions_uri", pa.string()),  # the .vtt; the .srt has the same stem
        pa.field("chapters_uri", pa.string()),  # .chapters.vtt, when the item has headings
        # The answer check (fishflow.qa): "pass", "marked" (every answer of a chunk was suspect:
        # the best kept), null when not checked (skipped, failed, checks off).
        pa.field("qa", pa.string()),
        pa.field("qa_check", pa.string()),  # the check that marked it, e.g. rate_long
        pa.field("qa_measure", pa.float64()),
        pa.field("qa_attempts", pa.int32()),  # answers tried (for a seed voice: whole items)
        pa.field("seed", pa.int64()),  # the seed the voice came from (no reference voice)
    ]
)

CHUNKS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),
        pa.field("chunk_index", pa.int32(), nullable=False),
        pa.field("start_char", pa.int64(), nullable=False),
        pa.field("end_char", pa.int64(), nullable=False),
        pa.field("utf8_bytes", pa.int32(), nullable=False),
        pa.field("chunk_key", pa.string(), nullable=False),
        pa.field("server", pa.string()),
        pa.field("attempts", pa.int32(), nullable=False),
        pa.field("latency_s", pa.float64()),
        pa.field("duration_s", pa.float64()),
        pa.field("reused", pa.bool_(), nullable=False),  # audio shared with an identical chunk
        pa.field("status", pa.string(), nullable=False),  # ok | failed
        pa.field("qa_check", pa.string()),  # the check the kept answer failed (null: passed)
        pa.field("qa_measure", pa.float64()),
        pa.field("qa_attempts", pa.int32()),  # answers tried for this chunk
    ]
)

ERRORS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string()),
        pa.field("source_row", pa.int64(), nullable=False),
        pa.field("chunk_index", pa.int32()),
        pa.field(
            "stage", pa.string(), nullable=False
        ),  # source | synthesis | validation | upload | run
        pa.field("error_type", pa.string(), nullable=False),
        pa.field("error_message", pa.string(), nullable=False),
        pa.field("http_status", pa.int32()),
        pa.field("retryable", pa.bool_(), nullable=False),
        pa.field("attempts", pa.int32(), nullable=False),
        pa.field("created_at", TS, nullable=False),
    ]
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ItemRow:
    run_id: str
    item_id: str | None
    source_row: int
    status: str
    created_at: datetime
    language: str | None = None
    text_sha256: str | None = None
    content_key: str | None = None
    chars: int | None = None
    chunk_count: int | None = None
    reused_chunks: int | None = None
    audio_uri: str | None = None
    audio_format: str | None = None
    sample_rate: int | None = None
    duration_s: float | None = None
    bytes: int | None = None
    audio_sha256: str | None = None
    attempts: int | None = None
    synth_seconds: float | None = None
    error: str | None = None
    loudness_lufs: float | None = None
    captions_uri: str | None = None
    chapters_uri: str | None = None
    qa: str | None = None
    qa_check: str | None = None
    qa_measure: float | None = None
    qa_attempts: int | None = None
    seed: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkRow:
    run_id: str
    item_id: str
    source_row: int
    chunk_index: int
    start_char: int
    end_char: int
    utf8_bytes: int
    chunk_key: str
    server: str | None
    attempts: int
    latency_s: float | None
    duration_s: float | None
    reused: bool
    status: str
    qa_check: str | None = None
    qa_measure: float | None = None
    qa_attempts: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorRow:
    run_id: str
    item_id: str | None
    source_row: int
    chunk_index: int | None
    stage: str
    error_type: str
    error_message: str
    http_status: int | None
    retryable: bool
    attempts: int
    created_at: datetime


MANIFESTS = {
    "items": (ITEMS_SCHEMA, ItemRow),
    "chunks": (CHUNKS_SCHEMA, ChunkRow),
    "errors": (ERRORS_SCHEMA, ErrorRow),
}


def to_table(rows: Iterable[Any], schema: pa.Schema) -> pa.Table:
    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    for row in rows:
        for name in schema.names:
            columns[name].append(getattr(row, name))
    return pa.table(columns, schema=schema)


def run_prefix(run_id: str) -> str:
    return f"manifests/run={run_id}"


# Parts hold one batch each; merged files get row groups of about this many rows. A row group
# per part (400 for 100,000 items) made merging cost 16 MB more at 100,000 items than at 10,000
# (the writer keeps every row group's metadata until the footer); with 2,500 rows it is 4 MB
# more. Larger groups cost more while they are built: 50,000 rows took 84 MB.
MERGED_ROW_GROUP_ROWS = 2_500


class ManifestWriter:
    """Writes a run's manifests: part files per batch as it goes, merged files at the end."""

    def __init__(self, store: Store, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self.prefix = run_prefix(run_id)

    def write_part(
        self, part: str, items: list[ItemRow], chunks: list[ChunkRow], errors: list[ErrorRow]
    ) -> None:
        # Items last: a part's items file is what says its rows are recorded (see `recover`),
        # so a write cut short (disk full) leaves no item without its chunks and errors.
        for name, rows in (("chunks", chunks), ("errors", errors), ("items", items)):
            self._write(
                f"{self.prefix}/parts/{name}-{part}.parquet", to_table(rows, MANIFESTS[name][0])
            )

    def write_outcomes(self, part: str, outcomes: list[Any]) -> None:
        """A part from item outcomes (objects with .item, .chunks, .errors)."""
        self.write_part(
            part,
            [o.item for o in outcomes],
            [c for o in outcomes for c in o.chunks],
            [e for o in outcomes for e in o.errors],
        )

    def _write(self, key: str, table: pa.Table) -> None:
        write_parquet(self.store, key, table)

    def part_keys(self, name: str) -> list[str]:
        return [
            k
            for k in self.store.list(f"{self.prefix}/parts/")
            if k.rsplit("/", 1)[-1].startswith(name + "-")
        ]

    def finalize(self) -> dict[str, str]:
        """Merge the part files into items/chunks/errors.parquet (errors even when empty)."""
        uris = {}
        for name, (schema, _) in MANIFESTS.items():
            parts = self.part_keys(name)
            with tempfile.TemporaryDirectory(prefix="fishflow-manifest-") as tmp:
                path = os.path.join(tmp, f"{name}.parquet")
                with pq.ParquetWriter(path, schema, compression="zstd") as writer:
                    pending: list[pa.Table] = []
                    for key in parts:
                        pending.append(_read_part(self.store, key).cast(schema))
                        if sum(t.num_rows for t in pending) >= MERGED_ROW_GROUP_ROWS:
                            writer.write_table(pa.concat_tables(pending))
                            pending = []
                    if pending:
                        writer.write_table(pa.concat_tables(pending))
                uris[name] = self.store.put_file(
                    f"{self.prefix}/{name}.parquet", path, PARQUET_TYPE
                )
        self.store.delete([k for name in MANIFESTS for k in self.part_keys(name)])
        return uris


def _read_part(store: Store, key: str) -> pa.Table:
    # One small file at a time: ParquetFile without threads held 6 MB less than read_table.
    return read_parquet(store, key, use_threads=False)


# -- durable progress: the journal and the run record --------------------------------------------


def journal_dir(store: Store) -> str:
    """Journals live in the output's local state folder (see ``storage.state_dir``)."""
    return os.path.join(state_dir(store), "journal")


def _row_json(row: Any) -> dict[str, Any]:
    return {
        name: v.isoformat() if isinstance(v := getattr(row, name), datetime) else v
        for name in row.__slots__
    }


def _row_from_json(cls: type, data: dict[str, Any]) -> Any:
    if isinstance(data.get("created_at"), str):
        data = {**data, "created_at": datetime.fromisoformat(data["created_at"])}
    return cls(**data)


# Under an S3 output: the journal in segments, one object per group of items made durable.
REMOTE_JOURNAL = ".fishflow/journal"


def remote_journal_prefix(run_id: str) -> str:
    return f"{REMOTE_JOURNAL}/run={run_id}/"


Entry = tuple[ItemRow, list[ChunkRow], list[ErrorRow]]


class Journal:
    """One JSON line per finished item, written as the item finishes.

    A line reaches the kernel before the next item starts, so a run killed with SIGKILL loses
    at most the items in flight; part files (per batch) and the merged manifests are built from
    the same rows, and the journal is removed once the run's manifests are final.

    With ``remote`` (an S3 output), lines also go to the output, so that another machine can
    pick the run up: S3 has no append, so each ``durable()`` writes the lines appended since
    the last one as a new segment object. Items waiting at once share one PUT (group commit),
    and a segment is deleted once every item in it is in a manifest part, which keeps the
    segments a resume must read to the few batches in flight.
    """

    def __init__(self, directory: str, run_id: str, *, remote: Store | None = None) -> None:
        os.makedirs(directory, exist_ok=True)
        self.run_id = run_id
        self.path = os.path.join(directory, f"run={run_id}.jsonl")
        self._fd: int | None = None
        self.remote = remote
        self.remote_error: str | None = None  # set once a write to the output failed
        self._session = secrets.token_hex(4)  # a resumed run writes segments of its own
        self._pending: list[tuple[int, bytes]] = []
        self._appended = self._durable = 0
        self._segments: dict[str, set[int]] = {}  # segment key -> rows not yet in a part
        self._lock: asyncio.Lock | None = None
        self._torn = False  # the file ends in a line cut short

    def append(self, item: ItemRow, chunks: list[ChunkRow], errors: list[ErrorRow]) -> None:
        line = {"item": _row_json(item), "chunks": [_row_json(c) for c in chunks],
                "errors": [_row_json(e) for e in errors]}  # fmt: skip
        data = (json.dumps(line) + "\n").encode()
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                self._torn = _ends_mid_line(self.path)
            # A line cut short by a full disk is ended first, so that it spoils no other.
            written = os.write(self._fd, b"\n" + data if self._torn else data)
            self._torn = written < len(data) + self._torn
            if self._torn:
                raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise write_error(self.path, exc) from None
        if self.remote is not None:
            self._pending.append((item.source_row, data))
            self._appended += 1

    async def durable(self) -> None:
        """Return once every line appended so far is in the output (no-op without remote)."""
        if self.remote is None or self.remote_error is not None:
            return
        target = self._appended
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._durable >= target or self.remote_error is not None:
                return  # another item's PUT carried this one's line
            pending, upto = self._pending, self._appended
            self._pending = []
            key = f"{remote_journal_prefix(self.run_id)}{self._session}-{upto:09d}.jsonl"
            done = [k for k, rows in self._segments.items() if not rows]
            try:
                await asyncio.to_thread(self._write_segment, key, pending, done)
            except Exception as exc:  # the output's journal is a convenience: never fail items
                self.remote_error = f"{type(exc).__name__}: {exc}"
                return
            for k in done:
                self._segments.pop(k, None)
            self._segments[key] = {row for row, _ in pending}
            self._durable = upto

    def _write_segment(self, key: str, lines: list[tuple[int, bytes]], done: list[str]) -> None:
        assert self.remote is not None
        self.remote.put(key, b"".join(line for _, line in lines), "application/x-ndjson", {})
        if done:
            with contextlib.suppress(Exception):  # a segment left over costs one GET, later
                self.remote.delete(done)

    def settle(self, rows: Iterable[int]) -> None:
        """These rows are in a manifest part now: their segments may go (at the next write)."""
        settled = set(rows)
        for pending_rows in self._segments.values():
            pending_rows -= settled

    def entries(self) -> list[Entry]:
        """This run's journal: the local file and, with remote, the output's segments."""
        entries = Journal.read(self.path)
        if self.remote is not None:
            entries += read_remote(self.remote, self.run_id)
        first: dict[int, Entry] = {}
        for entry in entries:
            first.setdefault(entry[0].source_row, entry)
        return list(first.values())

    def close(self, remove: bool = False) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if remove:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            if self.remote is not None:
                with contextlib.suppress(Exception):  # leftovers only cost a LIST next time
                    self.remote.delete(self.remote.list(remote_journal_prefix(self.run_id)))

    @staticmethod
    def parse(lines: Iterable[bytes]) -> list[Entry]:
        entries = []
        for raw in lines:
            try:
                line = json.loads(raw)
            except ValueError:
                continue  # the last line of a killed run may be cut short
            entries.append((
                _row_from_json(ItemRow, line["item"]),
                [_row_from_json(ChunkRow, c) for c in line["chunks"]],
                [_row_from_json(ErrorRow, e) for e in line["errors"]],
            ))  # fmt: skip
        return entries

    @staticmethod
    def read(path: str) -> list[Entry]:
        with contextlib.suppress(FileNotFoundError), open(path, "rb") as fh:
            return Journal.parse(fh)
        return []


def _ends_mid_line(path: str) -> bool:
    with open(path, "rb") as fh:
        if fh.seek(0, os.SEEK_END) == 0:
            return False
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) != b"\n"


def read_remote(store: Store, run_id: str | None = None, *, strict: bool = False) -> list[Entry]:
    """Journal entries kept under the output: of one run, or of every run (run_id None).
    A segment deleted meanwhile is skipped; one that cannot be read is too, unless ``strict``
    (gc, which must not take what it could not read for unreferenced)."""
    prefix = remote_journal_prefix(run_id) if run_id else REMOTE_JOURNAL + "/"
    entries: list[Entry] = []
    for key in store.list(prefix):
        if not key.endswith(".jsonl"):
            continue
        try:
            entries.extend(Journal.parse(store.get(key).splitlines()))
        except FileNotFoundError:
            continue
        except StorageError as exc:
            if strict and exc.http_status != 404:  # 404: deleted meanwhile
                raise
    return entries


def remote_journal_runs(store: Store) -> dict[str, list[str]]:
    """Segment keys under the output, by run id."""
    runs: dict[str, list[str]] = {}
    for key in store.list(REMOTE_JOURNAL + "/"):
        run = key.removeprefix(REMOTE_JOURNAL + "/").split("/", 1)[0].removeprefix("run=")
        runs.setdefault(run, []).append(key)
    return runs


def output_write_failure(status: str, errors: Iterable[ErrorRow]) -> bool:
    """Whether an item failed only because the output could not be written (disk full, a
    retryable upload error): work to redo when the run is resumed, not a result to keep."""
    errors = list(errors)
    return (
        status == "failed"
        and bool(errors)
        and all(e.error_type == "StorageError" and e.retryable for e in errors)
    )


def _reopen_final(store: Store, writer: ManifestWriter) -> None:
    """A run that stopped after writing its final manifests (a disk-full run finalizes what it
    has): they become its parts again, so that its rows are counted, and filtered, as parts."""
    finals = [f"{writer.prefix}/{name}.parquet" for name in MANIFESTS]
    listed = set(store.list(writer.prefix + "/"))
    if not all(key in listed for key in finals):
        return  # not finalized (or cut short while writing them: the parts still hold all)
    # Every part left over is already in the final files (they are deleted after them).
    store.delete([k for name in MANIFESTS for k in writer.part_keys(name)])
    for name, key in zip(MANIFESTS, finals, strict=True):
        writer._write(f"{writer.prefix}/parts/{name}-final.parquet", _read_part(store, key))
    store.delete(finals)


def _keep_rows(store: Store, writer: ManifestWriter, rows: set[int]) -> None:
    """Rewrite the parts that hold rows other than `rows`, without those."""
    import pyarrow.compute as pc

    kept = pa.array(sorted(rows), pa.int64())
    for name in MANIFESTS:
        for key in writer.part_keys(name):
            table = _read_part(store, key)
            keep = pc.is_in(table["source_row"].cast(pa.int64()), value_set=kept)
            if not pc.all(keep).as_py() and table.num_rows:
                writer._write(key, table.filter(keep))


def recover(store: Store, writer: ManifestWriter, journal: Journal) -> set[int]:
    """Source rows a run already recorded (parts, final manifests and journal). Journal entries
    that never made it into a part become one, so the final manifests hold every row exactly
    once. Items that failed only because the output could not be written (disk full) are not
    kept: they leave the parts and are not among the rows returned, so the run redoes them."""
    recorded: set[int] = set()
    redo: set[int] = set()
    _reopen_final(store, writer)
    for key in writer.part_keys("items"):
        table = _read_part(store, key)
        recorded.update(table.column("source_row").to_pylist())
    failed: dict[int, list[ErrorRow]] = {}
    for key in writer.part_keys("errors"):
        for row in _read_part(store, key).to_pylist():
            fields = {name: row.get(name) for name in ErrorRow.__slots__}
            failed.setdefault(row["source_row"], []).append(ErrorRow(**fields))
    for key in writer.part_keys("items"):
        table = _read_part(store, key)
        for row, status in zip(
            table["source_row"].to_pylist(), table["status"].to_pylist(), strict=True
        ):
            if output_write_failure(status, failed.get(row, [])):
                redo.add(row)
    recorded -= redo
    # Also gone: chunks and errors of rows no items part records (a part cut short by a
    # full disk): those rows are done again and must not appear twice.
    _keep_rows(store, writer, recorded)
    missing = [
        e
        for e in journal.entries()
        if e[0].source_row not in recorded
        and e[0].source_row not in redo
        and not output_write_failure(e[0].status, e[2])
    ]
    if missing:
        writer.write_part(
            f"journal-{len(recorded):09d}",
            [e[0] for e in missing],
            [c for e in missing for c in e[1]],
            [x for e in missing for x in e[2]],
        )
        recorded.update(e[0].source_row for e in missing)
    return recorded


def merge_runs(
    store: Store,
    run_id: str,
    shard_run_ids: list[str],
    *,
    before_finalize: Callable[[ManifestWriter, set[str]], None] | None = None,
) -> dict[str, str]:
    """One manifest for a sharded run: the shards' final manifests, as rows of `run_id`.
    Each shard keeps its own manifests too; the run record says which shard ran where.
    `before_finalize(writer, present)` may add parts (the removed items: only the whole run
    knows what is gone); `present` is every item id the shards read."""
    writer = ManifestWriter(store, run_id)
    present: set[str] = set()
    for shard_id in shard_run_ids:
        for name in MANIFESTS:
            table = _read_part(store, f"{run_prefix(shard_id)}/{name}.parquet")
            if name == "items":
                present.update(i for i in table["item_id"].to_pylist() if i)
            column = pa.array([run_id] * table.num_rows, pa.string())
            table = table.set_column(table.schema.get_field_index("run_id"), "run_id", column)
            writer._write(f"{writer.prefix}/parts/{name}-{shard_id}.parquet", table)
    if before_finalize is not None:
        before_finalize(writer, present)
    return writer.finalize()


def read_items(store: Store, run_id: str, columns: list[str]) -> list[dict[str, Any]]:
    """Rows of a finished run's items manifest (only `columns`)."""
    return read_parquet(store, f"{run_prefix(run_id)}/items.parquet", columns).to_pylist()


def failed_rows(store: Store, run_id: str) -> list[int]:
    """Source rows that ended `failed` in a finished run."""
    key = f"{run_prefix(run_id)}/items.parquet"
    try:
        table = read_parquet(store, key, ["source_row", "status"])
    except (FileNotFoundError, StorageError) as exc:
        raise ConfigError(
            f"run {run_id} has no final manifest ({key}): resume it first (fishflow resume)"
        ) from exc
    return sorted(r for r, s in zip(*(table[c].to_pylist() for c in ("source_row", "status")),
                                    strict=True) if s == "failed")  # fmt: skip
