"""Output hygiene: items gone from the source, leftover files, chunk audio nothing needs.

- **Removed items.** A run that read its whole source knows which ids are gone since the last
  run: each gets one ``removed`` row in the items manifest (``source_row`` -1: it matches no row
  of this source), carrying the audio it had. Rows restricted to part of the source (a retry of
  failed rows, one shard of a sharded run) see too little to say what is gone, so they never
  report removals. A removed item has no published state afterwards (``load_previous``), so it
  is reported once, and comes back as a new item if its id reappears.
- **Prune** (``--prune``): afterwards ``audio/`` holds only what the manifests say is current
  for an item in the source (its audio file and the captions beside it). Removed items' files,
  a previous output format's files and files left under an older name all go.
- **gc** (``collect_garbage``): chunk audio (the chunk cache, and an S3 output's own copy of
  it) that no current item's manifest rows reference.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa

from fishflow import chunk_files
from fishflow.chunk_cache import RemoteChunks
from fishflow.chunk_files import chunk_file_key
from fishflow.errors import ConfigError, StorageError
from fishflow.incremental import load_previous
from fishflow.items import PreviousItem
from fishflow.manifest import (
    ChunkRow,
    ItemRow,
    Journal,
    ManifestWriter,
    journal_dir,
    read_remote,
)
from fishflow.storage import Listed, Store, open_store, output_exists, read_parquet, state_dir

# Files published beside an item's audio, named after its stem (`audio/x.wav` -> `audio/x.vtt`).
CAPTION_SUFFIXES = (".vtt", ".srt", ".chapters.vtt")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3")
# A removed row matches no row of the source it was found missing from.
REMOVED_SOURCE_ROW = -1


def _stem(key: str) -> str:
    for suffix in (".chapters.vtt", *CAPTION_SUFFIXES, *AUDIO_SUFFIXES):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key.rsplit(".", 1)[0]


def published_files(audio_key: str) -> list[str]:
    """An item's audio key and the caption files that may sit beside it."""
    stem = _stem(audio_key)
    return [audio_key, *(stem + s for s in CAPTION_SUFFIXES)]


def removed_items(
    *, run_id: str, present: set[str], previous: dict[str, PreviousItem], now: datetime
) -> list[ItemRow]:
    """A `removed` row for every item with published audio whose id the source no longer has."""
    return [
        ItemRow(
            run_id=run_id,
            item_id=item_id,
            source_row=REMOVED_SOURCE_ROW,
            status="removed",
            created_at=now,
            content_key=prev.content_key,
            audio_uri=prev.audio_uri,
            audio_format=prev.audio_key.rsplit(".", 1)[-1] if "." in prev.audio_key else None,
            duration_s=prev.duration_s,
            bytes=prev.bytes,
            audio_sha256=prev.audio_sha256,
        )
        for item_id, prev in sorted(previous.items())
        if item_id not in present
    ]


def prune_outputs(store: Store, *, present: set[str], latest: dict[str, PreviousItem]) -> list[str]:
    """Delete every file under `audio/` that is not the current audio (or its captions) of an
    item in the source; `latest` is the output's published state after this run. Returns the
    URIs deleted."""
    keep = {
        key
        for item_id in present
        if (prev := latest.get(item_id)) is not None
        for key in published_files(prev.audio_key)
    }
    doomed = [key for key in store.list("audio/") if key not in keep]
    store.delete(doomed)
    return [store.uri(key) for key in doomed]


@dataclass
class Tidied:
    removed: list[ItemRow] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)

    def log(self, logger: logging.Logger | logging.LoggerAdapter[Any], run_id: str) -> None:
        if self.removed:
            logger.info(
                "run %s: %d item(s) gone from the source since the last run "
                "(status removed in the items manifest)",
                run_id,
                len(self.removed),
            )
        for uri in self.pruned:
            logger.info("run %s: pruned %s", run_id, uri)


