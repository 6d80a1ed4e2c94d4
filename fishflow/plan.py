"""What a run would do and cost, before it spends GPU time: `fishflow plan`.

The source goes through the run's own validation, content keys and chunking
(``run.entry_batches``, ``items.item_chunks``), and the output's earlier manifests and chunk
cache are read as a run reads them, so the counts are what a run would do. Nothing is sent to
a server, nothing is written (an output folder that does not exist is not created), Prefect is
not started.

Audio seconds come from the seconds per character earlier runs of this output measured (per
language), else from a speech rate per script. Server time comes from the service times in
earlier chunk manifests (each request's latency divided by the requests that server had in
flight: a self-hosted Fish Speech server works on one at a time), else from a stated default.
"""

from __future__ import annotations

import collections
import json
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from fishflow.chunking import chunk_key
from fishflow.incremental import existing_audio, load_previous
from fishflow.items import Item, item_chunks
from fishflow.progress import format_duration as _duration
from fishflow.run import entry_batches, run_spec
from fishflow.settings import RunSettings
from fishflow.spoken import rule_summary
from fishflow.storage import Store, open_store, output_exists, parquet_file, state_dir
from fishflow.text import is_cjk

# Speech rates when no earlier run measured one: ~14 Latin characters a second (about 150
# words a minute), ~4.5 CJK characters a second.
DEFAULT_S_PER_CHAR = 0.07
DEFAULT_S_PER_CJK_CHAR = 0.22
# Server seconds per second of audio when no earlier run measured it: a compiled Fish Speech
# 1.5 on an RTX 4060-class GPU, RTF about 1:5 (docs/fish-speech-api.md, "Published speed").
DEFAULT_SERVER_S_PER_AUDIO_S = 0.2


@dataclass
class Plan:
    rows: int = 0  # source rows read
    rejected: int = 0  # rows that would end `failed` before any request (bad id, empty text)
    items: int = 0
    chars: int = 0
    chunks: int = 0
    distinct_chunks: int = 0
    skipped_items: int = 0  # unchanged since an earlier run, audio still there
    skipped_chars: int = 0
    items_to_make: int = 0
    chunks_to_make: int = 0  # chunks of the items to make
    cached_chunks: int = 0  # distinct chunks of those already in the chunk cache
    requests: int = 0  # distinct chunks to send
    request_chars: int = 0
    audio_s: float = 0.0  # expected audio of every item
    request_audio_s: float = 0.0  # expected audio of the requests
    audio_basis: str = ""
    server_s: float = 0.0  # server (GPU) time for the requests
    server_basis: str = ""
    servers: int = 1
    wall_s: float = 0.0
    # Spans said differently from how they are written, by rule (fishflow.spoken).
    spoken_changes: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _expected_s(text: str, s_per_char: float | None) -> float:
    if s_per_char is not None:
        return len(text) * s_per_char
    cjk = sum(1 for ch in text if is_cjk(ch))
    return cjk * DEFAULT_S_PER_CJK_CHAR + (len(text) - cjk) * DEFAULT_S_PER_CHAR


def _tables(store: Store, name: str, columns: list[str]) -> list[Any]:
    keys = [k for k in store.list("manifests/") if k.endswith(f"/{name}.parquet")]
    tables = []
    for key in keys:
        with parquet_file(store, key) as parquet:
            if all(c in parquet.schema_arrow.names for c in columns):
                tables.append((key, parquet.read(columns=columns)))
    return tables


def measured_rates(store: Store) -> tuple[dict[str, float], tuple[float, int] | None]:
    """Seconds of audio per character by language, and server seconds per audio second (with
    how many requests it was measured on), from the output's finished runs."""
    per_language: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for _, table in _tables(store, "items", ["status", "language", "chars", "duration_s"]):
        for status, language, chars, duration in zip(
            *(table[c].to_pylist() for c in table.column_names), strict=True
        ):
            if status == "ok" and chars and duration:
                per_language[language or ""][0] += duration
                per_language[language or ""][1] += chars
    rates = {lang: s / n for lang, (s, n) in per_language.items() if n}
    server_s = audio_s = 0.0
    requests = 0
    columns = ["server", "latency_s", "duration_s", "reused", "status"]
    for key, table in _tables(store, "chunks", columns):
        limits = _in_flight(store, key.rsplit("/", 1)[0] + "/run.json")
        for server, latency, duration, reused, status in zip(
            *(table[c].to_pylist() for c in columns), strict=True
        ):
            if status == "ok" and not reused and latency and duration:
                server_s += latency / limits.get(server or "", limits.get("", 1))
                audio_s += duration
                requests += 1
    return rates, ((server_s / audio_s, requests) if audio_s else None)


def _in_flight(store: Store, record_key: str) -> dict[str, int]:
    """Requests in flight per server URL in a run (from its run record; "" is the default)."""
    try:
        record = json.loads(store.get(record_key))
        settings = RunSettings(**record["settings"])
        limits: dict[str, int] = {"": settings.max_in_flight}
        limits.update({c.url: c.max_in_flight for c in settings.server_configs(record["servers"])})
        return limits
    except Exception:  # an older or foreign record: assume the default
        return {"": RunSettings().max_in_flight}


def _open_existing(out: str, settings: RunSettings) -> Store | None:
    """The output if it exists; a plan never creates one."""
    if not output_exists(out):
        return None
    return open_store(out, settings.sse)


