"""An S3 prefix of documents read like a local folder (moto)."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

import fishflow.sources
from fishflow.sources import Columns, read_source


def test_every_document_under_a_prefix_across_listing_pages(
    bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fishflow.sources, "LIST_PAGE_SIZE", 4)  # several pages from 23 keys
    s3 = boto3.client("s3")
    for i in range(20):
        s3.put_object(Bucket=bucket, Key=f"course/week-{i // 10}/{i:02d}.txt", Body=f"Doc {i}.")
    s3.put_object(Bucket=bucket, Key="course/cover.png", Body=b"\x89PNG")
    s3.put_object(Bucket=bucket, Key="other/00.txt", Body=b"Not under the prefix.")
    s3.put_object(Bucket=bucket, Key="course/notes.md", Body=b"# Notes\n\nRead **this**.")
    s3.put_object(Bucket=bucket, Key="course/bad.txt", Body=b"\xff\xfe")
    batches = list(read_source(f"s3://{bucket}/course/", Columns(), batch_rows=10))
    rows = [r for b in batches for r in b]
    assert [len(b) for b in batches] == [10, 10, 2]
    assert [r.row for r in rows] == list(range(22))
    assert [r.item_id for r in rows[:3]] == ["bad.txt", "notes.md", "week-0/00.txt"]
    assert rows[0].problem == "file is not valid UTF-8"
    assert rows[-1].item_id == "week-1/19.txt" and rows[-1].text == "Doc 19."
    # The same ids and text as the same documents in a local folder.
    local = tmp_path / "course"
    for r in rows[1:4]:
        assert r.item_id is not None
        path = local / r.item_id
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(s3.get_object(Bucket=bucket, Key=f"course/{r.item_id}")["Body"].read())
    folder = [r for b in read_source(str(local), Columns()) for r in b]
    assert [(r.item_id, r.text) for r in folder] == [(r.item_id, r.text) for r in rows[1:4]]
