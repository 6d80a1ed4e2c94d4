"""`fishflow run`: exit codes, one-line errors, and secrets kept out of every output."""

from __future__ import annotations

import asyncio
import http.server
import io
import os
import re
import socket
import threading
from pathlib import Path

import pandas as pd
import pytest

from fishflow.cli import main
from fishflow.testing.emulator import Emulator, EmulatorConfig
from tests.flows.helpers import latest_run, manifest, run

GOOD = "id,language,text\na,en,Hello there. This is a good row.\nb,zh,你好，世界。\n"


def catalog(tmp_path: Path, body: str = GOOD) -> str:
    path = tmp_path / "catalog.csv"
    path.write_text(body)
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_exit_0_when_nothing_failed(tmp_path: Path, emulator: Emulator, capsys) -> None:
    code = main(["run", catalog(tmp_path), "--out", str(tmp_path / "o"), "--server", emulator.url])
    out = capsys.readouterr()
    assert code == 0
    assert "2 ok, 0 skipped, 0 failed" in out.out
    assert "manifests:" in out.out and "Traceback" not in out.err
    assert re.search(r"^report: .*/o/manifests/run=[^/]+/report\.html$", out.out, re.M)


def test_exit_2_when_some_items_failed(tmp_path: Path, emulator: Emulator, capsys) -> None:
    body = GOOD + "c,en,\n"
    code = main(
        ["run", catalog(tmp_path, body), "--out", str(tmp_path / "o"), "--server", emulator.url]
    )
    assert code == 2
    out = capsys.readouterr()
    assert "2 ok, 0 skipped, 1 failed" in out.out
    # Which item and why, without opening the errors manifest.
    assert "failed: c (row 2): text is empty" in out.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "missing.csv", "--out", "o"], "no such file"),
        (["run", "{catalog}", "--out", "o", "--id-column", "sku"], "no column 'sku'"),
    ],
)
def test_exit_1_with_one_line_for_run_level_errors(
    tmp_path: Path, emulator: Emulator, capsys, args: list[str], message: str
) -> None:
    args = [a.replace("{catalog}", catalog(tmp_path)) for a in args]
    args = [str(tmp_path / a) if a in ("o", "missing.csv") else a for a in args]
    if "--server" not in args:
        args += ["--server", emulator.url]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("with_a_good_server", [False, True])
def test_a_url_that_is_some_other_web_server_stops_the_run_in_one_line(
    tmp_path: Path, capsys, with_a_good_server: bool
) -> None:
    """An http.server where Fish Speech should be: its 404 for /v1/health says so at once,
    before a request is sent (docs/fish-speech-api.md: every server has /v1/health),
    even beside a good server, which would otherwise see its chunks fail on the wrong one."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # its own lines are not fishflow's
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    with Emulator(EmulatorConfig()) as good:
        servers = ["--server", url] + (["--server", good.url] if with_a_good_server else [])
        try:
            code = main(["run", catalog(tmp_path), "--out", str(tmp_path / "o"), *servers])
        finally:
            server.shutdown()
            server.server_close()
        assert good.stats["requests"] == 0
    err = capsys.readouterr().err
    assert code == 1
    assert f"wrong server URL {url}: it answers, but not as a Fish Speech server" in err
    assert "(GET /v1/health: HTTP 404)" in err and good.url not in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o" / "manifests").exists()  # stopped before anything was written


def test_a_flow_pointed_at_some_other_web_server_stops_before_writing(tmp_path: Path) -> None:
    """A deployment's path (no CLI pre-check): the flow checks /v1/health itself."""
    from fishflow.errors import ConfigError

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "o"
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(ConfigError, match="not as a Fish Speech server"):
            run(catalog(tmp_path), out, [url])
    finally:
        server.shutdown()
        server.server_close()
    assert not out.exists()


def test_servers_down_from_the_start_stop_the_flow_with_a_complete_manifest(
    tmp_path: Path,
) -> None:
    """Called as a flow (a deployment's path, no CLI pre-check): servers that never answered
    stop the run after the short start grace, not the 60 s meant for servers lost mid-run."""
    from fishflow.flows.refresh_catalog_audio import RunFailed

    out = tmp_path / "o"
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RunFailed, match=f"no Fish Speech server answers at {dead}"):
        run(catalog(tmp_path), out, [dead])
    items = manifest(out, "items", latest_run(out))
    assert list(items["status"]) == ["failed", "failed"]
    errors = manifest(out, "errors", latest_run(out))
    assert set(errors["source_row"]) == {0, 1}


