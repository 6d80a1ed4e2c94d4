"""What a full disk leaves behind is recovered, not kept: journal lines cut short, parts cut
short, items failed only because the output could not be written."""

from __future__ import annotations

import errno
from datetime import UTC, datetime
from pathlib import Path

from fishflow.manifest import (
    ChunkRow,
    ErrorRow,
    ItemRow,
    Journal,
    ManifestWriter,
    recover,
)
from fishflow.storage import LocalStore, write_error

NOW = datetime(2026, 12, 7, tzinfo=UTC)


def item(row: int, status: str = "ok") -> ItemRow:
    return ItemRow(run_id="r", item_id=f"i{row}", source_row=row, status=status, created_at=NOW)


def error(row: int, error_type: str = "StorageError", retryable: bool = True) -> ErrorRow:
    return ErrorRow(run_id="r", item_id=f"i{row}", source_row=row, chunk_index=None,
                    stage="upload", error_type=error_type, error_message="cannot write",
                    http_status=None, retryable=retryable, attempts=1, created_at=NOW)  # fmt: skip


def chunk(row: int) -> ChunkRow:
    return ChunkRow(run_id="r", item_id=f"i{row}", source_row=row, chunk_index=0, start_char=0,
                    end_char=3, utf8_bytes=3, chunk_key="k", server=None, attempts=1,
                    latency_s=None, duration_s=None, reused=False, status="ok")  # fmt: skip


def test_disk_full_is_retryable_and_other_write_errors_are_not() -> None:
    full = write_error("out/a.wav", OSError(errno.ENOSPC, "No space left on device"))
    denied = write_error("out/a.wav", OSError(errno.EACCES, "Permission denied"))
    assert full.fatal and full.retryable and "No space left on device" in full.message
    assert not denied.retryable


def test_a_journal_line_cut_short_spoils_no_other(tmp_path: Path) -> None:
    journal = Journal(str(tmp_path), "r")
    journal.append(item(0), [], [])
    journal.close()
    with open(journal.path, "ab") as fh:
        fh.write(b'{"item": {"run_id": "r", "ite')  # the disk filled up mid-line
    again = Journal(str(tmp_path), "r")
    again.append(item(1), [], [])
    again.close()
    assert [e[0].source_row for e in Journal.read(journal.path)] == [0, 1]


def test_resume_redoes_items_the_output_refused_and_keeps_the_others(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "out"))
    writer = ManifestWriter(store, "r")
    # Row 0 ok, row 1 failed for the disk, row 2 failed for its own reason (kept failed),
    # row 3 failed for the disk with another error too (kept: a retry of the disk won't do).
    writer.write_part(
        "a",
        [item(0), item(1, "failed"), item(2, "failed"), item(3, "failed")],
        [chunk(0), chunk(1)],
        [error(1), error(2, "RequestRejected", False), error(3), error(3, "BadAudio", False)],
    )
    # A part cut short by the full disk: its chunks and errors were written, its items not.
    writer._write("manifests/run=r/parts/chunks-b.parquet", _table([chunk(4)], "chunks"))
    journal = Journal(str(tmp_path / "journal"), "r")
    journal.append(item(5, "failed"), [], [error(5)])  # in the journal only, for the disk
    journal.append(item(6), [chunk(6)], [])
    writer.finalize()  # a disk-full run finalizes what it has: its finals are read back
    recorded = recover(store, writer, journal)
    assert recorded == {0, 2, 3, 6}
    manifests = writer.finalize()
    import pyarrow.parquet as pq

    items = pq.read_table(manifests["items"]).to_pydict()
    chunks = pq.read_table(manifests["chunks"]).to_pydict()
    errors = pq.read_table(manifests["errors"]).to_pydict()
    assert sorted(items["source_row"]) == [0, 2, 3, 6]
    assert sorted(chunks["source_row"]) == [0, 6]  # row 4's orphan chunk is gone
    assert sorted(errors["source_row"]) == [2, 3, 3]
    assert not [k for k in store.list("manifests/run=r/") if "/parts/" in k]


def _table(rows: list, name: str):
    from fishflow.manifest import MANIFESTS, to_table

    return to_table(rows, MANIFESTS[name][0])