def tidy_output(
    store: Store,
    writer: ManifestWriter,
    *,
    run_id: str,
    part: str,
    present: set[str],
    previous: dict[str, PreviousItem] | None,
    prune: bool,
    now: datetime,
) -> Tidied:
    """After a run that read its whole source: record removed items as a manifest part and,
    with `prune`, delete what no current item uses. `previous` is the state the run started
    from (None when the run did not load it, e.g. with --force)."""
    if previous is None:
        previous = load_previous(store, exclude_run=run_id)
    done = Tidied(removed=removed_items(run_id=run_id, present=present, previous=previous, now=now))
    if done.removed:
        writer.write_part(part, done.removed, [], [])
    if prune:
        # Read again: this run's own rows (its parts, the removed rows) are the newest state.
        done.pruned = prune_outputs(store, present=present, latest=load_previous(store))
    return done


# -- gc: chunk audio no manifest needs ----------------------------------------------------------


def _manifest_tables(store: Store, name: str, columns: list[str]) -> Iterator[pa.Table]:
    """Every final and part `name` table of the output (column-projected)."""
    keys = [
        k
        for k in store.list("manifests/")
        if k.endswith(f"/{name}.parquet") or f"/parts/{name}-" in k
    ]
    for key in keys:
        yield read_parquet(store, key, columns)


def referenced_chunk_keys(store: Store) -> set[str]:
    """Chunk keys a later run may reuse: those of each current item's newest `ok` row, and of
    a newer `failed` row of it (its finished chunks make a retry cheap). Items whose newest row
    is `removed` keep nothing."""
    rows: list[tuple[datetime, str, str, str]] = []  # created_at, item_id, run_id, status
    item_cols = ["created_at", "item_id", "run_id", "status"]
    for table in _manifest_tables(store, "items", item_cols):
        rows.extend(zip(*(table[c].to_pylist() for c in item_cols), strict=True))
    journal_chunks: list[ChunkRow] = []
    entries = []
    directory = journal_dir(store)
    if os.path.isdir(directory):
        for name in sorted(os.listdir(directory)):
            entries.extend(Journal.read(os.path.join(directory, name)))
    if store.remote:  # runs elsewhere keep theirs in the output too
        entries.extend(read_remote(store, strict=True))
    for item, chunks, _ in entries:
        rows.append((item.created_at, item.item_id or "", item.run_id, item.status))
        journal_chunks.extend(chunks)
    newest: dict[str, str] = {}
    wanted: dict[str, set[str]] = {}  # item_id -> run ids whose chunks to keep
    for _, item_id, run, status in sorted(r for r in rows if r[1]):
        if status == "ok":
            wanted[item_id] = {run}
        elif status == "failed":
            wanted.setdefault(item_id, set()).add(run)
        newest[item_id] = status
    pairs = {
        (run, item_id)
        for item_id, runs in wanted.items()
        if newest[item_id] != "removed"
        for run in runs
    }
    keys: set[str] = set()
    chunk_cols = ["run_id", "item_id", "chunk_key", "status"]
    for table in _manifest_tables(store, "chunks", chunk_cols):
        for run, item_id, key, status in zip(
            *(table[c].to_pylist() for c in chunk_cols), strict=True
        ):
            if status == "ok" and (run, item_id) in pairs:
                keys.add(key)
    keys.update(
        c.chunk_key for c in journal_chunks if c.status == "ok" and (c.run_id, c.item_id) in pairs
    )
    return keys


@dataclass
class Collected:
    deleted: list[tuple[str, int]] = field(default_factory=list)  # path, bytes
    kept_files: int = 0
    kept_bytes: int = 0
    recent_files: int = 0  # unreferenced, but young enough that a running run may want them
    # Files that are not chunk audio in fishflow's layout (chunk_files): never deleted.
    foreign: list[str] = field(default_factory=list)
    adopted: bool = False  # the folder had no marker and got one (``adopt``)

    @property
    def deleted_bytes(self) -> int:
        return sum(size for _, size in self.deleted)


