"""Voices and chunks against the emulator in its real-server mode (issue 10, parts 1 and 2).

Protocol facts cited are rows of "Measured against the authors' own server code" in
docs/fish-speech-api.md.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from fishflow.cli import main
from fishflow.testing.emulator import Emulator, EmulatorConfig, speech_duration_s
from tests.flows.helpers import as_text, flow_run_messages, latest_run, manifest, run, spoken

LONG = [
    " ".join(
        f"Item {n}, sentence {i}: the long lesson explains one more idea, slowly and in detail."
        for i in range(8)
    )
    for n in range(4)
]
CJK = "".join(f"这款绿茶产自杭州，香气清高，口感鲜爽，每罐{n}百克。" for n in "一二三四")


def jsonl(tmp_path: Path, rows: list[dict[str, Any]], name: str = "catalog.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def long_rows() -> list[dict[str, Any]]:
    rows = [{"id": f"long-{n}", "text": text} for n, text in enumerate(LONG)]
    return [*rows, {"id": "zh", "language": "zh", "text": CJK}]


def assert_whole(out: Path, rows: list[dict[str, Any]]) -> None:
    """Every item ok, and as long as its whole text takes to speak (not cut anywhere)."""
    items = manifest(out, "items", latest_run(out)).set_index("item_id")
    assert (items["status"] == "ok").all(), items["error"].dropna().tolist()
    for row in rows:
        speech = speech_duration_s(spoken(row["text"], row.get("language") or "en"))
        # the emulator's speech plus pauses between chunks; cut speech would be far shorter
        duration = items.loc[row["id"], "duration_s"]
        assert 0.95 * speech <= duration <= speech + 0.25 * items.loc[row["id"], "chunk_count"] * 2


def item_of(text: str, rows: list[dict[str, Any]]) -> str:
    [owner] = [r["id"] for r in rows if text in spoken(r["text"], r.get("language") or "en")]
    return owner


def test_a_bad_run_wide_reference_id_stops_before_any_request(
    tmp_path: Path, emulator: Emulator, capsys
) -> None:
    """Row 'reference_id is validated, as a 500': `narrator.v2` would fail every request, so
    the run refuses it at once, in one line: a usage error (exit 64), naming the flag."""
    source = jsonl(tmp_path, [{"id": "a", "text": "Hello there."}])
    args = ["--out", str(tmp_path / "o"), "--server", emulator.url]
    code = main(["run", str(source), *args, "--reference-id", "narrator.v2"])
    err = capsys.readouterr().err
    assert code == 64 and len(err.strip().splitlines()) == 1
    assert "--reference-id: reference_id 'narrator.v2'" in err and "Traceback" not in err
    assert emulator.stats["requests"] == 0


def test_a_bad_per_row_reference_id_fails_its_row_at_validation(
    tmp_path: Path, emulator: Emulator
) -> None:
    """Row 'reference_id is validated, as a 500': the row fails with the reason, unsent."""
    rows = [
        {"id": "good", "text": "A good row.", "reference_id": "anna"},
        {"id": "bad", "text": "A row with a dotted voice.", "reference_id": "narrator.v2"},
    ]
    out = tmp_path / "o"
    # The shared emulator holds no voice: go on in its default one (else the run stops).
    settings = {"unknown_voice": "default"}
    summary = run(jsonl(tmp_path, rows), out, [emulator.url], settings_kw=settings)
    assert (summary.ok, summary.failed) == (1, 1)
    items = manifest(out, "items", summary.run_id).set_index("item_id")
    assert "'narrator.v2' is not an id Fish Speech servers accept" in as_text(
        items.loc["bad", "error"]
    )
    errors = manifest(out, "errors", summary.run_id)
    assert list(errors["stage"]) == ["source"] and list(errors["item_id"]) == ["bad"]
    assert all(r["reference_id"] != "narrator.v2" for r in emulator.received)


def test_a_refused_voice_is_given_up_after_a_handful_of_requests(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Row 'reference_id is validated, as a 500 ... treat the same 500 on every chunk of one
    voice as that voice's problem': a voice whose stored recording the server cannot load
    answers the bare 500 every time. Its 20 items fail naming it; the other voice carries on."""
    rows = [
        {"id": f"b{i}", "text": f"Row {i} is spoken in a broken voice.", "reference_id": "broken"}
        for i in range(20)
    ] + [{"id": f"a{i}", "text": f"Row {i} is fine.", "reference_id": "anna"} for i in range(5)]
    with Emulator(EmulatorConfig(reference_ids=("anna",))) as emu:
        added = httpx.post(
            f"{emu.url}/v1/references/add",
            data={"id": "broken", "text": "Hello."},
            files={"audio": ("sample.wav", b"not audio at all")},
        )
        assert added.status_code == 200  # the server stores what it is given
        out = tmp_path / "o"
        with caplog.at_level(logging.WARNING):
            summary = run(jsonl(tmp_path, rows), out, [emu.url])
        broken = [r for r in emu.received if r["reference_id"] == "broken"]
    assert (summary.ok, summary.failed) == (5, 20)
    assert len(broken) <= 8  # a handful, not 3 attempts for each of 20 chunks
    items = manifest(out, "items", summary.run_id).set_index("item_id")
    failed = items[items["status"] == "failed"]
    assert set(failed.index) == {f"b{i}" for i in range(20)}
    assert failed["error"].str.contains("voice 'broken' given up").all()
    said = [r.getMessage() for r in caplog.records if "given up" in r.getMessage()]
    assert len(said) == 1 and "'broken'" in said[0]


