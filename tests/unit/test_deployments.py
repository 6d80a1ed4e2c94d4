"""deployments/prefect.yaml names real flows by module, with parameters they accept, no path."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

from fishflow.flows.refresh_catalog_audio import refresh_catalog_audio
from fishflow.flows.retry_errors import retry_errors
from fishflow.settings import RunSettings
from fishflow.tasks.deploy import crash_automation, module_flow, server_limits
from fishflow.tasks.prefect_run import DeploymentContext

ROOT = Path(__file__).parents[2]
SPEC = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
FLOWS = {f.fn.__name__: f for f in (refresh_catalog_audio, retry_errors)}


def test_every_deployment_points_at_a_flow_with_parameters_it_accepts() -> None:
    names = {d["name"] for d in SPEC["deployments"]}
    assert names == {"catalog-nightly", "course-weekly", "catalog-manual", "retry-errors"}
    for deployment in SPEC["deployments"]:
        flow = module_flow(deployment["entrypoint"])  # imported, as a worker imports it
        assert flow is FLOWS[flow.fn.__name__]
        accepted = set(inspect.signature(flow.fn).parameters)
        params = deployment["parameters"]
        assert set(params) <= accepted and "out" in params
        # A worker runs the flow in a temporary folder: a relative path would land there.
        for key in ("source", "out"):
            assert key not in params or "://" in params[key] or Path(params[key]).is_absolute()
        RunSettings(**params.get("settings", {}))
        assert "fishflow" in deployment["tags"]  # what the crashed-run automation matches


def test_schedules_have_a_timezone_and_no_step_pins_a_path() -> None:
    by_name = {d["name"]: d for d in SPEC["deployments"]}
    assert by_name["catalog-nightly"]["schedules"] == [
        {"cron": "0 2 * * *", "timezone": "Europe/Berlin", "active": True}
    ]
    assert by_name["course-weekly"]["schedules"][0]["cron"] == "0 3 * * 0"
    assert "schedules" not in by_name["catalog-manual"]
    # A fixed set_working_directory crashed every run on machines without that path; with no
    # `pull` at all, `prefect deploy` records the folder it runs in. `[]` is no step at all.
    assert SPEC["pull"] == [] and all("pull" not in d for d in SPEC["deployments"])


def test_an_entrypoint_must_be_a_module_of_fishflow() -> None:
    """A file path would be recorded relative to the deploying machine's checkout."""
    for entrypoint in (
        "flows/retry_errors.py:retry_errors",
        "fishflow.flows.retry_errors:retry_errors",
        "retry_errors.retry_errors",
    ):
        with pytest.raises(ValueError, match="module path"):
            module_flow(entrypoint)


def test_run_settings_merge_into_the_deployments_own() -> None:
    deployment = DeploymentContext(
        "catalog-nightly", "refresh-catalog-audio", {"settings": {"audio_format": "mp3"}}
    )
    merged = deployment.merged_settings(RunSettings(batch_size=10))
    assert (merged.audio_format, merged.batch_size) == ("mp3", 10)
    # A field the run sets explicitly wins, even when it equals the default.
    assert deployment.merged_settings(RunSettings(audio_format="wav")).audio_format == "wav"
    assert deployment.merged_settings(None).audio_format == "mp3"


def test_limits_cover_every_server_the_deployments_name() -> None:
    limits = server_limits(SPEC["deployments"], None)
    assert limits == {"http://fish-gpu-1:8080": 2, "http://fish-gpu-2:8080": 2}
    assert server_limits(SPEC["deployments"], ["http://gpu-9:8080#limit=6"]) == {
        "http://gpu-9:8080": 6
    }


def test_parameters_are_described_for_the_prefect_ui() -> None:
    schema = refresh_catalog_audio.parameters.model_dump()["properties"]
    assert all(p.get("description") for p in schema.values())
    assert schema["shards"]["type"] == "integer"


def test_the_crash_automation_waits_three_heartbeats() -> None:
    automation = crash_automation(30)
    assert automation.trigger.within.total_seconds() == 90  # type: ignore[union-attr]


def test_fishflow_deploy_reads_the_files_that_ship_in_the_package() -> None:
    """`fishflow deploy` from an install has no checkout to read deployments/ from: the package
    holds the same files (fishflow/deployments links to them here; the wheel copies them)."""
    from fishflow.tasks.deploy import AUTOMATION_FILE, PREFECT_FILE

    for shipped in (PREFECT_FILE, AUTOMATION_FILE):
        assert shipped.read_bytes() == (ROOT / "deployments" / shipped.name).read_bytes()
        assert shipped.parent.parent.name == "fishflow"