def test_a_missing_source_fails_the_flow_before_anything_is_written(tmp_path: Path) -> None:
    from fishflow.errors import SourceError

    out = tmp_path / "o"
    with pytest.raises(SourceError, match="no such file or folder"):
        run(tmp_path / "missing.csv", out, ["http://127.0.0.1:8080"])
    assert not out.exists()


def test_wrong_api_key_stops_early_and_never_shows_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, caplog
) -> None:
    rows = "id,text\n" + "".join(f"i{i},Row number {i} says hello.\n" for i in range(30))
    monkeypatch.setenv("FISHFLOW_API_KEY", "sk-WRONG-0123456789")
    with Emulator(EmulatorConfig(api_key="sk-RIGHT-9876543210")) as emu:
        out = tmp_path / "o"
        code = main(["run", catalog(tmp_path, rows), "--out", str(out), "--server", emu.url])
        requests = emu.stats["requests"]
    err = capsys.readouterr().err
    assert code == 1 and "API key" in err
    assert requests <= 4  # it stopped: not one 401 per item
    items = manifest(out, "items", latest_run(out))
    assert len(items) == 30 and (items["status"] == "failed").all()
    errors = manifest(out, "errors", latest_run(out))
    assert set(errors["source_row"]) == set(range(30))
    for text in (err, caplog.text, items.to_csv(), errors.to_csv()):
        assert "sk-WRONG" not in text and "sk-RIGHT" not in text


def test_secrets_never_reach_logs_manifests_or_artifacts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bucket: str, capsys, caplog
) -> None:
    key = "sk-SECRET-abcdef123456"
    monkeypatch.setenv("FISHFLOW_API_KEY", key)
    body = GOOD + "c,en,\n"
    with Emulator(EmulatorConfig(api_key=key)) as emu:
        code = main(
            ["run", catalog(tmp_path, body), "--out", f"s3://{bucket}/x", "--server", emu.url]
        )
    assert code == 2
    import boto3

    s3 = boto3.client("s3")
    blobs = {
        o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        for o in s3.list_objects_v2(Bucket=bucket, Prefix="x/manifests/")["Contents"]
    }
    artifacts = asyncio.run(_artifact_texts())
    out = capsys.readouterr()
    secrets = [key, "AKIAFAKEFAKEFAKE0001", "fake-secret-never-logged-0001"]
    haystacks = [
        out.out,
        out.err,
        caplog.text,
        *artifacts,
        *(
            pd.read_parquet(io.BytesIO(b)).to_csv() if k.endswith(".parquet") else b.decode()
            for k, b in blobs.items()
        ),
    ]
    assert artifacts and any(k.endswith("/run.json") for k in blobs)
    for secret in secrets:
        assert all(secret not in h for h in haystacks)


async def _artifact_texts() -> list[str]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return [str(a.data) for a in await client.read_artifacts()]


def test_demo_catalog_has_what_the_readme_promises() -> None:
    frame = pd.read_csv(Path(__file__).parents[2] / "examples" / "catalog.csv")
    assert len(frame) >= 12
    assert {"en", "zh", "ja", "de"} <= set(frame["language"].dropna())


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (EmulatorConfig(fail_status=402), "out of credit"),
        (EmulatorConfig(fail_status=403), "API key"),
    ],
)
def test_no_credit_or_forbidden_stops_the_run_early(
    tmp_path: Path, capsys, config, message
) -> None:
    rows = "id,text\n" + "".join(f"i{i},Row number {i} says hello.\n" for i in range(40))
    with Emulator(config) as emu:
        out = tmp_path / "o"
        code = main(["run", catalog(tmp_path, rows), "--out", str(out), "--server", emu.url])
        requests = emu.stats["requests"]
    assert code == 1 and message in capsys.readouterr().err
    assert requests <= 4
    items = manifest(out, "items", latest_run(out))
    assert len(items) == 40 and (items["status"] == "failed").all()


