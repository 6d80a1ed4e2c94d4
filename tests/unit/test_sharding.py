"""A sharded run's pure parts: the partition of rows, and one manifest from the shards'."""

from __future__ import annotations

import collections
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq

from fishflow.hygiene import tidy_output
from fishflow.manifest import ErrorRow, ItemRow, ManifestWriter, merge_runs
from fishflow.record import Failure, RunRecord, RunSummary, latest_run_id, write_run_record
from fishflow.run import RunTotals, shard_of, shard_run_id
from fishflow.storage import LocalStore


def test_every_id_lands_in_exactly_one_shard_and_always_the_same() -> None:
    ids = [f"sku-{i}" for i in range(3000)]
    counts = collections.Counter(shard_of(i, 3) for i in ids)
    assert set(counts) == {0, 1, 2}
    assert min(counts.values()) > 800  # roughly even: no shard idles while another works
    assert [shard_of(i, 3) for i in ids] == [shard_of(i, 3) for i in ids]
    assert shard_of("sku-1", 1) == 0


def _item(run_id: str, row: int, status: str) -> ItemRow:
    return ItemRow(
        run_id=run_id,
        item_id=f"i{row}",
        source_row=row,
        status=status,
        created_at=datetime.now(UTC),
        duration_s=2.0 if status == "ok" else None,
        error="text is empty" if status == "failed" else None,
    )


def test_shards_manifests_merge_into_one_with_every_row_once(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path))
    parent = "20261125T010000Z-abcdef"
    rows = {0: [0, 2, 5], 1: [1, 3, 4]}
    for shard, source_rows in rows.items():
        child = shard_run_id(parent, shard)
        writer = ManifestWriter(store, child)
        items = [_item(child, r, "failed" if r == 4 else "ok") for r in source_rows]
        errors = (
            [
                ErrorRow(
                    run_id=child,
                    item_id="i4",
                    source_row=4,
                    chunk_index=None,
                    stage="source",
                    error_type="Rejection",
                    error_message="text is empty",
                    http_status=None,
                    retryable=False,
                    attempts=1,
                    created_at=datetime.now(UTC),
                )
            ]
            if shard == 1
            else []
        )
        writer.write_part("p", items, [], errors)
        writer.finalize()
    manifests = merge_runs(store, parent, [shard_run_id(parent, s) for s in rows])
    items = pq.read_table(manifests["items"]).to_pylist()
    assert sorted(r["source_row"] for r in items) == list(range(6))
    assert {r["run_id"] for r in items} == {parent}
    assert pq.read_table(manifests["errors"]).column("source_row").to_pylist() == [4]
    totals = RunTotals.from_items(items)
    assert (totals.ok, totals.failed, totals.audio_seconds) == (5, 1, 10.0)
    assert totals.failures == [Failure(item_id="i4", source_row=4, error="text is empty")]


def test_the_latest_run_is_the_parent_not_a_shard_started_after_it(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path))
    at = datetime(2026, 11, 25, 1, 0, 0, tzinfo=UTC)
    first = RunRecord(run_id="r1", source="a.csv", out=store.root, servers=[], started_at=at)
    shard = RunRecord(run_id="r1-s0", source="a.csv", out=store.root, servers=[], shard=0,
                      parent_run_id="r1", started_at=at.replace(second=5))  # fmt: skip
    write_run_record(store, first)
    write_run_record(store, shard)
    assert latest_run_id(store) == "r1"


def test_a_run_fails_only_past_its_share_of_failed_items() -> None:
    summary = RunSummary(run_id="r", ok=99, failed=1)
    assert summary.too_many_failed(0.0)
    assert not summary.too_many_failed(0.01)
    assert not RunSummary(run_id="r", ok=5).too_many_failed(0.0)


def test_the_merged_manifest_records_items_gone_from_the_whole_source(tmp_path: Path) -> None:
    """Each shard reads part of the source, so only the merge knows what is gone."""
    store = LocalStore(str(tmp_path))
    root = store.uri("")
    earlier = [
        ItemRow(
            run_id="r0",
            item_id=f"i{n}",
            source_row=n,
            status="ok",
            created_at=datetime(2026, 11, 24, tzinfo=UTC),
            content_key=f"k{n}",
            audio_uri=f"{root}audio/i{n}.wav",
        )
        for n in range(4)
    ]
    ManifestWriter(store, "r0").write_part("p", earlier, [], [])
    parent = "20261125T010000Z-abcdef"
    for shard, source_rows in {0: [0], 1: [1, 2]}.items():  # i3 is gone from the source
        child = shard_run_id(parent, shard)
        writer = ManifestWriter(store, child)
        writer.write_part("p", [_item(child, r, "ok") for r in source_rows], [], [])
        writer.finalize()

    def tidy(writer: ManifestWriter, present: set[str]) -> None:
        assert present == {"i0", "i1", "i2"}
        tidy_output(store, writer, run_id=parent, part="removed", present=present,
                    previous=None, prune=False, now=datetime.now(UTC))  # fmt: skip

    manifests = merge_runs(store, parent, [shard_run_id(parent, s) for s in (0, 1)],
                           before_finalize=tidy)  # fmt: skip
    items = pq.read_table(manifests["items"]).to_pylist()
    removed = [r for r in items if r["status"] == "removed"]
    assert [(r["item_id"], r["audio_uri"]) for r in removed] == [("i3", f"{root}audio/i3.wav")]
    assert RunTotals.from_items(items).removed == 1
