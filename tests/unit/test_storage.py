from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fishflow.errors import StorageError
from fishflow.storage import (
    LocalStore,
    S3Store,
    Store,
    UriReader,
    browser_url,
    is_remote_uri,
    output_exists,
    parquet_file,
    read_parquet,
    read_uri_bytes,
    relative_paths,
    safe_key,
    state_dir,
    write_parquet,
)


@pytest.mark.parametrize(
    ("item_id", "expected_prefix"),
    [
        ("plain-id_1.v2", "plain-id_1.v2"),
        ("../../etc/passwd", "etc/passwd-"),
        ("/abs/path", "abs/path-"),
        ("a\\b\\c", "a/b/c-"),
        ("tab\there\x00", "tabhere-"),
        ("", "item-"),
        ("产品/茶", "产品/茶"),
    ],
)
def test_safe_key_cleans_ids(item_id: str, expected_prefix: str) -> None:
    key = safe_key(item_id)
    assert key.startswith(expected_prefix)
    assert ".." not in key.split("/") and not key.startswith("/")
    assert not any(ord(c) < 32 for c in key)


def test_ids_that_clean_alike_never_share_a_key() -> None:
    ids = ["a/b", "a\\b", "a//b", "a/./b", "a b", "a_b", "A:b", "a?b"]
    assert len({safe_key(i) for i in ids}) == len(ids)
    assert len(safe_key("x" * 5000)) < 500


def test_local_store_writes_atomically_and_lists(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "out"))
    uri = store.put("audio/a.wav", b"data", "audio/wav", {})
    assert Path(uri).read_bytes() == b"data" and os.path.isabs(uri)
    assert store.list("audio/") == ["audio/a.wav"]
    assert not [p for p in (tmp_path / "out" / "audio").iterdir() if p.name.startswith(".tmp")]


def test_local_store_refuses_unwritable_folder(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):  # running as root: permissions do not bind
        locked = Path("/proc/fishflow-cannot-write")
    with pytest.raises(StorageError) as info:
        LocalStore(str(locked))
    assert info.value.fatal


def test_disk_full_is_a_fatal_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(str(tmp_path))

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(StorageError, match="No space left") as info:
        store.put("audio/a.wav", b"x", "audio/wav", {})
    assert info.value.fatal
    assert not list(tmp_path.rglob(".tmp-*"))  # the temp file is gone


def test_s3_store_sets_content_type_metadata_and_checksum(bucket: str) -> None:
    store = S3Store(f"s3://{bucket}/pre/fix")
    uri = store.put("audio/a.wav", b"RIFF....", "audio/wav", {"text-sha256": "abc"})
    assert uri == f"s3://{bucket}/pre/fix/audio/a.wav"
    head = boto3.client("s3").head_object(
        Bucket=bucket, Key="pre/fix/audio/a.wav", ChecksumMode="ENABLED"
    )
    assert head["ContentType"] == "audio/wav" and head["Metadata"] == {"text-sha256": "abc"}
    assert "ChecksumSHA256" in head
    assert store.list("audio/") == ["audio/a.wav"]
    assert store.get("audio/a.wav") == b"RIFF...."


def test_s3_store_names_the_missing_bucket(aws: None) -> None:
    with pytest.raises(StorageError, match=r"does the bucket exist|404") as info:
        S3Store("s3://nope-bucket/x")
    assert info.value.fatal


def test_published_files_honour_the_umask(tmp_path: Path) -> None:
    """0644 under the usual umask 022, whether written whole or staged and renamed."""
    script = (
        "import os, sys\n"
        "from fishflow.storage import LocalStore\n"
        "store = LocalStore(sys.argv[1])\n"
        "store.put('audio/a.wav', b'RIFF', 'audio/wav', {})\n"
        "staged = store.staging_path('audio/b.flac')\n"
        "open(staged, 'wb').write(b'fLaC')\n"
        "store.publish_file('audio/b.flac', staged, 'audio/flac', {})\n"
    )
    for umask, mode in ((0o022, 0o644), (0o077, 0o600)):
        out = tmp_path / f"out-{umask:o}"

        def with_umask(u: int = umask) -> None:
            os.umask(u)

        subprocess.run([sys.executable, "-c", script, str(out)], check=True, preexec_fn=with_umask)
        assert {p.name: p.stat().st_mode & 0o777 for p in (out / "audio").iterdir()} == {
            "a.wav": mode,
            "b.flac": mode,
        }


