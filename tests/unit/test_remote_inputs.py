"""A lexicon and reference recordings named by s3:// URI read as local files do (moto)."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from fishflow import voices
from fishflow.errors import ConfigError, SourceError
from fishflow.lexicon import load_lexicon
from fishflow.voices import ReferenceFiles, resolve

LEXICON = b"term,spoken\nkubectl,cube control\n"


def test_a_lexicon_on_s3_reads_as_the_same_file_on_disk(bucket: str, tmp_path: Path) -> None:
    boto3.client("s3").put_object(Bucket=bucket, Key="lex/terms.csv", Body=LEXICON)
    (tmp_path / "terms.csv").write_bytes(LEXICON)
    remote = load_lexicon(f"s3://{bucket}/lex/terms.csv")
    assert remote == load_lexicon(str(tmp_path / "terms.csv"))
    assert [(e.term, e.spoken) for e in remote] == [("kubectl", "cube control")]
    with pytest.raises(ConfigError, match=r"lexicon: s3://audio-bucket/lex/none.csv: S3 NoSuch"):
        load_lexicon(f"s3://{bucket}/lex/none.csv")
    with pytest.raises(ConfigError, match="cannot read it"):
        load_lexicon(str(tmp_path / "none.csv"))


def test_reference_recordings_on_s3_are_read_once_and_fail_their_row(
    bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="voices/ana.wav", Body=b"RIFF-ana")
    s3.put_object(Bucket=bucket, Key="voices/big.wav", Body=b"x" * 101)
    monkeypatch.setattr(voices, "MAX_REFERENCE_BYTES", 100)
    uri = resolve("ana.wav", f"s3://{bucket}/voices/catalog.csv")
    assert uri == f"s3://{bucket}/voices/ana.wav"
    assert resolve(uri, "/data/catalog.csv") == uri  # already a URI: kept as it is
    files = ReferenceFiles()
    assert files.audio(uri) == b"RIFF-ana" and files.audio(uri) == b"RIFF-ana"
    assert files.reads == 1
    with pytest.raises(SourceError, match="a reference of 10-30 s") as big:
        files.audio(f"s3://{bucket}/voices/big.wav")
    with pytest.raises(SourceError, match="NoSuchKey") as missing:
        files.audio(f"s3://{bucket}/voices/none.wav")
    assert not big.value.fatal and not missing.value.fatal  # the row fails, not the run
