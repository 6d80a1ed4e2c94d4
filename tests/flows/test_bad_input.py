"""Bad input, tried: each case with the outcome a user should see.

Row cases put one bad row next to a good one and check the bad row's manifest entry (the good
one must be `ok` regardless). Run cases check the exit status and the one-line message of
`fishflow run`, and that nothing was left half-written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fishflow.cli import main
from fishflow.testing.emulator import Emulator, EmulatorConfig
from tests.flows.helpers import as_text, latest_run, manifest

GOOD = {"id": "good", "text": "A perfectly good row of text."}


@dataclass(frozen=True)
class RowCase:
    name: str
    rows: list[dict[str, Any]] | bytes  # JSONL records, or raw file bytes (with `suffix`)
    status: str  # of the row with source_row `row`
    message: str = ""  # part of the error (failed) or of the text the server got (ok)
    row: int = 1
    suffix: str = "jsonl"


ROW_CASES = [
    RowCase("empty text", [GOOD, {"id": "x", "text": ""}], "failed", "text is empty"),
    RowCase("whitespace-only text", [GOOD, {"id": "x", "text": " \t\n "}], "failed", "empty"),
    RowCase(
        "NUL and control characters",
        [GOOD, {"id": "x", "text": "Bell\x07 and\x00 NUL."}],
        "ok",
        "Bell and NUL.",
    ),
    RowCase(
        "invalid UTF-8 in JSONL",
        b'{"id": "good", "text": "Fine."}\n{"id": "x", "text": "\xff"}\n',
        "failed",
        "not valid UTF-8",
    ),
    RowCase(
        "invalid UTF-8 in CSV",
        b"id,text\ngood,Fine text.\nx,caf\xe9 au lait\n",
        "failed",
        "not valid UTF-8",
        suffix="csv",
    ),
    RowCase("emoji only", [GOOD, {"id": "x", "text": "🎉🚀✨"}], "failed", "no letters"),
    RowCase(
        "mixed scripts",
        [GOOD, {"id": "x", "text": "Tokyo 東京 and Seoul 서울."}],
        "ok",
        "Tokyo 東京 and Seoul 서울.",
    ),
    RowCase("duplicate id", [GOOD, {"id": "good", "text": "Again."}], "failed", "duplicate id"),
    RowCase("missing id", [GOOD, {"text": "No id here."}], "failed", "no id"),
    RowCase("blank id", [GOOD, {"id": "  ", "text": "Blank id."}], "failed", "no id"),
    RowCase(
        "line that is not JSON",
        b'{"id": "good", "text": "Fine."}\n{oops\n',
        "failed",
        "invalid JSON",
    ),
    RowCase(
        "JSON that is not an object",
        b'{"id": "good", "text": "Fine."}\n[1, 2]\n',
        "failed",
        "not a JSON object",
    ),
    RowCase(
        "text is a number",
        [GOOD, {"id": "x", "text": 12345}],
        "ok",
        "twelve thousand three hundred and forty-five",  # said in words
    ),
    RowCase("id with ../", [GOOD, {"id": "../../etc/passwd", "text": "Traversal."}], "ok"),
    RowCase("absolute path id", [GOOD, {"id": "/etc/shadow", "text": "Absolute."}], "ok"),
    RowCase("backslashes in id", [GOOD, {"id": "a\\b\\..\\c", "text": "Windows."}], "ok"),
    RowCase("very long id", [GOOD, {"id": "x" * 3000, "text": "Long id."}], "ok"),
    # An unknown (well-formed) reference_id stops the run, or with --unknown-voice default is
    # spoken in the server's default voice: see the tests after this one.
]


def write_source(tmp_path: Path, rows: list[dict[str, Any]] | bytes, suffix: str) -> Path:
    path = tmp_path / f"catalog.{suffix}"
    if isinstance(rows, bytes):
        path.write_bytes(rows)
    else:
        path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.mark.parametrize("case", ROW_CASES, ids=lambda c: c.name)
def test_bad_rows_become_manifest_rows(
    tmp_path: Path, emulator: Emulator, case: RowCase, capsys
) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "run",
            str(write_source(tmp_path, case.rows, case.suffix)),
            "--out",
            str(out),
            "--server",
            emulator.url,
        ]
    )
    assert code == (2 if case.status == "failed" else 0)
    items = manifest(out, "items", latest_run(out)).set_index("source_row")
    errors = manifest(out, "errors", latest_run(out))
    assert items.loc[0, "status"] == "ok"
    assert items.loc[case.row, "status"] == case.status
    if case.status == "failed":
        error = errors[errors.source_row == case.row].iloc[0]
        assert case.message in error.error_message and error.stage == "source"
        assert not error.retryable
    else:
        uri = Path(as_text(items.loc[case.row, "audio_uri"]))
        assert uri.resolve().is_relative_to((out / "audio").resolve()) and uri.exists()
        assert len(uri.name) < 255
        if case.message:
            assert case.message in emulator.stats["texts"]
    assert "Traceback" not in capsys.readouterr().err


def test_ids_that_collide_after_cleaning_keep_apart(tmp_path: Path, emulator: Emulator) -> None:
    rows = [
        {"id": "a/b", "text": "First."},
        {"id": "a\\b", "text": "Second."},
        {"id": "a b", "text": "Third."},
        {"id": "a_b", "text": "Fourth."},
    ]
    out = tmp_path / "out"
    assert (
        main(
            [
                "run",
                str(write_source(tmp_path, rows, "jsonl")),
                "--out",
                str(out),
                "--server",
                emulator.url,
            ]
        )
        == 0
    )
    items = manifest(out, "items", latest_run(out))
    assert items["audio_uri"].nunique() == 4


def test_unknown_reference_id_is_warned_about_once_when_told_to_go_on(
    tmp_path: Path, caplog
) -> None:
    rows = [
        {"id": f"i{i}", "text": f"Row {i}.", "reference_id": "ghost" if i % 2 else "anna"}
        for i in range(6)
    ]
    with Emulator(EmulatorConfig(reference_ids=("anna",))) as emu:
        out = tmp_path / "out"
        assert (
            main(
                [
                    "run",
                    str(write_source(tmp_path, rows, "jsonl")),
                    "--out",
                    str(out),
                    "--server",
                    emu.url,
                    "--unknown-voice",
                    "default",
                ]
            )
            == 0
        )
    warnings = [r.getMessage() for r in caplog.records if "not among the voices" in r.getMessage()]
    assert len(warnings) == 1 and "ghost" in warnings[0]


def test_a_voice_the_server_does_not_hold_stops_the_run_before_any_request(
    tmp_path: Path, capsys
) -> None:
    rows = [{"id": f"i{i}", "text": f"Row {i} of the catalog."} for i in range(5)]
    with Emulator(EmulatorConfig(reference_ids=("anna", "bob"))) as emu:
        code = main(
            [
                "run",
                str(write_source(tmp_path, rows, "jsonl")),
                "--out",
                str(tmp_path / "out"),
                "--server",
                emu.url,
                "--reference-id",
                "anan",
            ]
        )
        requests = emu.stats["requests"]
    err = capsys.readouterr().err
    assert code == 1
    lines = [line for line in err.splitlines() if "anan" in line]
    assert len(lines) == 1 and "'anna'" in lines[0] and "'bob'" in lines[0], err
    assert "Traceback" not in err
    assert requests == 0  # no /v1/tts request was sent


def _parquet_with_int_text(path: Path) -> None:
    pq.write_table(pa.table({"id": [1, 2], "text": [3, 4]}), path)


RUN_CASES = [
    ("source does not exist", lambda t: t / "nope.csv", [], "no such file"),
    ("empty CSV", lambda t: _file(t / "e.csv", b""), [], "empty"),
    ("empty JSONL", lambda t: _file(t / "e.jsonl", b"\n\n"), [], "empty"),
    ("no id column", lambda t: _file(t / "c.csv", b"sku,text\n1,Hi.\n"), [], "no column 'id'"),
    ("no text column", lambda t: _file(t / "c.csv", b"id,body\n1,Hi.\n"), [], "no column 'text'"),
    (
        "Parquet that is CSV",
        lambda t: _file(t / "c.parquet", b"id,text\n1,Hi\n"),
        [],
        "not a Parquet file",
    ),
    (
        "Parquet text column of ints",
        lambda t: _call(_parquet_with_int_text, t / "p.parquet"),
        [],
        "expected strings",
    ),
    (
        "malformed CSV quoting",
        lambda t: _file(t / "q.csv", b'id,text\n1,"open\n2,x\n'),
        [],
        "not valid CSV",
    ),
    ("unknown extension", lambda t: _file(t / "c.xlsx", b"PK"), [], "unknown source type"),
    ("unwritable output", None, ["--out", "/dev/null/x"], "cannot create output folder"),
]


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _call(fn: Any, path: Path) -> Path:
    fn(path)
    return path


@pytest.mark.parametrize(
    ("name", "make", "extra", "message"), RUN_CASES, ids=[c[0] for c in RUN_CASES]
)
def test_run_level_errors_are_one_clear_line(
    tmp_path: Path, emulator: Emulator, capsys, name, make, extra, message
) -> None:
    source = make(tmp_path) if make else _file(tmp_path / "ok.csv", b"id,text\n1,Fine.\n")
    args = ["run", str(source), "--out", str(tmp_path / "out"), "--server", emulator.url, *extra]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert emulator.stats["requests"] == 0  # refused before any synthesis


def test_disk_full_stops_the_run(
    tmp_path: Path, emulator: Emulator, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _file(
        tmp_path / "c.csv",
        b"id,text\n" + b"".join(f"i{i},Row {i} is here.\n".encode() for i in range(20)),
    )
    real_replace = os.replace

    def full(src: str, dst: str) -> None:
        if "/audio/" in str(dst):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full)
    out = tmp_path / "out"
    assert main(["run", str(source), "--out", str(out), "--server", emulator.url]) == 1
    assert "No space left on device" in capsys.readouterr().err
    items = manifest(out, "items", latest_run(out))
    assert len(items) == 20 and (items["status"] == "failed").all()
    assert emulator.stats["requests"] < 20  # it stopped instead of failing item after item


def test_missing_bucket_is_a_run_level_error(
    aws: None, tmp_path: Path, emulator: Emulator, capsys
) -> None:
    source = _file(tmp_path / "c.csv", b"id,text\n1,Fine.\n")
    assert (
        main(["run", str(source), "--out", "s3://no-such-bucket/x", "--server", emulator.url]) == 1
    )
    assert "no-such-bucket" in capsys.readouterr().err


def test_a_bug_on_one_rows_text_fails_that_row_not_the_run(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the HTML parser's AssertionError on '<![alt' once would have: one row, not the run."""
    import fishflow.items

    real = fishflow.items.speech_blocks

    def fragile(row: Any, *args: Any, **kwargs: Any) -> Any:
        if "boom" in (row.text or ""):
            raise AssertionError("unknown status keyword 'alt ' in marked section")
        return real(row, *args, **kwargs)

    monkeypatch.setattr(fishflow.items, "speech_blocks", fragile)
    rows = [GOOD, {"id": "bad", "text": "A boom here."}, {"id": "later", "text": "Still read."}]
    out = tmp_path / "out"
    path = write_source(tmp_path, rows, "jsonl")
    assert main(["run", str(path), "--out", str(out), "--server", emulator.url]) == 2
    items = manifest(out, "items", latest_run(out)).set_index("item_id")
    assert items.status.to_dict() == {"good": "ok", "bad": "failed", "later": "ok"}
    error = manifest(out, "errors", latest_run(out)).set_index("item_id").loc["bad"]
    assert error.error_message.startswith("internal error reading its text (AssertionError:")
    assert error.stage == "source" and not error.retryable
