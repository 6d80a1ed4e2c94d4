"""Change detection from earlier manifests: what an output already holds, read in one pass.

The manifests are the system of record (not Prefect's cache: a cache hit still costs a task
run). All earlier ``items`` tables of the output, finished or left as part files by a run that
crashed, are read with pyarrow, column-projected, and reduced to the newest ``ok``/``skipped``
row per item id; an item whose newest row is ``removed`` (gone from the source) has none.
Audio existence comes from one listing of the output, not a call per item.
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.compute as pc

from fishflow.items import PreviousItem
from fishflow.manifest import (
    ITEMS_SCHEMA,
    Journal,
    journal_dir,
    read_remote,
    remote_journal_runs,
    to_table,
)
from fishflow.storage import Store, read_parquet

_COLUMNS = [
    "item_id",
    "status",
    "content_key",
    "audio_uri",
    "duration_s",
    "bytes",
    "audio_sha256",
    "created_at",
    "loudness_lufs",
    "captions_uri",
    "chapters_uri",
    "qa",
    "seed",
]


def _item_tables(store: Store, exclude_run: str | None) -> list[pa.Table]:
    keys = [
        k
        for k in store.list("manifests/")
        if k.endswith(".parquet")
        and ("/items.parquet" in k or "/parts/items-" in k)
        # The run's own rows, final or still in parts (a run tidying before it finalizes).
        and not (exclude_run and k.startswith(f"manifests/run={exclude_run}/"))
    ]
    tables = []
    for key in keys:
        table = _project(read_parquet(store, key))
        tables.append(
            table.filter(pc.is_in(table["status"], pa.array(["ok", "skipped", "removed"])))
        )
    return tables


def _project(table: pa.Table) -> pa.Table:
    """The columns change detection needs; ones an older manifest lacks come back as nulls."""
    return pa.table(
        {
            name: table[name]
            if name in table.column_names
            else pa.nulls(table.num_rows, ITEMS_SCHEMA.field(name).type)
            for name in _COLUMNS
        }
    )


def _journal_tables(store: Store, exclude_run: str | None) -> list[pa.Table]:
    """Items finished by runs that never wrote their manifests (killed), from their journals."""
    directory = journal_dir(store)
    entries = [
        entry
        for name in (sorted(os.listdir(directory)) if os.path.isdir(directory) else [])
        if name.endswith(".jsonl") and name != f"run={exclude_run}.jsonl"
        for entry in Journal.read(os.path.join(directory, name))
    ]
    if store.remote:  # journals kept in the output by runs on other machines
        entries += [
            entry
            for run in remote_journal_runs(store)
            if run != exclude_run
            for entry in read_remote(store, run)
        ]
    rows = [entry[0] for entry in entries if entry[0].status in ("ok", "skipped")]
    return [_project(to_table(rows, ITEMS_SCHEMA))] if rows else []


def load_previous(store: Store, exclude_run: str | None = None) -> dict[str, PreviousItem]:
    """The newest published state of every item id in this output."""
    tables = [
        t
        for t in _item_tables(store, exclude_run) + _journal_tables(store, exclude_run)
        if t.num_rows
    ]
    if not tables:
        return {}
    table = pa.concat_tables(tables).sort_by([("created_at", "ascending")])
    prefix = store.uri("")
    latest: dict[str, PreviousItem] = {}
    names = [c for c in _COLUMNS if c != "created_at"]  # in _COLUMNS' order
    for item_id, status, key, uri, duration, size, sha, lufs, captions, chapters, qa, seed in zip(
        *(table[c].to_pylist() for c in names), strict=True
    ):
        if status == "removed":
            latest.pop(item_id, None)
        elif item_id and key and uri and uri.startswith(prefix):
            latest[item_id] = PreviousItem(
                key,
                uri,
                uri[len(prefix) :],
                duration,
                size,
                sha,
                lufs,
                captions,
                chapters,
                qa=qa,
                seed=seed,
            )
    return latest


def existing_audio(store: Store) -> set[str]:
    return set(store.list("audio/"))
