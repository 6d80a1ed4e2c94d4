from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fishflow.errors import SourceError
from fishflow.sources import Columns, check_source, read_source


def rows(uri: str, cols: Columns | None = None, batch_rows: int = 1000):
    return [r for batch in read_source(uri, cols or Columns(), batch_rows) for r in batch]


def test_csv_with_custom_columns_and_batches(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text('sku,body,lang\n1,Hello,en\n2,"Multi, line\nquoted",de\n3,,\n')
    got = rows(str(path), Columns(id="sku", text="body", language="lang"), batch_rows=2)
    assert [(r.row, r.item_id, r.text, r.language) for r in got] == [
        (0, "1", "Hello", "en"),
        (1, "2", "Multi, line\nquoted", "de"),
        (2, "3", "", None),
    ]


def test_jsonl_bad_lines_become_rows_with_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"id": "a", "text": "ok"}\n{broken\n\xff\xfe\n[1]\n{"id": 5, "text": "n"}\n')
    got = rows(str(path))
    assert [r.problem is None for r in got] == [True, False, False, False, True]
    assert "invalid JSON" in got[1].problem and "UTF-8" in got[2].problem
    assert got[4].item_id == "5"


def test_parquet_is_read_in_record_batches_and_types_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pq.write_table(
        pa.table({"id": list(range(25)), "text": [f"t{i}" for i in range(25)]}),
        path,
        row_group_size=10,
    )
    batches = list(read_source(str(path), Columns(), batch_rows=10))
    assert [len(b) for b in batches] == [10, 10, 5] and batches[0][3].item_id == "3"
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"id": [1], "text": [3.5]}), bad)
    with pytest.raises(SourceError, match="expected strings"):
        rows(str(bad))


def test_folder_of_text_and_markdown(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("Plain text.")
    (tmp_path / "sub" / "b.md").write_text("## Lesson\n\nRead **this**.")
    (tmp_path / "skip.png").write_bytes(b"x")
    got = rows(str(tmp_path))
    # Markdown is read into speech when the item is validated (the run's text_format decides).
    assert [(r.item_id, r.text, r.text_format) for r in got] == [
        ("a.txt", "Plain text.", "plain"),
        ("sub/b.md", "## Lesson\n\nRead **this**.", "markdown"),
    ]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.csv", None, "no such file"),
        ("empty.csv", b"", "empty"),
        ("cols.csv", b"sku,body\n1,x\n", "no column 'id'"),
        ("fake.parquet", b"id,text\n", "not a Parquet"),
        ("data.xlsx", b"x", "unknown source type"),
        ("empty.jsonl", b"", "empty"),
        ("quote.csv", b'id,text\n1,"unclosed\n2,x\n', "not valid CSV"),
    ],
)
def test_unreadable_sources_are_clear_run_level_errors(
    tmp_path: Path, name, content, message
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SourceError, match=message):
        rows(str(path))


def test_s3_table_source(bucket: str) -> None:
    import boto3

    body = "\n".join(json.dumps({"id": f"k{i}", "text": "hi"}) for i in range(3))
    boto3.client("s3").put_object(Bucket=bucket, Key="in/c.jsonl", Body=body.encode())
    assert [r.item_id for r in rows(f"s3://{bucket}/in/c.jsonl")] == ["k0", "k1", "k2"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.csv", None, "no such file or folder"),
        ("empty.csv", b"", "the file is empty"),
        ("catalog.xlsx", b"PK", "unknown source type"),
    ],
)
def test_check_source_refuses_what_cannot_be_read(
    tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SourceError, match=message):
        check_source(str(path))


def test_check_source_passes_readable_sources_and_unknown_schemes(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("id,text\na,Hello.\n")
    (tmp_path / "docs").mkdir()
    check_source(str(tmp_path / "c.csv"))
    check_source(str(tmp_path / "docs"))
    check_source("postgresql://db.example/catalog")  # its reader decides, not this check


def test_check_source_on_s3_asks_for_the_object_or_the_prefix(bucket: str) -> None:
    import boto3

    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="cat/items.csv", Body=b"id,text\na,Hello.\n")
    s3.put_object(Bucket=bucket, Key="docs/a.md", Body=b"# Hello")
    check_source(f"s3://{bucket}/cat/items.csv")
    check_source(f"s3://{bucket}/docs/")
    with pytest.raises(SourceError, match="no such object"):
        check_source(f"s3://{bucket}/cat/missing.csv")
    with pytest.raises(SourceError, match="no objects under this prefix"):
        check_source(f"s3://{bucket}/nothing-here/")
    with pytest.raises(SourceError, match="NoSuchBucket"):
        check_source("s3://no-such-bucket-fishflow/items.csv")


def test_progress_totals_of_an_s3_prefix_and_a_database_table(
    bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    import boto3

    from fishflow import sources
    from fishflow.sources import estimate_rows

    s3 = boto3.client("s3")
    for key in ("course/a.md", "course/b/c.md", "course/notes.txt", "course/img.png"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"Text.")
    s3.put_object(Bucket=bucket, Key="in/c.csv", Body=b"id,text\na,b\n")
    assert estimate_rows(f"s3://{bucket}/course") == 3  # the .md and .txt objects a run reads
    assert estimate_rows(f"s3://{bucket}/in/c.csv") is None  # only by reading it
    monkeypatch.setattr(sources, "ESTIMATE_LIST_KEYS", 4)  # exactly the prefix's 4 keys
    assert estimate_rows(f"s3://{bucket}/course") == 3
    monkeypatch.setattr(sources, "ESTIMATE_LIST_KEYS", 3)  # more keys than it may list
    assert estimate_rows(f"s3://{bucket}/course") is None

    db = tmp_path / "c.db"
    with sqlite3.connect(db) as conn:
        conn.execute('CREATE TABLE "my items" (id INTEGER, text TEXT)')
        conn.executemany('INSERT INTO "my items" VALUES (?, ?)', [(i, "x") for i in range(7)])
    monkeypatch.setenv("CATALOG", f"sqlite:///{db}")
    assert estimate_rows("env:CATALOG", table="my items") == 7
    assert estimate_rows("env:CATALOG") is None  # a query: not counted
    assert estimate_rows("env:CATALOG", table="missing") is None  # the reader will say why