def test_chunks_fit_max_new_tokens_and_every_item_is_whole(
    tmp_path: Path, emulator: Emulator
) -> None:
    """Row 'max_new_tokens caps each generation (about 21.5 tokens per audio second)': with
    --max-new-tokens 200 (9.3 s) chunks are sized so that none is cut."""
    rows = long_rows()
    out = tmp_path / "o"
    summary = run(jsonl(tmp_path, rows), out, [emulator.url], settings_kw={"max_new_tokens": 200})
    assert_whole(out, rows)
    chunks = manifest(out, "chunks", summary.run_id)
    assert emulator.stats["capped"] == 0
    assert len(chunks) > len(rows)
    # one request per chunk made (a clause an item repeats is made once and reused)
    assert emulator.stats["requests"] == (~chunks["reused"]).sum() > len(rows)


def test_chunks_cut_at_the_token_cap_are_split_and_every_item_is_whole(tmp_path: Path) -> None:
    """Row 'a client should ... split and re-send a chunk whose audio ends at the cap': a
    voice that speaks three times slower than expected overruns the cap; the cut chunks are
    split at a clause boundary and their parts sent, not retried whole."""
    rows = long_rows()
    with Emulator(EmulatorConfig(speech_slowdown=3.0)) as emu:
        out = tmp_path / "o"
        summary = run(jsonl(tmp_path, rows), out, [emu.url], settings_kw={"max_new_tokens": 200})
        stats, received = emu.stats, emu.received
    items = manifest(out, "items", summary.run_id).set_index("item_id")
    assert (items["status"] == "ok").all(), items["error"].dropna().tolist()
    for row in rows:  # each item as long as its whole text takes this voice
        speech = 3.0 * speech_duration_s(spoken(row["text"], row.get("language") or "en"))
        assert items.loc[row["id"], "duration_s"] >= 0.95 * speech
    assert stats["capped"] > 0
    # each cut answer costs its halves, and no request was repeated whole
    assert stats["requests"] <= len(manifest(out, "chunks", summary.run_id)) + 3 * stats["capped"]
    sent = collections.Counter((r["text"], r["seed"]) for r in received)
    assert max(sent.values()) == 1


def test_a_server_text_length_limit_still_gives_whole_items(tmp_path: Path) -> None:
    """Row '--max-text-length N counts characters ... A client that learns N from that answer
    can re-chunk below it': a server started with --max-text-length 120."""
    rows = long_rows()
    with Emulator(EmulatorConfig(max_text_length=120)) as emu:
        out = tmp_path / "o"
        run(jsonl(tmp_path, rows), out, [emu.url], settings_kw={"chunk_bytes": 400})
        stats, received = emu.stats, emu.received
    assert_whole(out, rows)
    refused = [r for r in received if len(r["text"]) > 120]
    assert refused  # it had to learn the limit from the server...
    assert len(refused) <= 4  # ...once per request in flight, not once per chunk
    assert stats["ok"] == len(received) - len(refused)