def chunk_cache_dir(store: Store, chunk_cache: str | None) -> str:
    """Where runs of this output keep chunk audio (see ``run.open_run``)."""
    return chunk_cache or os.path.join(state_dir(store), "chunks")


def _sort_out(found: Iterable[Listed], keys: set[str], cutoff: float, root: str) -> Collected:
    """Which chunk files are referenced (kept), young (kept) or to delete (``deleted``); what
    is not a chunk file in fishflow's layout below `root` is ``foreign`` and left."""
    result = Collected()
    for entry in found:
        key = chunk_file_key(entry.key[len(root) :].lstrip("/"))
        if key is None:
            result.foreign.append(entry.key)
        elif key in keys:
            result.kept_files += 1
            result.kept_bytes += entry.size
        elif entry.modified > cutoff:
            result.recent_files += 1
        else:
            result.deleted.append((entry.key, entry.size))
    return result


def _cache_files(cache_dir: str) -> tuple[list[Listed], list[str]]:
    """The regular files under `cache_dir` but the marker, and the paths of anything else
    (links, fifos): those are never chunk files of ours."""
    files: list[Listed] = []
    others: list[str] = []
    for folder, _, names in os.walk(cache_dir):
        for name in sorted(names):
            path = os.path.join(folder, name)
            if path == os.path.join(cache_dir, chunk_files.MARKER):
                continue
            with contextlib.suppress(FileNotFoundError):
                info = os.lstat(path)
                if stat.S_ISREG(info.st_mode):
                    files.append(Listed(path, info.st_size, info.st_mtime))
                else:
                    others.append(path)
    return files, others


def collect_chunks(
    store: Store,
    cache_dir: str,
    *,
    dry_run: bool,
    min_age_s: float = 3600.0,
    keys: set[str] | None = None,
    adopt: bool = False,
) -> Collected:
    """Delete the chunk audio under `cache_dir` that no current item references (`keys`, read
    from the output's manifests when not given).

    Only in a folder fishflow marked as its chunk cache (``chunk_files.MARKER``), and only
    files in fishflow's layout: anything else is left and listed in ``foreign``. A folder
    without the marker is refused (ConfigError); with `adopt`, one whose every file is in
    fishflow's layout (a cache of a version that did not mark its caches) is marked and
    collected.

    Files younger than `min_age_s` stay: a run going on now writes chunks before its manifests
    name them (its journal names an item's chunks only once the item is finished).
    """
    files, others = _cache_files(cache_dir)
    adopted = False
    if not chunk_files.is_marked(cache_dir):
        if not adopt:
            raise ConfigError(
                f"{cache_dir}: not a chunk cache fishflow made (no {chunk_files.MARKER} "
                "file): nothing deleted; for a cache made before fishflow marked them, add --adopt"
            )
        strangers = others + [
            entry.key
            for entry in files
            if chunk_file_key(os.path.relpath(entry.key, cache_dir).replace(os.sep, "/")) is None
        ]
        if strangers:
            raise ConfigError(
                f"{cache_dir}: not adopted, {len(strangers):,} file(s) here are not chunk "
                f"audio fishflow writes (e.g. {strangers[0]}): nothing deleted"
            )
        if not dry_run:
            chunk_files.mark(cache_dir)
        adopted = True
    keys = referenced_chunk_keys(store) if keys is None else keys
    result = _sort_out(files, keys, time.time() - min_age_s, cache_dir)
    result.adopted = adopted
    result.foreign = sorted(result.foreign + others)
    if not dry_run:
        for path, _ in result.deleted:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    return result