def test_a_request_wide_422_stops_the_run(tmp_path: Path, capsys) -> None:
    """A sampling field the server refuses fails every chunk alike (checked before sending
    too; this is the server's word for it, e.g. an older server with tighter bounds)."""
    from typing import Annotated

    from pydantic import Field

    from fishflow.testing.emulator import ServeTTSRequest

    class Stricter(ServeTTSRequest):
        top_p: Annotated[float, Field(ge=0.1, le=0.5, strict=True)] = 0.5

    rows = "id,text\n" + "".join(f"i{i},Row number {i} says hello.\n" for i in range(30))
    with Emulator(EmulatorConfig(request_model=Stricter)) as emu:
        code = main(
            ["run", catalog(tmp_path, rows), "--out", str(tmp_path / "o"), "--server", emu.url]
        )
        requests = emu.stats["requests"]
    assert code == 1 and "top_p" in capsys.readouterr().err and requests <= 4


def test_server_side_encryption_is_requested(
    bucket: str, emulator: Emulator, tmp_path: Path
) -> None:
    import boto3

    code = main(
        [
            "run",
            catalog(tmp_path),
            "--out",
            f"s3://{bucket}/enc",
            "--server",
            emulator.url,
            "--sse",
            "AES256",
        ]
    )
    assert code == 0
    s3 = boto3.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="enc/audio/")["Contents"]]
    assert keys and all(
        s3.head_object(Bucket=bucket, Key=k)["ServerSideEncryption"] == "AES256" for k in keys
    )


