"""Shared fixtures. A developer's shell never leaks into a test: AWS, Prefect and fishflow
variables are cleared before anything imports Prefect."""

from __future__ import annotations

import os
import tempfile

for _name in list(os.environ):
    if _name.startswith(("AWS_", "PREFECT_", "FISHFLOW_")):
        del os.environ[_name]
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
# Prefect's home (its local result storage, profiles) of this test process alone: never the
# developer's, and never shared by the processes `make test` runs side by side.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="fishflow-tests-prefect-")
os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"

from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402

from fishflow.testing.emulator import Emulator, EmulatorConfig  # noqa: E402


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """A Fish Speech emulator on a free 127.0.0.1 port, one serial worker."""
    with Emulator(EmulatorConfig(workers=1)) as emu:
        yield emu


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto's S3 with fake credentials (AWS_* were cleared above)."""
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEFAKEFAKE0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret-never-logged-0001")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        yield


@pytest.fixture
def bucket(aws: None) -> str:
    import boto3

    boto3.client("s3").create_bucket(Bucket="audio-bucket")
    return "audio-bucket"


@pytest.fixture(autouse=True)
def _local_state_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """S3 outputs keep journals and chunk audio under XDG_CACHE_HOME: never the developer's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
