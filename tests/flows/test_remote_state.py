"""An S3 output holds its run's state: a fresh machine picks up where another one stopped.

The killed run is a `fishflow` process, so S3 is moto's server mode on 127.0.0.1 (the
in-process mock cannot be shared with another process), reached through AWS_ENDPOINT_URL.
"Another machine" is a process with a new, empty HOME and XDG_CACHE_HOME; the killed run's
HOME is deleted before it starts.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import boto3
import pandas as pd
import pytest

from fishflow.cli import main
from fishflow.manifest import read_remote
from fishflow.storage import open_store
from fishflow.testing.emulator import Emulator, EmulatorConfig
from tests.flows.helpers import run
from tests.flows.test_resume import fishflow, wait_for_requests

PARAGRAPHS = [
    f"Paragraph {i} of the lesson explains one idea in enough words to fill it." for i in range(5)
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's S3 as a server on 127.0.0.1, with a bucket; returns the bucket."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEFAKEFAKE0002")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret-never-logged-0002")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    boto3.client("s3").create_bucket(Bucket="state-bucket")
    try:
        yield "state-bucket"
    finally:
        server.stop()


def machine(tmp_path: Path, name: str) -> dict[str, str]:
    """The environment of a fresh machine: its own empty HOME and cache."""
    home = tmp_path / name
    home.mkdir()
    return {
        **os.environ,
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
    }


def catalog(tmp_path: Path) -> tuple[Path, int]:
    """24 one-chunk items and 4 five-chunk lessons (at --chunk-bytes 100): 44 requests."""
    rows = [{"id": f"i{i:02d}", "text": f"Item {i} has a sentence of its own."} for i in range(24)]
    for n, at in enumerate((3, 10, 17, 24)):
        text = "\n\n".join(f"Lesson {n}. {p}" for p in PARAGRAPHS)
        rows.insert(at, {"id": f"lesson-{n}", "text": text})
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path, len(rows)


def held_results(bucket: str, prefix: str, run_id: str) -> int:
    """Requests whose audio the output holds: chunk objects, plus one-chunk items on record
    (in a manifest part or a journal segment)."""
    s3 = boto3.client("s3")
    listing = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    keys = [o["Key"] for page in listing for o in page.get("Contents", [])]
    chunks = sum(1 for k in keys if "/.fishflow/chunks/" in k)
    rows = {
        e[0].source_row
        for e in read_remote(open_store(f"s3://{bucket}/{prefix}"), run_id)
        if e[0].status == "ok" and e[0].chunk_count == 1
    }
    for key in (k for k in keys if "/parts/items-" in k):
        part = pd.read_parquet(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))
        rows |= set(part.query("status == 'ok' and chunk_count == 1")["source_row"])
    return chunks + len(rows)


def test_killed_run_redone_on_a_fresh_machine_resends_only_what_was_in_flight(
    s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, total = catalog(tmp_path)
    out = f"s3://{s3_server}/tts"
    args = ["--out", out, "--quiet", "--chunk-bytes", "100", "--batch-size", "6"]
    first_machine = machine(tmp_path, "first")
    with Emulator(EmulatorConfig(service_time_s=0.03)) as emu:
        proc = fishflow(
            "run", str(source), *args, "--server", emu.url, "--run-id", "killed", env=first_machine
        )
        wait_for_requests(emu, 20, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = Counter(emu.stats["texts"])
        sent = emu.stats["requests"]
        in_flight = sent - held_results(s3_server, "tts", "killed")
        shutil.rmtree(first_machine["HOME"])  # nothing of the first machine survives

        # The second machine: this process, with a new HOME and cache.
        second = machine(tmp_path, "second")
        monkeypatch.setenv("HOME", second["HOME"])
        monkeypatch.setenv("XDG_CACHE_HOME", second["XDG_CACHE_HOME"])
        assert main(["run", str(source), *args, "--server", emu.url]) == 0
        after = Counter(emu.stats["texts"]) - before
    resent = sum(min(n, before[text]) for text, n in after.items())
    assert sent >= 20 and resent <= in_flight <= 8, (sent, in_flight, resent)
    # The rest, each chunk once (a request cut off by the kill never reached `texts`).
    assert sum(after.values()) == 44 - len(before) + resent
    s3 = boto3.client("s3")
    listing = s3.list_objects_v2(Bucket=s3_server, Prefix="tts/manifests/")["Contents"]
    rerun = next(o["Key"] for o in listing if o["Key"].endswith("/items.parquet"))
    items = pd.read_parquet(io.BytesIO(s3.get_object(Bucket=s3_server, Key=rerun)["Body"].read()))
    assert sorted(items["source_row"]) == list(range(total))
    assert (items["status"] != "failed").all() and (items["status"] == "skipped").any()


def test_one_edited_sentence_from_a_fresh_machine_is_one_request(
    bucket: str, emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, out = tmp_path / "c.jsonl", f"s3://{bucket}/tts"
    paragraphs = list(PARAGRAPHS)
    settings = {"chunk_bytes": 100}

    def write_source() -> None:
        source.write_text(json.dumps({"id": "lesson", "text": "\n\n".join(paragraphs)}))

    write_source()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-1"))
    assert run(source, out, [emulator.url], settings_kw=settings).ok == 1
    assert emulator.stats["requests"] == 5

    paragraphs[2] = "Paragraph two now says something else entirely, in new words."
    write_source()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-2"))
    emulator.reset_stats()
    summary = run(source, out, [emulator.url], settings_kw=settings)
    assert summary.ok == 1 and emulator.stats["texts"] == {paragraphs[2]: 1}


def test_state_in_output_can_be_turned_off(
    bucket: str, emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "c.jsonl"
    source.write_text(json.dumps({"id": "lesson", "text": "\n\n".join(PARAGRAPHS)}))
    settings = {"chunk_bytes": 100, "state_in_output": False}
    assert run(source, f"s3://{bucket}/off", [emulator.url], settings_kw=settings).ok == 1
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket)["Contents"]]
    # No run state (journal, chunk audio) in the output; the output's lock stays, as for any run.
    state = [k for k in keys if "/.fishflow/" in k and not k.endswith("/.fishflow/lock")]
    assert keys and not state
    # The local cache still works as before: the same machine reuses every chunk.
    emulator.reset_stats()
    summary = run(source, f"s3://{bucket}/off", [emulator.url], settings_kw=settings, force=True)
    assert summary.ok == 1 and emulator.stats["requests"] == 0
