"""Whole runs against hostile servers on loopback: each costs its rows, never the run, a secret
or the terminal (tests/hostile.py has the servers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fishflow.cli import main
from fishflow.settings import RetryPolicy
from tests.flows.helpers import latest_run, manifest, run
from tests.hostile import HostileServer

KEY = "sk-SECRET-abcdef123456"


def catalog(tmp_path: Path, ids: list[str]) -> Path:
    path = tmp_path / "c.jsonl"
    rows = [{"id": i, "text": f"Row {n} says hello to everyone."} for n, i in enumerate(ids)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_an_echoed_key_and_escapes_reach_neither_manifests_nor_the_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, caplog
) -> None:
    monkeypatch.setenv("FISHFLOW_API_KEY", KEY)
    ids = ["\x1b[31mred\x1b[0m", "plain"]
    out = tmp_path / "o"
    with HostileServer("echo") as server:
        code = main(["run", str(catalog(tmp_path, ids)), "--out", str(out), "--server", server.url])
        assert server.tts_requests > 0  # the server did answer, with the key in its body
    err = capsys.readouterr().err
    run_id = latest_run(out)
    items, errors = manifest(out, "items", run_id), manifest(out, "errors", run_id)
    assert code == 2 and (items["status"] == "failed").all() and len(items) == 2
    assert errors["retryable"].all() and errors["error_message"].str.contains("HTTP 500").all()
    # The id is printed, escaped: a reader sees what it holds, the terminal is not driven.
    assert "failed: \\x1b[31mred\\x1b[0m" in err
    for text in (err, caplog.text, items.to_csv(), errors.to_csv()):
        assert KEY not in text
    # The manifests keep the id as the source has it (data); what the server said has no escape.
    for text in (err, caplog.text, *items["error"], *errors["error_message"]):
        assert "\x1b" not in text and "\x07" not in text


def test_a_trickling_servers_rows_fail_and_the_run_ends(tmp_path: Path) -> None:
    """A 1 s request timeout and a server sending a byte every 0.1 s: before, no read ever
    timed out and the run never ended."""
    out = tmp_path / "o"
    with HostileServer("trickle", trickle_s=0.1) as server:
        summary = run(
            catalog(tmp_path, ["a", "b"]),
            out,
            [server.url],
            settings_kw={"request_timeout_s": 1.0},
        )
    items = manifest(out, "items", summary.run_id)
    errors = manifest(out, "errors", summary.run_id)
    assert len(items) == 2 and (items["status"] == "failed").all()
    assert errors["retryable"].all()
    assert errors["error_message"].str.contains("trickled").all()
    # Each attempt ends a request timeout after the headers; a row gets max_server_errors of
    # them (3), not max_attempts (6): it fails within about 3 request timeouts.
    assert (errors["attempts"] == RetryPolicy().max_server_errors).all()


def test_a_wav_cut_short_is_never_published(tmp_path: Path) -> None:
    out = tmp_path / "o"
    with HostileServer("short_wav") as server:
        summary = run(catalog(tmp_path, ["a"]), out, [server.url], settings_kw={"max_attempts": 2})
    items = manifest(out, "items", summary.run_id)
    errors = manifest(out, "errors", summary.run_id)
    assert list(items["status"]) == ["failed"] and items["audio_uri"].isna().all()
    assert errors["retryable"].all() and errors["error_message"].str.contains("cut short").all()
    assert not list(out.glob("**/*.wav"))


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


def test_an_endless_body_fails_its_rows_and_memory_stays_bounded(tmp_path: Path) -> None:
    """Before, the client read all of it: 12-17 GB in 70-90 s of an endless body."""
    out = tmp_path / "o"
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM: the peak from here on
    before = _status_kb("VmRSS")
    with HostileServer("endless", endless_bytes=300 << 20) as server:
        summary = run(
            catalog(tmp_path, ["a", "b"]), out, [server.url], settings_kw={"max_attempts": 2}
        )
    growth_mb = (_status_kb("VmHWM") - before) / 1024
    items = manifest(out, "items", summary.run_id)
    errors = manifest(out, "errors", summary.run_id)
    assert len(items) == 2 and (items["status"] == "failed").all()
    assert errors["retryable"].all() and errors["error_message"].str.contains("runs over").all()
    assert growth_mb < 200
