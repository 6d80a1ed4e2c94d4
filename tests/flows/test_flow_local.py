"""The catalog flow end to end against the emulator over real sockets, output to a folder."""

from __future__ import annotations

import gc
import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from fishflow.chunking import DEFAULT_CHUNK_BYTES
from fishflow.testing.emulator import Emulator, EmulatorConfig
from tests.flows.helpers import CATALOG_ROWS, as_text, decode, manifest, run


def write_catalog(tmp_path: Path, fmt: str) -> Path:
    frame = pd.DataFrame(CATALOG_ROWS)
    path = tmp_path / f"catalog.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in CATALOG_ROWS) + "\n")
    else:
        frame.to_parquet(path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_every_row_is_accounted_for_and_every_ok_item_is_real_audio(
    tmp_path: Path, emulator: Emulator, fmt: str
) -> None:
    out = tmp_path / "out"
    summary = run(write_catalog(tmp_path, fmt), out, [emulator.url], settings_kw={"batch_size": 3})
    items = manifest(out, "items", summary.run_id)
    errors = manifest(out, "errors", summary.run_id)
    chunks = manifest(out, "chunks", summary.run_id)

    assert sorted(items["source_row"]) == list(range(len(CATALOG_ROWS)))
    assert dict(items["status"].value_counts()) == {"ok": 5, "failed": 3}
    failed = items[items.status == "failed"]
    assert set(failed["source_row"]) == set(errors["source_row"])
    assert set(errors["stage"]) == {"source"}
    assert not errors["retryable"].any()
    reasons = dict(zip(errors["source_row"], errors["error_message"], strict=True))
    assert "empty" in reasons[5] and "duplicate" in reasons[6] and "no id" in reasons[7]

    for row in items[items.status == "ok"].itertuples():
        data = Path(as_text(row.audio_uri)).read_bytes()
        rate, duration, channels = decode(data)
        assert Path(as_text(row.audio_uri)).is_absolute()
        assert (rate, channels) == (44_100, 1)
        assert row.bytes == len(data)
        assert row.audio_sha256 == hashlib.sha256(data).hexdigest()
        assert duration == pytest.approx(row.duration_s, abs=1e-3)
        item_chunks = chunks[chunks.item_id == row.item_id]
        assert len(item_chunks) == row.chunk_count
        # Stitched audio is the chunks plus the pauses between them: each catalog text is
        # one paragraph, so every join is between sentences (300 ms by default).
        assert duration == pytest.approx(
            item_chunks["duration_s"].sum() + 0.3 * (len(item_chunks) - 1), abs=0.01
        )
    assert items[items.item_id == "en-long"]["chunk_count"].max() >= 3
    # The run froze the objects it found for its duration: they must be collectable again.
    assert gc.get_freeze_count() == 0

    stats = emulator.stats
    assert stats["requests"] == stats["ok"] == len(chunks)  # the server rejected nothing
    # No request over the budget, and each ends a sentence.
    assert max(len(t.encode()) for t in stats["texts"]) <= DEFAULT_CHUNK_BYTES
    assert all(t.endswith((".", "。", "!", "?")) for t in stats["texts"])
    assert stats["max_in_flight"] <= 2


def test_second_run_skips_unchanged_items_and_redoes_changed_ones(
    tmp_path: Path, emulator: Emulator
) -> None:
    source = write_catalog(tmp_path, "csv")
    out = tmp_path / "out"
    first = run(source, out, [emulator.url])
    first_items = manifest(out, "items", first.run_id).set_index("source_row")
    emulator.reset_stats()

    second = run(source, out, [emulator.url])
    items = manifest(out, "items", second.run_id)
    assert dict(items["status"].value_counts()) == {"skipped": 5, "failed": 3}
    assert emulator.stats["requests"] == 0
    skipped = items[items.status == "skipped"].set_index("source_row")
    assert (skipped["audio_uri"] == first_items.loc[skipped.index, "audio_uri"]).all()

    rows = [dict(r) for r in CATALOG_ROWS]
    rows[0]["text"] = "A stoneware mug. Now in blue."
    pd.DataFrame(rows).to_csv(source, index=False)
    third = run(source, out, [emulator.url])
    items = manifest(out, "items", third.run_id).set_index("source_row")
    assert items.loc[0, "status"] == "ok"
    assert (items.loc[1:4, "status"] == "skipped").all()

    forced = run(source, out, [emulator.url], force=True)
    assert forced.ok == 5 and forced.skipped == 0


def test_identical_chunks_are_synthesised_once(tmp_path: Path, emulator: Emulator) -> None:
    """In one voice (here the run's seed; without any voice each item has its own seed, and
    so its own audio for the same words), a chunk shared by items is synthesised once."""
    shared = "Free shipping on every order over fifty euros. Returns are free for thirty days."
    rows = [
        {"id": f"p{i}", "text": f"Product {i} is a fine thing to own.\n\n{shared}"}
        for i in range(6)
    ]
    source = tmp_path / "c.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "out"
    summary = run(source, out, [emulator.url], settings_kw={"seed": 11})
    chunks = manifest(out, "chunks", summary.run_id)
    assert summary.ok == 6
    assert emulator.stats["requests"] == chunks["chunk_key"].nunique() == 7
    assert chunks["reused"].sum() == len(chunks) - 7
    assert all(count == 1 for count in emulator.stats["texts"].values())


def test_a_pool_of_servers_shares_the_work_within_each_limit(tmp_path: Path) -> None:
    rows = [{"id": f"i{i}", "text": f"Item number {i} has its own short text."} for i in range(40)]
    source = tmp_path / "c.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in rows))
    config = EmulatorConfig(service_time_s=0.01)
    with Emulator(config) as a, Emulator(EmulatorConfig(service_time_s=0.01)) as b:
        summary = run(source, tmp_path / "out", [a.url, f"{b.url}#limit=3"])
        assert summary.ok == 40
        assert a.stats["requests"] > 5 and b.stats["requests"] > 5
        assert a.stats["max_in_flight"] <= 2 and b.stats["max_in_flight"] <= 3


def test_formats_flac_and_mp3_decode_with_the_manifest_duration(
    tmp_path: Path, emulator: Emulator
) -> None:
    source = write_catalog(tmp_path, "csv")
    for fmt in ("flac", "mp3"):
        out = tmp_path / fmt
        summary = run(source, out, [emulator.url], settings_kw={"audio_format": fmt})
        items = manifest(out, "items", summary.run_id)
        for row in items[items.status == "ok"].itertuples():
            assert as_text(row.audio_uri).endswith("." + fmt)
            rate, duration, _ = decode(Path(as_text(row.audio_uri)).read_bytes())
            assert rate == 44_100
            # MP3 frames pad the end by at most a frame or two.
            assert duration == pytest.approx(row.duration_s, abs=0.08)
