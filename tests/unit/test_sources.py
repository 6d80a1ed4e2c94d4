from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import fishflow.sources
import fishflow.storage
from fishflow.errors import SourceError
from fishflow.sources import Columns, FileLimits, SourceRow, check_source, read_source


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


# -- a folder source reads only what is its own ------------------------------------------------


def by_id(uri: str, limits: FileLimits | None = None) -> dict[str, SourceRow]:
    batches = read_source(uri, Columns(), limits=limits or FileLimits())
    return {r.item_id or "": r for b in batches for r in b}


def test_a_link_out_of_the_folder_fails_its_row_unread(tmp_path: Path) -> None:
    folder, outside = tmp_path / "docs", tmp_path / "private"
    folder.mkdir()
    outside.mkdir()
    (outside / "key.md").write_text("SECRET OUTSIDE TEXT")
    (folder / "a.md").write_text("Own text.")
    (folder / "out.md").symlink_to(outside / "key.md")
    (folder / "in.md").symlink_to(folder / "a.md")  # inside: the folder's own, read
    (folder / "linked").symlink_to(outside, target_is_directory=True)  # never walked
    got = by_id(str(folder))
    assert set(got) == {"a.md", "in.md", "out.md"}
    assert got["in.md"].text == "Own text."
    assert got["out.md"].text is None and "outside the source folder" in (
        got["out.md"].problem or ""
    )
    assert "SECRET" not in repr(got)
    allowed = by_id(str(folder), FileLimits(follow_symlinks=True))
    assert allowed["out.md"].text == "SECRET OUTSIDE TEXT"


def test_a_file_over_the_size_cap_fails_its_row_without_being_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "book.txt").write_text("A book.")
    with open(tmp_path / "huge.txt", "wb") as fh:
        os.truncate(fh.fileno(), 2 << 30)  # 2 GB, sparse: no disk used
    real_open = os.open
    opened: list[str] = []

    def recording(path: str, *args: object, **kwargs: object) -> int:
        opened.append(str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", recording)
    got = by_id(str(tmp_path))
    assert got["book.txt"].text == "A book."
    assert got["huge.txt"].text is None
    assert "2,147,483,648 bytes, over the 20,000,000-byte limit" in (got["huge.txt"].problem or "")
    assert not any(p.endswith("huge.txt") for p in opened)  # refused by its size: not opened
    small = by_id(str(tmp_path), FileLimits(max_bytes=5))
    assert "over the 5-byte limit" in (small["book.txt"].problem or "")


def test_a_file_that_cannot_be_read_fails_its_row_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("a.md", "broken.md", "c.txt"):
        (tmp_path / name).write_text(f"Text of {name}.")
    real_open = os.open

    def failing(path: str, *args: object, **kwargs: object) -> int:
        if str(path).endswith("broken.md"):  # a bad sector; or EACCES for another account
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", failing)
    got = by_id(str(tmp_path))
    assert got["a.md"].text == "Text of a.md." and got["c.txt"].text == "Text of c.txt."
    assert got["broken.md"].problem == "cannot read the file: Input/output error"


def test_a_bom_is_dropped_and_special_files_are_skipped_with_a_note(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "bom.md").write_bytes("\ufeff# Chapter one\n\nText.".encode())
    os.mkfifo(tmp_path / "pipe.md")  # opening it would block the run for ever
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock.txt"))
        got = by_id(str(tmp_path))
    assert set(got) == {"bom.md"}
    assert got["bom.md"].text == "# Chapter one\n\nText."
    notes = [r.getMessage() for r in caplog.records if r.name == "fishflow.sources"]
    assert notes == ["pipe.md: a fifo, not read", "sock.txt: a socket, not read"]
    # Named on its own, a fifo is refused the same way, without blocking.
    [[row]] = list(read_source(str(tmp_path / "pipe.md")))
    assert row.problem == "a fifo, not a text file: not read"


def test_an_s3_prefix_reads_only_objects_under_the_cap_and_fails_one_it_cannot_get(
    bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="docs/a.md", Body="\ufeff# Title\n\nBody.".encode())
    s3.put_object(Bucket=bucket, Key="docs/big.txt", Body=b"x" * 100)
    s3.put_object(Bucket=bucket, Key="docs/denied.txt", Body=b"Hidden.")
    fetched: list[str] = []
    real = fishflow.storage.s3_client

    def client() -> object:
        inner = real()
        get = inner.get_object

        def get_object(**kwargs: str) -> object:
            fetched.append(kwargs["Key"])
            if kwargs["Key"].endswith("denied.txt"):
                from botocore.exceptions import ClientError

                error = {
                    "Error": {"Code": "AccessDenied"},
                    "ResponseMetadata": {"HTTPStatusCode": 403},
                }
                raise ClientError(error, "GetObject")  # type: ignore[arg-type]
            return get(**kwargs)

        inner.get_object = get_object
        return inner

    monkeypatch.setattr(fishflow.storage, "s3_client", client)
    got = by_id(f"s3://{bucket}/docs", FileLimits(max_bytes=50))
    assert got["a.md"].text == "# Title\n\nBody."
    assert "100 bytes, over the 50-byte limit" in (got["big.txt"].problem or "")
    assert "AccessDenied" in (got["denied.txt"].problem or "")
    assert "docs/big.txt" not in fetched  # refused by its listed size, never downloaded
