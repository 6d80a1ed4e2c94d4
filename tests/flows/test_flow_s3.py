"""The flow with S3 (moto) as source and output."""

from __future__ import annotations

import io

import boto3
import pandas as pd
import pytest

from fishflow.testing.emulator import Emulator
from tests.flows.helpers import CATALOG_ROWS, as_text, decode, run


def read_parquet(bucket: str, key: str) -> pd.DataFrame:
    body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    return pd.read_parquet(io.BytesIO(body))


def test_s3_source_and_output(bucket: str, emulator: Emulator) -> None:
    s3 = boto3.client("s3")
    s3.put_object(
        Bucket=bucket,
        Key="in/catalog.csv",
        Body=pd.DataFrame(CATALOG_ROWS).to_csv(index=False).encode(),
    )
    summary = run(f"s3://{bucket}/in/catalog.csv", f"s3://{bucket}/tts", [emulator.url])
    prefix = f"tts/manifests/run={summary.run_id}"
    items = read_parquet(bucket, f"{prefix}/items.parquet")
    errors = read_parquet(bucket, f"{prefix}/errors.parquet")
    assert sorted(items["source_row"]) == list(range(len(CATALOG_ROWS)))
    assert set(errors["source_row"]) == set(items[items.status == "failed"]["source_row"])
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="tts/")["Contents"]}
    assert not any("/parts/" in k for k in keys)  # part files merged and removed
    for row in items[items.status == "ok"].itertuples():
        uri = as_text(row.audio_uri)
        assert uri.startswith(f"s3://{bucket}/tts/audio/")
        key = uri.removeprefix(f"s3://{bucket}/")
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head["ContentType"] == "audio/wav"
        assert head["Metadata"]["text-sha256"] == row.text_sha256
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        rate, duration, _ = decode(data)
        assert rate == 44_100 and len(data) == row.bytes
        assert duration == pytest.approx(row.duration_s, abs=1e-3)
    # The review page beside the manifests, served as a web page.
    assert summary.report == f"s3://{bucket}/{prefix}/report.html"
    head = s3.head_object(Bucket=bucket, Key=f"{prefix}/report.html")
    assert head["ContentType"] == "text/html; charset=utf-8"

    emulator.reset_stats()
    again = run(f"s3://{bucket}/in/catalog.csv", f"s3://{bucket}/tts", [emulator.url])
    assert again.skipped == summary.ok and emulator.stats["requests"] == 0


def test_s3_folder_of_markdown(bucket: str, emulator: Emulator) -> None:
    s3 = boto3.client("s3")
    s3.put_object(
        Bucket=bucket,
        Key="course/01-intro.md",
        Body=b"# Welcome\n\nThis course is **short**. See [the notes](http://x.y).",
    )
    s3.put_object(Bucket=bucket, Key="course/sub/02.txt", Body=b"Lesson two begins here.")
    s3.put_object(Bucket=bucket, Key="course/image.png", Body=b"\x89PNG")
    summary = run(f"s3://{bucket}/course", f"s3://{bucket}/out", [emulator.url])
    items = read_parquet(bucket, f"out/manifests/run={summary.run_id}/items.parquet")
    assert sorted(items["item_id"]) == ["01-intro.md", "sub/02.txt"]
    assert (items["status"] == "ok").all()
    # The heading is a chunk of its own; the link's target is never spoken.
    assert {"Welcome.", "This course is short. See the notes."} <= set(emulator.stats["texts"])


def test_missing_bucket_is_a_clear_run_level_error(aws: None, emulator: Emulator, tmp_path) -> None:
    from fishflow.errors import StorageError

    (tmp_path / "c.csv").write_text("id,text\na,Hello there.\n")
    with pytest.raises(StorageError, match="no-such-bucket"):
        run(tmp_path / "c.csv", "s3://no-such-bucket/x", [emulator.url])


def test_a_long_item_is_uploaded_from_its_file_in_parts(
    bucket: str, emulator: Emulator, tmp_path
) -> None:
    """Audio over 8 MB goes up as a multipart upload of the staged file, and arrives whole."""
    import hashlib
    import json

    text = " ".join(f"Sentence {i} of a long chapter reads one more idea aloud." for i in range(50))
    source = tmp_path / "book.jsonl"
    source.write_text(json.dumps({"id": "book", "text": text}) + "\n")
    summary = run(source, f"s3://{bucket}/tts", [emulator.url])
    assert summary.ok == 1
    row = read_parquet(bucket, f"tts/manifests/run={summary.run_id}/items.parquet").iloc[0]
    assert row.bytes > 8 << 20  # above the multipart threshold
    s3 = boto3.client("s3")
    key = row.audio_uri.removeprefix(f"s3://{bucket}/")
    etag = s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    assert etag.endswith(f"-{-(-row.bytes // (8 << 20))}")  # a multipart ETag: -<parts>
    data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(data).hexdigest() == row.audio_sha256 and len(data) == row.bytes
    _, duration, _ = decode(data)
    assert duration == pytest.approx(row.duration_s, abs=1e-3)


def test_gc_drops_the_outputs_own_chunk_copy_nothing_references(
    bucket: str, emulator: Emulator, tmp_path, monkeypatch, capsys
) -> None:
    """On a fresh machine (empty local cache), gc still finds what the output keeps."""
    import json

    from fishflow.cli import main

    def lesson(word: str) -> str:
        return " ".join(f"Step {i} of the {word} lesson says one thing." for i in range(6))

    source = tmp_path / "c.jsonl"
    out = f"s3://{bucket}/tts"

    def write(rows: dict[str, str]) -> None:
        source.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in rows.items()))

    write({"a": lesson("first"), "b": lesson("second")})
    first = run(source, out, [emulator.url], settings_kw={"chunk_bytes": 100})
    write({"a": lesson("first")})  # b is gone from the source
    second = run(source, out, [emulator.url], settings_kw={"chunk_bytes": 100})
    chunks = read_parquet(bucket, f"tts/manifests/run={first.run_id}/chunks.parquet")
    kept = set(chunks[chunks.item_id == "a"].chunk_key)
    gone = set(chunks[chunks.item_id == "b"].chunk_key)
    assert second.removed == 1 and kept and gone

    s3 = boto3.client("s3")

    def copy() -> set[str]:
        listed = s3.list_objects_v2(Bucket=bucket, Prefix="tts/.fishflow/chunks/")
        return {o["Key"].rsplit("/", 1)[-1].split(".")[0] for o in listed.get("Contents", [])}

    assert copy() == kept | gone
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "fresh-machine"))
    assert main(["gc", out, "--grace-s", "3600"]) == 0  # all younger than the grace: kept
    assert copy() == kept | gone
    assert main(["gc", out, "--dry-run", "--grace-s", "0"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("would delete s3://") == len(gone) and copy() == kept | gone
    assert main(["gc", out, "--grace-s", "0"]) == 0
    assert copy() == kept
    assert f"deleted {len(gone)} chunk file(s)" in capsys.readouterr().out
    # What is left is what a re-run reuses: nothing is synthesised again.
    emulator.reset_stats()
    again = run(source, out, [emulator.url], settings_kw={"chunk_bytes": 100}, force=True)
    assert again.ok == 1 and emulator.stats["requests"] == 0