def test_inline_references_round_trip_and_are_in_the_content_key(
    tmp_path: Path, emulator: Emulator
) -> None:
    """Per-row `reference_audio` (relative to the catalog) and `reference_text` columns go as
    `references` [{audio, text}] without a reference_id; the recording is part of the item's
    content key, so changing it redoes the item."""
    voices = tmp_path / "voices"
    voices.mkdir()
    wav = voices / "anna.wav"
    sf.write(wav, (0.3 * np.sin(np.arange(44_100) / 7)).astype(np.float32), 44_100)
    rows = [
        {
            "id": f"r{i}",
            "text": f"Row {i} in Anna's voice.",
            "reference_audio": "voices/anna.wav",
            "reference_text": "Hello, I am Anna.",
        }
        for i in range(3)
    ] + [
        {
            "id": "lost",
            "text": "No file.",
            "reference_audio": "voices/x.wav",
            "reference_text": "x",
        },
        {"id": "untold", "text": "No transcript.", "reference_audio": "voices/anna.wav"},
    ]
    source = jsonl(tmp_path, rows)
    out = tmp_path / "o"
    first = run(source, out, [emulator.url], settings_kw={"reference_id": "narrator"})
    assert (first.ok, first.failed) == (3, 2)
    digest = hashlib.sha256(wav.read_bytes()).hexdigest()
    assert len(emulator.received) == 3
    for request in emulator.received:
        assert request["reference_id"] is None  # the server would use an id instead
        assert request["references"] == [{"audio_sha256": digest, "text": "Hello, I am Anna."}]
    items = manifest(out, "items", first.run_id).set_index("item_id")
    assert "no such file" in as_text(items.loc["lost", "error"])
    assert "transcript in reference_text" in as_text(items.loc["untold", "error"])

    again = run(source, out, [emulator.url], settings_kw={"reference_id": "narrator"})
    assert again.skipped == 3
    sf.write(wav, (0.3 * np.sin(np.arange(44_100) / 9)).astype(np.float32), 44_100)
    changed = run(source, out, [emulator.url], settings_kw={"reference_id": "narrator"})
    assert changed.ok == 3 and changed.skipped == 0


def test_all_chunks_of_an_item_without_a_voice_share_one_seed(
    tmp_path: Path, emulator: Emulator
) -> None:
    """Without a reference, the voice comes from the seed (row 'seed' of the request table):
    every chunk of an item carries the item's seed, items differ, and the run says so once."""
    rows = long_rows()
    # A handler of our own on the flow-run logger: pytest's caplog handler lives for the
    # session and an earlier CLI test may have given it fishflow's console filter (warnings
    # only).
    with flow_run_messages() as said:
        run(jsonl(tmp_path, rows), tmp_path / "o", [emulator.url])
    seeds: dict[str, set[int | None]] = {}
    for request in emulator.received:
        seeds.setdefault(item_of(request["text"], rows), set()).add(request["seed"])
    assert set(seeds) == {r["id"] for r in rows}
    assert all(len(s) == 1 and None not in s for s in seeds.values())
    assert len({next(iter(s)) for s in seeds.values()}) == len(rows)
    assert len([m for m in said if "pins one per item" in m]) == 1

    before = len(emulator.received)
    run(jsonl(tmp_path, rows), tmp_path / "o2", [emulator.url], settings_kw={"seed": 7})
    assert {r["seed"] for r in emulator.received[before:]} == {7}


def test_voices_command_lists_adds_and_deletes(tmp_path: Path, emulator: Emulator, capsys) -> None:
    """`fishflow voices` over /v1/references/* (row '/v1/references/list answers ...')."""
    wav = tmp_path / "anna.wav"
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(np.arange(22_050) / 7)).astype(np.float32), 44_100, format="WAV")
    wav.write_bytes(buf.getvalue())
    server = ["--server", emulator.url]
    assert (
        main(["voices", "add", "anna", "--audio", str(wav), "--text", "Hi, I am Anna.", *server])
        == 0
    )
    assert main(["voices", "list", *server]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "anna"
    assert emulator.reference_ids == ["anna"]
    assert main(["voices", "add", "anna", "--audio", str(wav), "--text", "Again.", *server]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["voices", "delete", "bob", *server]) == 1
    err = capsys.readouterr().err
    assert "not found" in err and len(err.strip().splitlines()) == 1
    assert main(["voices", "delete", "anna", *server]) == 0
    assert emulator.reference_ids == []
