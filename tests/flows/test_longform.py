"""Long items, loudness and captions end to end: streamed stitching against the emulator."""

from __future__ import annotations

import itertools
import json
import os
import re
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf

from fishflow.testing.emulator import Emulator, EmulatorConfig
from tests.flows.helpers import manifest, run

PAUSE_S = 0.25


def _long_text(chars: int) -> str:
    """Paragraphs of distinct sentences (distinct chunks: no audio shared between them)."""
    sentences, size, i = [], 0, 0
    while size < chars:
        sentence = f"Sentence {i} of the long book tells the listener one more thing."
        sentences.append(sentence + ("\n\n" if i % 7 == 6 else " "))
        size += len(sentences[-1])
        i += 1
    return "".join(sentences)[:chars].rsplit(".", 1)[0] + "."


def _peak_rss_since_reset() -> tuple[int, int]:
    """(current, peak) resident memory in bytes, the peak counted from the last reset."""
    status = Path("/proc/self/status").read_text()
    kb = {k: int(v.split()[0]) for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(.*)$", status, re.M)}
    return kb["VmRSS"] * 1024, kb["VmHWM"] * 1024


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM starts again from VmRSS


def _cues(vtt: str) -> list[tuple[float, float, list[str]]]:
    def seconds(stamp: str) -> float:
        h, m, s = stamp.split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)

    out = []
    for block in vtt.split("\n\n")[1:]:
        lines = block.strip().splitlines()
        if len(lines) >= 3:
            start, end = lines[1].split(" --> ")
            out.append((seconds(start), seconds(end), lines[2:]))
    return out


# 200,000 characters is about 3.6 hours of emulated speech (a 1.1 GB wav): flat memory is shown
# on it. flac and mp3 encode at ~8 and ~20 ms per audio second here, so their long items are
# 60,000 characters (~65 minutes) and 20,000 (~22 minutes): the suite stays under its budget.
@pytest.mark.parametrize(("fmt", "chars"), [("wav", 200_000), ("flac", 60_000), ("mp3", 20_000)])
def test_a_long_item_streams_to_its_file_with_flat_memory_and_true_offsets(
    tmp_path: Path, fmt: str, chars: int
) -> None:
    text = _long_text(chars)
    source = tmp_path / "book.jsonl"
    source.write_text(json.dumps({"id": "books/long.md", "text": text}))
    out = tmp_path / "out"
    with Emulator(EmulatorConfig(workers=2)) as emu:
        _reset_peak_rss()
        before, _ = _peak_rss_since_reset()
        pauses = {
            f"pause_{kind}_ms": 250 for kind in ("clause", "sentence", "paragraph", "section")
        }
        # Numbers as written: "Sentence 2999" said in words would make a third more audio to
        # stream, and this test is about streaming it, not about what is said.
        settings = {"audio_format": fmt, "normalize": "off", **pauses}
        summary = run(source, out, [emu.url], settings_kw=settings)
        _, peak = _peak_rss_since_reset()
    item = manifest(out, "items", summary.run_id).iloc[0]
    chunks = manifest(out, "chunks", summary.run_id).sort_values("chunk_index")
    assert item.status == "ok" and item.chunk_count == len(chunks) > chars // 500
    assert item.audio_uri == str(out / f"audio/books/long.{fmt}")
    path = Path(item.audio_uri)
    info = sf.info(str(path))
    # Duration: every chunk's audio and a pause at every join, nothing more.
    durations = chunks["duration_s"].to_numpy()
    expected = durations.sum() + PAUSE_S * (len(durations) - 1)
    assert info.frames / info.samplerate == pytest.approx(item.duration_s, abs=0.1)
    assert item.duration_s == pytest.approx(expected, abs=0.001 if fmt != "mp3" else 0.1)
    # Memory does not follow the item: its samples alone are far more than what the run added.
    if chars >= 200_000:
        assert info.frames * 2 > 4 * (peak - before)  # 16-bit samples: 1.1 GB of them
    print(f"{fmt}: peak RSS {peak >> 20} MB, {(peak - before) >> 20} MB over the start")
    assert peak - before < 250 << 20, f"peak RSS grew by {(peak - before) >> 20} MB"
    # Joins: silence for exactly the pause before each chunk (sampled), speech after it.
    starts = np.concatenate(([0.0], np.cumsum(durations[:-1] + PAUSE_S)))
    rate = info.samplerate
    margin = 0.02 if fmt == "mp3" else 0.0005
    with sf.SoundFile(str(path)) as audio:
        for start in starts[1::25]:
            audio.seek(int((start - PAUSE_S + margin) * rate))
            gap = audio.read(int((PAUSE_S - 2 * margin) * rate))
            audio.seek(int((start + 0.05) * rate))
            speech = audio.read(int(0.2 * rate))
            assert np.abs(gap).max() < (0.01 if fmt == "mp3" else 1e-9)
            assert np.abs(speech).max() > 0.05
    # Captions: timed from those offsets, the whole text, at most 2 lines of 42 characters.
    cues = _cues((out / "audio/books/long.vtt").read_text())
    cue_starts = np.array([c[0] for c in cues])
    for start in starts[::25]:
        assert np.abs(cue_starts - start).min() < 0.0015  # a chunk's first cue starts with it
    assert " ".join(" ".join(c[2]) for c in cues).split() == text.split()
    assert all(len(c[2]) <= 2 and max(map(len, c[2])) <= 42 for c in cues)
    assert all(a[1] <= b[0] + 1e-3 for a, b in itertools.pairwise(cues))
    assert cues[-1][1] == pytest.approx(item.duration_s, abs=0.1)
    assert (out / "audio/books/long.srt").exists()
    assert abs(item.loudness_lufs + 16) <= 1.0
    path.unlink()  # a gigabyte: free it now rather than at the end of the session


