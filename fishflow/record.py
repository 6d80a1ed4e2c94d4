"""What a run was asked to do, kept beside its manifests (`run.json`) so that `resume` and
`retry-errors` can do it again, and what a run reports when it ends.

One typed record, written in one place: its source is always masked (a database URL's
password never reaches the output), and it holds no API key (the key is never a parameter).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fishflow.database import mask
from fishflow.errors import ConfigError, StorageError
from fishflow.manifest import run_prefix
from fishflow.settings import RunSettings
from fishflow.storage import Store


class RunRequest(BaseModel):
    """What a run does: the flow's parameters, once resolved (settings merged, source checked)."""

    model_config = ConfigDict(frozen=True, extra="ignore")  # older records: fields since dropped

    run_id: str
    source: str  # as shown and recorded: masked, or the env:/secret: reference
    out: str
    servers: list[str]
    settings: RunSettings = Field(default_factory=RunSettings)
    force: bool = False
    prune: bool = False
    only_rows: list[int] | None = None  # a retry of some rows
    api_key_secret: str | None = None
    shard: int | None = None  # the partition a child of a sharded run handles
    shards: int = 1
    parent_run_id: str | None = None

    @field_validator("source")
    @classmethod
    def _masked(cls, source: str) -> str:
        return mask(source)

    @property
    def whole(self) -> bool:
        """Whether the run reads the whole source (not one shard, not a retry of some rows):
        only then is the source's size its total, and what is missing from it gone."""
        return self.only_rows is None and self.shard is None

    @property
    def sharded_parent(self) -> bool:
        return self.shards > 1 and self.shard is None


class ShardRun(BaseModel):
    """One child of a sharded run, as the parent saw it end."""

    shard: int
    run_id: str
    flow_run_id: str
    state: str
    runs: int  # flow runs it took (a crashed child is run again)


class RunRecord(RunRequest):
    """`run.json`: the request, and when and where it ran."""

    flow_run_id: str | None = None
    started_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None
    shard_runs: list[ShardRun] = Field(default_factory=list)


def run_record_key(run_id: str) -> str:
    return f"{run_prefix(run_id)}/run.json"


def write_run_record(store: Store, record: RunRecord) -> None:
    store.put(
        run_record_key(record.run_id),
        record.model_dump_json(indent=2).encode(),
        "application/json",
        {},
    )


def run_record_exists(store: Store, run_id: str) -> bool:
    return run_record_key(run_id) in store.list(run_prefix(run_id) + "/")


def read_run_record(store: Store, run_id: str) -> RunRecord:
    try:
        data = json.loads(store.get(run_record_key(run_id)))
    except (FileNotFoundError, StorageError) as exc:
        raise ConfigError(f"no run {run_id} in {store.root} (no {run_record_key(run_id)})") from exc
    return RunRecord.model_validate({"run_id": run_id, **data})


def latest_run_id(store: Store) -> str:
    """The run that started last (by its run record), whatever its id looks like. The shards
    of a sharded run start after it but are parts of it, not runs of their own."""
    started: dict[str, str] = {}
    for key in store.list("manifests/"):
        if key.endswith("/run.json"):
            data = json.loads(store.get(key))
            if not data.get("parent_run_id"):
                started[key] = str(data.get("started_at", ""))
    if not started:
        raise ConfigError(f"no fishflow runs in {store.root}")
    newest = max(started, key=lambda k: (started[k], k))
    return newest.split("/")[1].removeprefix("run=")


class Failure(BaseModel):
    """One failed item, as a summary names it (the errors manifest has them all)."""

    item_id: str | None
    source_row: int
    error: str


class RunSummary(BaseModel):
    """What a run returns (the flow's result, what the CLI prints and exits by, the artifact)."""

    model_config = ConfigDict(frozen=True)

    run_id: str | None  # None: retry-errors found nothing to retry
    ok: int = 0
    skipped: int = 0
    failed: int = 0
    marked: int = 0  # published with a chunk whose every answer was suspect
    removed: int = 0  # items gone from the source: extra manifest rows, not among the items
    pruned: int = 0
    pruned_files: list[str] = Field(default_factory=list)  # the first few
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    manifests: dict[str, str] = Field(default_factory=dict)  # name -> URI
    report: str | None = None  # report.html's URI
    report_link: str | None = None  # an address a browser opens (never presigned)
    utilisation: dict[str, float] = Field(default_factory=dict)  # server -> busy share
    error: str | None = None  # why the run stopped early
    failures: list[Failure] = Field(default_factory=list)  # the first few
    shards: list[ShardRun] = Field(default_factory=list)
    qa_on_marked: Literal["warn", "fail"] = "warn"
    retried_run: str | None = None  # retry-errors: the run whose failures this one redid

    @property
    def items(self) -> int:
        return self.ok + self.skipped + self.failed

    def too_many_failed(self, max_failed_share: float) -> bool:
        """Whether the share of failed items is over what the run accepts."""
        return self.failed > 0 and self.failed > max_failed_share * self.items

    @property
    def exit_code(self) -> int:
        """The CLI's: 2 when an item failed (or was published marked under qa_on_marked
        "fail"), else 0."""
        return 2 if self.failed or (self.marked and self.qa_on_marked == "fail") else 0
