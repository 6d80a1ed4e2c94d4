"""deployments/prefect.yaml names a real flow with parameters it accepts."""

from __future__ import annotations

import inspect
from pathlib import Path

import yaml

from fishflow.settings import RunSettings
from flows.refresh_catalog_audio import refresh_catalog_audio

ROOT = Path(__file__).parents[2]


def test_deployments_point_at_the_flow_with_valid_parameters() -> None:
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    names = {d["name"] for d in spec["deployments"]}
    assert names == {"catalog-audio-manual", "catalog-audio-nightly"}
    accepted = set(inspect.signature(refresh_catalog_audio.fn).parameters)
    for deployment in spec["deployments"]:
        path, func = deployment["entrypoint"].split(":")
        assert (ROOT / path).exists() and func == refresh_catalog_audio.fn.__name__
        params = deployment["parameters"]
        assert set(params) <= accepted and {"source", "out", "servers"} <= set(params)
        RunSettings(**params["settings"])
    nightly = next(d for d in spec["deployments"] if d["name"] == "catalog-audio-nightly")
    assert nightly["schedules"][0]["cron"] == "0 2 * * *"
