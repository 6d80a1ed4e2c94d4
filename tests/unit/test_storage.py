from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from fishflow.errors import StorageError
from fishflow.storage import LocalStore, S3Store, safe_key


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
        subprocess.run(
            [sys.executable, "-c", script, str(out)],
            check=True,
            preexec_fn=lambda u=umask: os.umask(u),
        )
        assert {p.name: p.stat().st_mode & 0o777 for p in (out / "audio").iterdir()} == {
            "a.wav": mode,
            "b.flac": mode,
        }