# -- what callers ask a store, answered alike by a folder and by S3 ------------------------------


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return LocalStore(str(tmp_path / "out"))
    bucket = request.getfixturevalue("bucket")
    return S3Store(f"s3://{bucket}/pre/fix")


ITEMS = pa.table({"item_id": ["a", "b"], "status": ["ok", "failed"], "chars": [3, 40]})


def test_parquet_round_trip_and_column_projection(store: Store) -> None:
    uri = write_parquet(store, "manifests/run=r1/items.parquet", ITEMS)
    assert uri == store.uri("manifests/run=r1/items.parquet")
    assert store.list("manifests/") == ["manifests/run=r1/items.parquet"]
    assert read_parquet(store, "manifests/run=r1/items.parquet").equals(ITEMS)
    only = read_parquet(store, "manifests/run=r1/items.parquet", ["status"], use_threads=False)
    assert only.column_names == ["status"] and only["status"].to_pylist() == ["ok", "failed"]
    with parquet_file(store, "manifests/run=r1/items.parquet") as parquet:
        assert parquet.schema_arrow.names == ["item_id", "status", "chars"]
        assert parquet.metadata.num_rows == 2
    # A file no other reader can tell apart: what pyarrow reads from the store's own copy.
    with store.open("manifests/run=r1/items.parquet") as fh:
        assert pq.read_table(io.BytesIO(fh.read())).equals(ITEMS)


def test_open_reads_a_key_whole_and_a_missing_one_fails_as_get_does(store: Store) -> None:
    data = bytes(range(256)) * 4096  # 1 MB: more than one copy block
    store.put("audio/a.flac", data, "audio/flac", {})
    with store.open("audio/a.flac") as fh:
        assert fh.read() == data
        fh.seek(10)  # Parquet readers seek
        assert fh.read(3) == bytes([10, 11, 12])
    errors = (FileNotFoundError, StorageError)
    with pytest.raises(errors) as from_get:
        store.get("audio/missing.flac")
    with pytest.raises(errors) as from_open, store.open("audio/missing.flac"):
        pass
    assert type(from_open.value) is type(from_get.value)
    if isinstance(from_open.value, StorageError):
        assert from_open.value.http_status == 404 and not from_open.value.fatal
        assert "pre/fix/audio/missing.flac" in from_open.value.message


def test_remote_stores_keep_local_state_in_the_cache(store: Store) -> None:
    cache = os.environ["XDG_CACHE_HOME"]  # a fresh folder per test (conftest)
    if store.remote:
        assert isinstance(store, S3Store)
        assert state_dir(store).startswith(os.path.join(cache, "fishflow") + os.sep)
        assert state_dir(store) != state_dir(S3Store(store.root + "/other"))
    else:
        assert state_dir(store) == os.path.join(store.root, ".fishflow")


def test_s3_parquet_writes_keep_the_outputs_encryption(bucket: str) -> None:
    store = S3Store(f"s3://{bucket}/enc", sse="AES256")
    write_parquet(store, "manifests/run=r1/items.parquet", ITEMS)
    head = boto3.client("s3").head_object(Bucket=bucket, Key="enc/manifests/run=r1/items.parquet")
    assert head["ServerSideEncryption"] == "AES256"
    assert head["ContentType"] == "application/vnd.apache.parquet"


def test_output_exists_never_creates_a_local_folder(tmp_path: Path) -> None:
    assert not output_exists(str(tmp_path / "nothing"))
    assert not (tmp_path / "nothing").exists()
    assert output_exists(str(tmp_path))
    assert output_exists("s3://any-bucket/prefix")  # opening it checks the bucket


# -- one file or prefix named by a URI (sources, reference recordings, lexicons) -----------------


def test_read_uri_bytes_from_a_path_and_an_object(bucket: str, tmp_path: Path) -> None:
    (tmp_path / "lex.csv").write_bytes(b"term,spoken\nk8s,kubernetes\n")
    boto3.client("s3").put_object(Bucket=bucket, Key="in/lex.csv", Body=b"term,spoken\n")
    assert read_uri_bytes(str(tmp_path / "lex.csv")) == b"term,spoken\nk8s,kubernetes\n"
    assert read_uri_bytes(str(tmp_path / "lex.csv"), 4) == b"term"
    assert read_uri_bytes(f"s3://{bucket}/in/lex.csv") == b"term,spoken\n"
    assert read_uri_bytes(f"s3://{bucket}/in/lex.csv", 4) == b"term"
    with pytest.raises(FileNotFoundError):
        read_uri_bytes(str(tmp_path / "missing.csv"))
    with pytest.raises(StorageError, match="NoSuchKey") as info:
        read_uri_bytes(f"s3://{bucket}/in/missing.csv")
    assert info.value.http_status == 404 and "AKIA" not in str(info.value)