def collect_output_chunks(
    store: Store, *, dry_run: bool, min_age_s: float = 3600.0, keys: set[str] | None = None
) -> Collected:
    """The same for the copy of chunk audio an S3 output keeps in itself (``RemoteChunks``),
    which runs on any machine reuse: ``deleted`` holds URIs."""
    keys = referenced_chunk_keys(store) if keys is None else keys
    listed = store.list_sized(RemoteChunks.PREFIX + "/")
    result = _sort_out(listed, keys, time.time() - min_age_s, RemoteChunks.PREFIX)
    if not dry_run and result.deleted:
        refused = store.delete([key for key, _ in result.deleted])
        if refused:
            raise StorageError(
                f"{store.uri(RemoteChunks.PREFIX)}: {len(refused):,} of "
                f"{len(result.deleted):,} chunk objects were not deleted ({refused[0]})"
            )
    result.deleted = [(store.uri(key), size) for key, size in result.deleted]
    result.foreign = [store.uri(key) for key in result.foreign]
    return result


@dataclass
class Collection:
    """What `fishflow gc` found: the chunk cache it looked in, and each place it collected
    (the cache, and an S3 output's own copy) with what it deleted or would delete."""

    cache_dir: str
    places: list[tuple[str, Collected]] = field(default_factory=list)


def collect_garbage(
    out: str,
    *,
    chunk_cache: str | None = None,
    dry_run: bool = False,
    grace_s: float = 3600.0,
    adopt: bool = False,
) -> Collection:
    """Delete the chunk audio of output `out` that no current item references: in the chunk
    cache (``chunk_cache``, or the output's default one) and, for an S3 output, in the copy it
    keeps of it. Unreferenced files younger than `grace_s` stay (a run going on now may need
    them); `dry_run` deletes nothing and says what would go."""
    if not output_exists(out):
        raise ConfigError(f"{out}: no such output folder")
    store = open_store(out)
    found = Collection(chunk_cache_dir(store, chunk_cache))
    keys = referenced_chunk_keys(store)
    if os.path.isdir(found.cache_dir):
        local = collect_chunks(
            store, found.cache_dir, dry_run=dry_run, min_age_s=grace_s, keys=keys, adopt=adopt
        )
        found.places.append((found.cache_dir, local))
    if store.remote:  # the output's own copy, which runs on any machine reuse
        copy = collect_output_chunks(store, dry_run=dry_run, min_age_s=grace_s, keys=keys)
        found.places.append((store.uri(RemoteChunks.PREFIX), copy))
    return found


def format_size(n: float) -> str:
    """1,234 bytes, 12.3 kB, 4.5 MB, 1,234.5 GB (powers of 1000, as disks are sold)."""
    for unit in ("bytes", "kB", "MB"):
        if n < 1000:
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} GB"


def describe_collection(found: Collection, *, dry_run: bool, grace_s: float) -> list[str]:
    """What `fishflow gc` prints: each file a dry run would delete, then a line per place."""
    if not found.places:
        return [f"fishflow: no chunk audio in {found.cache_dir}: nothing to collect"]
    lines: list[str] = []
    verb = "would delete" if dry_run else "deleted"
    for where, done in found.places:
        if dry_run:
            lines.extend(
                f"would delete {path} ({format_size(size)})" for path, size in done.deleted
            )
        young = (
            f"; {done.recent_files:,} unreferenced file(s) younger than {grace_s:g} s kept"
            if done.recent_files
            else ""
        )
        foreign = (
            f"; left {len(done.foreign):,} file(s) fishflow did not write, e.g. {done.foreign[0]}"
            if done.foreign
            else ""
        )
        if done.adopted:
            adopted = "would adopt" if dry_run else "adopted"
            lines.append(
                f"fishflow: {where}: {adopted} as a chunk cache (every file is chunk audio)"
            )
        lines.append(
            f"fishflow: {verb} {len(done.deleted):,} chunk file(s), "
            f"{format_size(done.deleted_bytes)}; kept {done.kept_files:,} referenced, "
            f"{format_size(done.kept_bytes)}{young}{foreign} ({where})"
        )
    return lines
