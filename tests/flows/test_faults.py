"""Faults: the run ends with every item accounted for and every published file intact."""

from __future__ import annotations

import hashlib
import io
import json
import random
import threading
from pathlib import Path

import boto3
import pandas as pd
import pytest
from botocore.awsrequest import AWSResponse

from fishflow import storage
from fishflow.testing.emulator import Emulator, EmulatorConfig, Faults
from tests.flows.helpers import decode, manifest, run


def catalog(tmp_path: Path, n: int = 60) -> Path:
    path = tmp_path / "c.jsonl"
    rows = [
        {"id": f"i{i}", "text": f"Item {i} says hello. " + "More words follow here. " * (i % 3)}
        for i in range(n)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def check_published(items: pd.DataFrame, read) -> None:
    for row in items.itertuples():
        data = read(row.audio_uri)
        rate, duration, _ = decode(data)
        assert len(data) == row.bytes and hashlib.sha256(data).hexdigest() == row.audio_sha256
        assert rate == 44_100 and duration == pytest.approx(row.duration_s, abs=1e-3)


def test_twenty_percent_server_faults_all_retried_within_budget(tmp_path: Path) -> None:
    """Rows 'What a batch client should do': retry resets, truncation, 429, 5xx; validate audio."""
    faults = Faults(
        error_rate=0.04,
        reset_rate=0.04,
        truncate_rate=0.04,
        busy_rate=0.04,
        short_audio_rate=0.04,
        retry_after_s=0.05,
    )
    with Emulator(EmulatorConfig(workers=2, faults=faults, seed=7)) as emu:
        out = tmp_path / "o"
        summary = run(catalog(tmp_path), out, [emu.url], settings_kw={"max_attempts": 10})
        fault_count = sum(emu.stats["faults"].values())
    items = manifest(out, "items", summary.run_id)
    chunks = manifest(out, "chunks", summary.run_id)
    assert len(items) == 60 and (items["status"] == "ok").all()
    assert fault_count > 10 and chunks["attempts"].sum() == len(chunks) + fault_count
    check_published(items, lambda uri: Path(uri).read_bytes())


def test_a_hung_generation_times_out_and_is_retried(tmp_path: Path) -> None:
    faults = Faults(slow_rate=0.1, slow_s=3.0)
    with Emulator(EmulatorConfig(workers=2, faults=faults, seed=3)) as emu:
        out = tmp_path / "o"
        summary = run(
            catalog(tmp_path, 20),
            out,
            [emu.url],
            settings_kw={"request_timeout_s": 1.0, "max_attempts": 10},
        )
        assert emu.stats["faults"]["slow"] > 0
    errors = manifest(out, "errors", summary.run_id)
    assert summary.ok == 20 and errors.empty
    chunks = manifest(out, "chunks", summary.run_id)
    assert chunks["attempts"].max() > 1


def test_a_server_that_goes_away_and_comes_back(tmp_path: Path) -> None:
    first = Emulator(EmulatorConfig(service_time_s=0.02)).start()
    port = first.port
    back: list[Emulator] = []

    def bounce() -> None:
        first.stop()
        timer = threading.Timer(1.5, lambda: back.append(Emulator(port=port).start()))
        timer.start()

    threading.Timer(0.3, bounce).start()
    try:
        out = tmp_path / "o"
        summary = run(
            catalog(tmp_path, 80),
            out,
            [f"http://127.0.0.1:{port}"],
            settings_kw={"all_down_grace_s": 30},
        )
    finally:
        for emu in back:
            emu.stop()
    items = manifest(out, "items", summary.run_id)
    assert len(items) == 80 and (items["status"] == "ok").all()
    assert back and back[0].stats["requests"] > 0  # the work resumed on the returned server


def test_s3_errors_and_throttling_are_retried_and_objects_are_whole(
    bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rng = random.Random(5)
    injected = []

    def flaky(request, **kwargs):
        if rng.random() < 0.3:
            injected.append(request.url)
            body = (
                b"<Error><Code>SlowDown</Code><Message>Reduce your request rate</Message></Error>"
            )
            return AWSResponse(request.url, 503, {}, _Raw(body))
        return None

    real_client = storage.s3_client

    def client_with_faults():
        client = real_client()
        client.meta.events.register("before-send.s3.PutObject", flaky)
        return client

    monkeypatch.setattr(storage, "s3_client", client_with_faults)
    with Emulator() as emu:
        summary = run(catalog(tmp_path, 30), f"s3://{bucket}/faulty", [emu.url])
    s3 = boto3.client("s3")
    key = f"faulty/manifests/run={summary.run_id}/items.parquet"
    items = pd.read_parquet(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))
    assert len(injected) > 5
    assert len(items) == 30 and (items["status"] == "ok").all()

    def read(uri: str) -> bytes:
        return s3.get_object(Bucket=bucket, Key=uri.split("/", 3)[3])["Body"].read()

    check_published(items, read)


class _Raw(io.BytesIO):
    def stream(self, **kwargs):
        yield self.getvalue()