def test_a_successful_run_prints_no_prefect_noise(tmp_path: Path, emulator: Emulator) -> None:
    """What a user sees from `fishflow run` with Prefect's ephemeral API: the summary only."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    # Off a terminal a progress line comes every 30 s (tests/flows/test_hygiene.py), and a
    # slow ephemeral start here can take that long: this test is about Prefect's noise.
    env["FISHFLOW_PROGRESS_INTERVAL_S"] = "3600"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fishflow.cli",
            "run",
            catalog(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--server",
            emulator.url,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("fishflow: 2 ok, 0 skipped, 0 failed")
    assert result.stderr == ""


def fishflow(*args: str, tmp_path: Path, env: dict[str, str] | None = None):
    """`fishflow ARGS` in its own process, as a user runs it: (exit code, stdout, stderr).

    It uses the session's Prefect API (starting an ephemeral one costs 10-40 s here)."""
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    environ = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    environ |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), **(env or {})}
    environ["PREFECT_API_URL"] = PREFECT_API_URL.value()
    result = subprocess.run(
        [sys.executable, "-m", "fishflow.cli", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result.returncode, result.stdout, result.stderr


def _shared_limit(url: str) -> None:
    """Runs against a Prefect API lease each server's shared limit, and say once when there is
    none; these tests are about errors, so the server gets one."""
    from fishflow.tasks.limits import create_limits

    asyncio.run(create_limits({url: 2}))  # (created, kept)


def test_servers_that_refuse_connections_are_one_line_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    out = tmp_path / "o"
    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    code, stdout, stderr = fishflow(
        "run", catalog(tmp_path), "--out", str(out), "--server", dead[0], "--server", dead[1],
        tmp_path=tmp_path,
    )  # fmt: skip
    assert code == 1 and stdout == ""
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("fishflow: error: no Fish Speech server answers")
    assert all(url in stderr for url in dead) and "--server" in stderr
    assert not out.exists()


def test_a_missing_source_is_one_line_and_nothing_is_written(tmp_path: Path) -> None:
    out = tmp_path / "o"
    missing = str(tmp_path / "nope.csv")
    code, _, stderr = fishflow("run", missing, "--out", str(out), tmp_path=tmp_path)
    assert code == 1
    assert stderr == f"fishflow: error: {missing}: no such file or folder\n"
    assert not out.exists()


@pytest.mark.parametrize(
    ("config", "env", "message"),
    [
        (
            EmulatorConfig(api_key="sk-RIGHT-9876543210"),
            {"FISHFLOW_API_KEY": "sk-WRONG-0123456789"},
            "(check the API key: FISHFLOW_API_KEY)",
        ),
        (EmulatorConfig(fail_status=402), {}, "(the account is out of credit)"),
    ],
    ids=["wrong-key", "no-credit"],
)
def test_errors_that_stop_a_run_are_one_line_without_a_traceback(
    tmp_path: Path, config: EmulatorConfig, env: dict[str, str], message: str
) -> None:
    """Prefect's engine logs a failed flow's traceback and final state: not on a user's
    terminal (they still reach the Prefect API)."""
    out = tmp_path / "o"
    with Emulator(config) as emu:
        _shared_limit(emu.url)
        code, stdout, stderr = fishflow(
            "run", catalog(tmp_path), "--out", str(out), "--server", emu.url,
            tmp_path=tmp_path, env=env,
        )  # fmt: skip
    assert code == 1 and stdout == ""
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("fishflow: error: HTTP") and message in stderr
    assert "sk-RIGHT" not in stderr and "sk-WRONG" not in stderr
    assert (manifest(out, "items", latest_run(out))["status"] == "failed").all()


@pytest.mark.parametrize(
    ("args", "prog", "hint"),
    [
        (
            ["run", "c.csv", "--out", "o", "--sever", "http://gpu-1:8080"],
            "fishflow run",
            "--server",
        ),
        (["run", "c.csv", "--out", "o", "--max-inflight", "4"], "fishflow run", "--max-in-flight"),
        (["rn", "c.csv"], "fishflow", "run"),
        (["run", "c.csv", "--out", "o", "--audio-format", "mp4"], "fishflow run", "mp3"),
    ],
)
def test_usage_errors_exit_64_with_the_closest_option(
    capsys, args: list[str], prog: str, hint: str
) -> None:
    assert main(args) == 64  # EX_USAGE; 2 means "some items failed"
    err = capsys.readouterr().err
    assert err.startswith(f"{prog}: error: ") and f"did you mean {hint}?" in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--temperature", "3"], "--temperature: Input should be less than or equal to 1"),
        (["--top-p", "1.5"], "--top-p: Input should be less than or equal to 1"),
        (["--repetition-penalty", "0.5"], "--repetition-penalty: Input should be greater than"),
        (["--server", "ftp://x"], "--server: server URL must start with http:// or https://"),
        (["--server", "http://x#limit=z"], "--server: bad server limit"),
        (["--server", "http://u:s3cret@127.0.0.1:9"], "--server: a server URL must not carry"),
    ],
)
def test_a_bad_flag_value_is_a_usage_error_that_names_the_flag(
    tmp_path: Path, capsys, flags: list[str], message: str
) -> None:
    code = main(["run", catalog(tmp_path), "--out", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err
    assert code == 64  # EX_USAGE, as --help says for a bad value
    assert err.startswith(f"fishflow run: error: {message}") and "RunSettings" not in err
    assert "s3cret" not in err
    assert len(err.splitlines()) == 1


def test_a_reader_that_goes_away_is_not_a_traceback(tmp_path: Path, monkeypatch) -> None:
    """`fishflow plan ... | head -3`: head exits, the next write fails with EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "w", buffering=1) as broken:
        monkeypatch.setattr("sys.stdout", broken)
        assert main(["plan", catalog(tmp_path), "--out", str(tmp_path / "o")]) == 1


def test_version(capsys) -> None:
    import importlib.metadata

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"fishflow {importlib.metadata.version('fishflow')}\n"


def test_help_shows_the_default_server_and_the_exit_status(capsys) -> None:
    for args in (["--help"], ["run", "--help"]):
        assert main(args) == 0
        out = capsys.readouterr().out
        for code in ("0", "1", "2", "64", "130"):
            assert re.search(rf"^ *{code} +[a-z]", out, re.M), code
    assert "(default: http://127.0.0.1:8080)" in " ".join(out.split())


def test_the_console_keeps_fishflows_warnings_and_drops_prefects_own() -> None:
    import logging

    import prefect

    from fishflow.cli.prefect_console import OwnWarningsOnly

    prefect_dir = os.path.dirname(prefect.__file__)
    keep = OwnWarningsOnly(prefect_dir)

    def record(name: str, level: int, path: str) -> logging.LogRecord:
        return logging.LogRecord(name, level, path, 1, "message", None, None)

    ours = str(Path(__file__).parents[2] / "flows" / "refresh_catalog_audio.py")
    engine = os.path.join(prefect_dir, "flow_engine.py")
    assert keep.filter(record("prefect.flow_runs", logging.WARNING, ours))
    assert keep.filter(record("botocore.credentials", logging.WARNING, "/x/botocore/c.py"))
    assert not keep.filter(record("prefect.flow_runs", logging.INFO, ours))
    assert not keep.filter(record("prefect.flow_runs", logging.ERROR, engine))
    events = os.path.join(prefect_dir, "_internal", "concurrency", "services.py")
    assert not keep.filter(record("EventsWorker", logging.WARNING, events))
    assert not keep.filter(record("prefect.server", logging.WARNING, "/x/other.py"))
