"""`fishflow run`: exit codes, one-line errors, and secrets kept out of every output."""

from __future__ import annotations

import asyncio
import io
import os
import socket
from pathlib import Path

import pandas as pd
import pytest

from fishflow.cli import main
from fishflow.emulator import Emulator, EmulatorConfig
from tests.flows.helpers import latest_run, manifest

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


def test_exit_2_when_some_items_failed(tmp_path: Path, emulator: Emulator, capsys) -> None:
    body = GOOD + "c,en,\n"
    code = main(
        ["run", catalog(tmp_path, body), "--out", str(tmp_path / "o"), "--server", emulator.url]
    )
    assert code == 2
    assert "2 ok, 0 skipped, 1 failed" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "missing.csv", "--out", "o"], "no such file"),
        (["run", "{catalog}", "--out", "o", "--server", "ftp://x"], "http://"),
        (["run", "{catalog}", "--out", "o", "--temperature", "3"], "temperature"),
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


def test_unreachable_server_stops_the_run_with_a_complete_manifest(tmp_path: Path, capsys) -> None:
    out = tmp_path / "o"
    code = main(
        [
            "run",
            catalog(tmp_path),
            "--out",
            str(out),
            "--all-down-grace-s",
            "1",
            "--server",
            f"http://127.0.0.1:{free_port()}",
        ]
    )
    assert code == 1
    assert "no Fish Speech server answered" in capsys.readouterr().err
    items = manifest(out, "items", latest_run(out))
    assert list(items["status"]) == ["failed", "failed"]
    errors = manifest(out, "errors", latest_run(out))
    assert set(errors["source_row"]) == {0, 1}


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


def test_a_request_wide_422_stops_the_run(tmp_path: Path, capsys, monkeypatch) -> None:
    """A sampling field the server refuses fails every chunk alike (checked before sending
    too; this is the server's word for it, e.g. an older server with tighter bounds)."""
    from fishflow import emulator as emulator_module

    real = emulator_module.validate_tts

    def stricter(body):
        req = real(body)
        if req["top_p"] > 0.5:
            raise emulator_module._Validation(
                [
                    {
                        "type": "less_than_equal",
                        "loc": ["body", "top_p"],
                        "msg": "Input should be <= 0.5",
                        "input": 0.8,
                    }
                ]
            )
        return req

    monkeypatch.setattr(emulator_module, "validate_tts", stricter)
    rows = "id,text\n" + "".join(f"i{i},Row number {i} says hello.\n" for i in range(30))
    with Emulator() as emu:
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