def test_uri_reader_lists_a_prefix_page_by_page_below_it(bucket: str) -> None:
    s3 = boto3.client("s3")
    for key in ("course/a.md", "course/b/c.txt", "course-2/x.md", "course/d.txt"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"Text.")
    reader = UriReader()
    pages = list(reader.pages(f"s3://{bucket}/course/", page_size=2))
    assert [[o.key for o in page] for page in pages] == [["a.md", "b/c.txt"], ["d.txt"]]
    assert all(o.size == 5 and o.modified > 0 for page in pages for o in page)
    first = list(reader.pages(f"s3://{bucket}/course/", page_size=1, max_keys=1))
    assert [[o.key for o in page] for page in first] == [["a.md"]]
    assert reader.read(f"s3://{bucket}/course/" + pages[0][1].key) == b"Text."
    reader.check(f"s3://{bucket}/course/a.md")
    with pytest.raises(StorageError) as info:
        reader.check(f"s3://{bucket}/course/none.md")
    assert info.value.http_status == 404
    with pytest.raises(StorageError, match="does the bucket exist"):
        list(reader.pages("s3://no-such-bucket-fishflow/course/"))


def test_local_copy_is_the_file_itself_or_a_download_removed_after(
    bucket: str, tmp_path: Path
) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"id": "a"}\n')
    with UriReader().local_copy(str(path)) as local:
        assert local == str(path)
    assert path.exists()
    boto3.client("s3").put_object(Bucket=bucket, Key="in/C.JSONL", Body=b'{"id": "b"}\n')
    with UriReader().local_copy(f"s3://{bucket}/in/C.JSONL") as local:
        assert local.endswith(".jsonl")  # readers go by the suffix
        assert Path(local).read_bytes() == b'{"id": "b"}\n'
    assert not Path(local).exists()


def test_which_uris_are_remote_and_where_a_browser_opens_them() -> None:
    assert is_remote_uri("s3://bucket/key") and is_remote_uri("s3://bucket")
    assert not is_remote_uri("/data/out") and not is_remote_uri("out/s3://x")
    assert not is_remote_uri("postgresql://db/x")
    assert browser_url("s3://bucket/manifests/run=1/items.parquet") == (
        "https://s3.console.aws.amazon.com/s3/object/bucket?prefix=manifests%2Frun%3D1%2Fitems.parquet"
    )
    assert browser_url("/data/out/a b.parquet") == "file:///data/out/a%20b.parquet"


def test_a_versioned_object_changes_only_from_the_version_last_read(store: Store) -> None:
    record = store.versioned(".fishflow/lock", "application/json")
    assert record.read() is None
    first = record.create(b'{"v": 1}')
    assert first is not None and record.create(b'{"v": 9}') is None  # exists: not replaced
    assert record.read() == (b'{"v": 1}', first)
    second = record.replace(b'{"v": 2}', first)
    assert second is not None and second != first
    assert record.replace(b'{"v": 9}', first) is None  # a stale tag changes nothing
    record.remove(first, tombstone=b'{"v": 0}')  # stale: left alone
    assert record.read() == (b'{"v": 2}', second)
    record.remove(second, tombstone=b'{"v": 0}')
    left = record.read()
    # S3 has no conditional delete on every implementation: the tombstone stands in for it.
    assert (left[0] if left else None) == (b'{"v": 0}' if store.remote else None)


def test_a_deployment_is_told_of_relative_paths_only() -> None:
    """A deployment's run works in a temporary folder of its worker: `catalog.csv` or `out`
    would be read from, and written to, a folder deleted after the run."""
    assert relative_paths(source="catalog.csv", out="s3://b/audio") == ["source 'catalog.csv'"]
    assert relative_paths(source="/data/catalog.csv", out="out") == ["out 'out'"]
    assert relative_paths(source="postgresql://db/x", out="/srv/audio") == []
