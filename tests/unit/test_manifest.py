from __future__ import annotations

import dataclasses
import types
import typing
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fishflow.manifest import MANIFESTS, ChunkRow, ErrorRow, ItemRow, ManifestWriter
from fishflow.storage import LocalStore

_ARROW = {
    str: pa.string(),
    int: (pa.int64(), pa.int32()),
    float: pa.float64(),
    bool: pa.bool_(),
    datetime: pa.timestamp("us", tz="UTC"),
}


def test_row_classes_and_schemas_agree() -> None:
    for name, (schema, cls) in MANIFESTS.items():
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert set(fields) == set(schema.names), name
        hints = typing.get_type_hints(cls)
        for col in schema:
            hint = hints[col.name]
            optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
            base = (
                next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
            )
            expected = _ARROW[base]
            assert col.type in (expected if isinstance(expected, tuple) else (expected,)), col.name
            assert col.nullable or not optional, f"{name}.{col.name} is optional but not nullable"


def test_parts_are_merged_and_errors_written_even_when_empty(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path))
    writer = ManifestWriter(store, "r1")
    now = datetime.now(UTC)
    writer.write_part(
        "000000",
        [
            ItemRow(
                run_id="r1", item_id="a", source_row=0, status="ok", created_at=now, duration_s=1.5
            )
        ],
        [],
        [],
    )
    writer.write_part(
        "000001",
        [ItemRow(run_id="r1", item_id="b", source_row=1, status="ok", created_at=now)],
        [],
        [],
    )
    uris = writer.finalize()
    items = pq.read_table(uris["items"])
    assert items.column("item_id").to_pylist() == ["a", "b"]
    assert items.schema.equals(MANIFESTS["items"][0])
    errors = pq.read_table(uris["errors"])
    assert errors.num_rows == 0 and errors.schema.equals(MANIFESTS["errors"][0])
    assert not list((tmp_path / "manifests" / "run=r1").rglob("parts/*.parquet"))


def test_merged_manifests_keep_every_row_in_order_in_few_row_groups(tmp_path: Path) -> None:
    writer = ManifestWriter(LocalStore(str(tmp_path)), "r1")
    now = datetime.now(UTC)
    sizes = [1000, 1000, 1000, 700]  # merged: one group once 2,500 rows are read, then the rest
    row = 0
    for part, size in enumerate(sizes):
        items = [
            ItemRow(
                run_id="r1",
                item_id=f"item-{row + i}",
                source_row=row + i,
                status="ok",
                created_at=now,
            )
            for i in range(size)
        ]
        writer.write_part(f"{part:06d}", items, [], [])
        row += size
    merged = pq.ParquetFile(writer.finalize()["items"])
    assert merged.read(columns=["source_row"]).column(0).to_pylist() == list(range(row))
    assert [merged.metadata.row_group(i).num_rows for i in range(merged.num_row_groups)] == [
        3000,
        700,
    ]


def test_rows_are_built_by_keyword_only() -> None:
    """Rows have 11-20 fields: a positional slip would put a value in the wrong column."""
    now = datetime.now(UTC)
    with pytest.raises(TypeError):
        ItemRow("r1", "a", 0, "ok", now)  # type: ignore[call-arg]  # positional on purpose
    for cls in (ChunkRow, ErrorRow):
        with pytest.raises(TypeError):
            cls(*range(len(dataclasses.fields(cls))))  # type: ignore[call-arg]  # positional on purpose