def _cached_keys(directory: str) -> set[str]:
    keys: set[str] = set()
    for _, _, files in os.walk(directory):
        keys.update(name.split(".", 1)[0] for name in files if not name.startswith("."))
    return keys


def make_plan(
    source: str, out: str, settings: RunSettings, *, servers: int = 1, force: bool = False
) -> Plan:
    """Count what a run of `source` into `out` with `settings` would do and cost."""
    spec = run_spec(settings)
    store = _open_existing(out, settings)
    previous = load_previous(store) if store is not None and not force else {}
    existing = existing_audio(store) if store is not None and previous else set()
    if settings.chunk_cache:
        cache_dir = settings.chunk_cache
    elif store is not None:
        cache_dir = os.path.join(state_dir(store), "chunks")
    else:
        cache_dir = os.path.join(out, ".fishflow", "chunks")
    cached = _cached_keys(cache_dir)
    rates, service = measured_rates(store) if store is not None else ({}, None)

    plan = Plan(servers=servers)
    changes: collections.Counter[str] = collections.Counter()
    all_keys: set[str] = set()
    to_make: dict[str, tuple[str, str]] = {}  # chunk key -> (text, language)
    disk_cached: set[str] = set()
    for batch in entry_batches(source, settings, spec):
        for entry in batch.entries:
            plan.rows += 1
            if not isinstance(entry, Item):
                plan.rejected += 1
                continue
            plan.items += 1
            plan.chars += len(entry.text)
            plan.audio_s += _expected_s(entry.text, rates.get(entry.language))
            # As processing.process_item chunks, and as _skip_if_unchanged decides.
            chunks = item_chunks(entry, spec)
            for chunk in chunks:
                changes.update(rule for _, _, rule in chunk.said)
            keys = [chunk_key(c.text, spec.voice_fingerprint(entry.voice_identity)) for c in chunks]
            plan.chunks += len(chunks)
            all_keys.update(keys)
            prev = previous.get(entry.item_id)
            if (
                prev is not None
                and prev.content_key == entry.content_key
                and prev.audio_key in existing
                and (prev.qa != "marked" or spec.qa.accept_marked)  # marked: made again
            ):
                plan.skipped_items += 1
                plan.skipped_chars += len(entry.text)
                continue
            plan.items_to_make += 1
            plan.chunks_to_make += len(chunks)
            for chunk, key in zip(chunks, keys, strict=True):
                to_make.setdefault(key, (chunk.text, entry.language))
                # Only multi-chunk items read chunk audio from disk (see ChunkCache).
                if len(chunks) > 1 and key in cached:
                    disk_cached.add(key)
    plan.distinct_chunks = len(all_keys)
    plan.spoken_changes = dict(changes.most_common())
    plan.cached_chunks = len(disk_cached)
    for key, (text, language) in to_make.items():
        if key not in disk_cached:
            plan.requests += 1
            plan.request_chars += len(text)
            plan.request_audio_s += _expected_s(text, rates.get(language))
    plan.audio_basis = (
        "measured by earlier runs of this output (seconds per character, per language)"
        if rates
        else f"default speech rate: {DEFAULT_S_PER_CHAR} s per character, "
        f"{DEFAULT_S_PER_CJK_CHAR} s per CJK character"
    )
    if service is not None:
        per_audio_s, measured = service
        plan.server_basis = (
            f"measured: {per_audio_s:.3f} server s per audio s over {measured:,} earlier "
            "requests (latency / requests in flight on that server)"
        )
    else:
        per_audio_s = DEFAULT_SERVER_S_PER_AUDIO_S
        plan.server_basis = (
            f"default: {per_audio_s} server s per audio s (Fish Speech 1.5 compiled, "
            "RTF about 1:5 on an RTX 4060-class GPU)"
        )
    plan.server_s = plan.request_audio_s * per_audio_s
    # Each server busy all the time: what the pool achieves (bench: wall/ideal ~1.01).
    plan.wall_s = plan.server_s / max(1, servers)
    return plan


def describe(plan: Plan, source: str, out: str) -> str:
    """The plan as a few lines for a terminal."""
    lines = [
        f"fishflow plan: {source} -> {out} (nothing sent, nothing written)",
        f"rows            {plan.rows:,} ({plan.rejected:,} would fail before synthesis)",
        f"items           {plan.items:,}, {plan.chars:,} characters of source text",
        f"chunks          {plan.chunks:,} ({plan.distinct_chunks:,} distinct)",
        f"already done    {plan.skipped_items:,} items unchanged since an earlier run "
        f"({plan.skipped_chars:,} characters) would be skipped",
        f"to synthesise   {plan.items_to_make:,} items, {plan.chunks_to_make:,} chunks; "
        f"{plan.cached_chunks:,} distinct chunks already in the chunk cache",
        f"requests        {plan.requests:,} ({plan.request_chars:,} characters spoken)",
        f"said in words   {rule_summary(collections.Counter(plan.spoken_changes)) or 'nothing'}"
        " (spans said differently from how they are written, by rule)",
        f"audio           about {_duration(plan.audio_s)} in all, "
        f"{_duration(plan.request_audio_s)} to synthesise ({plan.audio_basis})",
        f"server time     about {_duration(plan.server_s)} ({plan.server_basis})",
        f"wall time       about {_duration(plan.wall_s)} on {plan.servers} server(s), "
        "plus start-up",
    ]
    return "\n".join(lines)