@pytest.mark.parametrize("level_db", [-30.0, -20.0, -10.0])
def test_items_land_on_the_target_loudness_whatever_the_server_level(
    tmp_path: Path, level_db: float
) -> None:
    source = tmp_path / "c.jsonl"
    rows = [
        {"id": "short", "text": "A short item with a single sentence in it."},
        {"id": "long", "text": _long_text(1500)},
    ]
    source.write_text("\n".join(json.dumps(r) for r in rows))
    with Emulator(EmulatorConfig(level_db=level_db)) as emu:
        summary = run(source, tmp_path / "out", [emu.url])
    items = manifest(tmp_path / "out", "items", summary.run_id)
    meter = pyloudnorm.Meter(44_100)
    for row in items.itertuples():
        data, _ = sf.read(row.audio_uri, dtype="float64")
        assert abs(meter.integrated_loudness(data) + 16) <= 1.0, row.item_id
        assert row.loudness_lufs == pytest.approx(-16, abs=1.0), row.item_id


def test_skipped_items_keep_their_captions_and_files_honour_the_umask(
    tmp_path: Path, emulator: Emulator
) -> None:
    source = tmp_path / "lessons"
    (source / "1-intro").mkdir(parents=True)
    (source / "1-intro/README.md").write_text("# Intro\n\nWelcome to the course. It is short.")
    (source / "2-next.md").write_text("The next lesson. It is short too.")
    out = tmp_path / "out"
    first = manifest(out, "items", run(source, out, [emulator.url]).run_id)
    assert sorted(first["audio_uri"]) == [
        str(out / "audio/1-intro/README.wav"),
        str(out / "audio/2-next.wav"),
    ]
    assert sorted(first["captions_uri"]) == [
        str(out / "audio/1-intro/README.vtt"),
        str(out / "audio/2-next.vtt"),
    ]
    umask = os.umask(0o022)
    os.umask(umask)
    published = [p for p in out.rglob("*") if p.is_file() and ".fishflow" not in p.parts]
    assert {p.stat().st_mode & 0o777 for p in published} == {0o666 & ~umask}
    second = manifest(out, "items", run(source, out, [emulator.url]).run_id)
    assert set(second["status"]) == {"skipped"}
    assert sorted(second["captions_uri"]) == sorted(first["captions_uri"])
    assert all(Path(uri).exists() for uri in second["captions_uri"])
    (out / "audio/2-next.vtt").unlink()  # captions missing: that item is published again
    third = manifest(out, "items", run(source, out, [emulator.url]).run_id)
    assert dict(zip(third["item_id"], third["status"], strict=True)) == {
        "1-intro/README.md": "skipped",
        "2-next.md": "ok",
    }
    assert (out / "audio/2-next.vtt").read_text().startswith("WEBVTT")
