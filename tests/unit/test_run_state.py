"""Run state kept in the output: journal segments (group commit) and FLAC chunk audio."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from fishflow.audio import Audio
from fishflow.chunk_cache import ChunkCache, RemoteChunks
from fishflow.manifest import ItemRow, Journal, ManifestWriter, recover, remote_journal_prefix
from fishflow.pool import Synthesized
from fishflow.storage import LocalStore


class CountingStore(LocalStore):
    puts = 0

    def put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> str:
        self.puts += 1
        return super().put(key, data, content_type, metadata)


def item(row: int) -> ItemRow:
    return ItemRow(
        run_id="r1",
        item_id=f"i{row}",
        source_row=row,
        status="ok",
        created_at=datetime.now(UTC),
        chunk_count=1,
    )


def test_journal_in_the_output_survives_the_machine(tmp_path: Path) -> None:
    output = CountingStore(str(tmp_path / "output"))

    async def finish(journal: Journal, row: int) -> None:
        journal.append(item(row), [], [])
        await journal.durable()

    async def first_machine() -> Journal:
        journal = Journal(str(tmp_path / "machine-1"), "r1", remote=output)
        # Items finishing together share a PUT; each returns once its line is in the output.
        await asyncio.gather(*(finish(journal, row) for row in range(10)))
        return journal

    killed = asyncio.run(first_machine())
    assert 1 <= output.puts < 10
    # Another machine: an empty local folder, the same output.
    elsewhere = Journal(str(tmp_path / "machine-2"), "r1", remote=output)
    assert sorted(e[0].source_row for e in elsewhere.entries()) == list(range(10))

    # Rows written to a manifest part let their segments go, at the next write.
    killed.settle(range(10))

    async def one_more() -> None:
        await finish(killed, 10)

    asyncio.run(one_more())
    segments = output.list(remote_journal_prefix("r1"))
    assert len(segments) == 1
    assert [e[0].source_row for e in elsewhere.entries()] == [10]
    killed.close(remove=True)
    assert output.list(remote_journal_prefix("r1")) == []


def test_journal_without_remote_writes_nothing_to_the_output(tmp_path: Path) -> None:
    journal = Journal(str(tmp_path / "state"), "r1")
    journal.append(item(0), [], [])
    asyncio.run(journal.durable())
    assert [e[0].source_row for e in journal.entries()] == [0]


def test_chunk_audio_round_trips_losslessly_and_misses_are_none(tmp_path: Path) -> None:
    chunks = RemoteChunks(LocalStore(str(tmp_path / "output")))
    rng = np.random.default_rng(3)
    samples = (np.sin(np.arange(44_100) / 20) * 8000 + rng.normal(0, 300, 44_100)).astype(np.int16)
    chunks.keep("ab" * 16, Audio(samples, 44_100))
    back = chunks.fetch("ab" * 16, 44_100)
    assert back is not None and back.sample_rate == 44_100
    assert np.array_equal(back.samples, samples)
    assert chunks.fetch("cd" * 16, 44_100) is None  # never made
    assert chunks.fetch("ab" * 16, 24_000) is None  # made at another rate
    stored = (tmp_path / "output" / ".fishflow" / "chunks" / "ab").iterdir()
    assert [p.suffix for p in stored] == [".flac"] and chunks.errors == 0
    chunks.store.put(chunks.key("ef" * 16, 44_100), b"not flac", "audio/flac", {})
    assert chunks.fetch("ef" * 16, 44_100) is None and chunks.errors == 1  # made again


def test_resume_on_another_machine_recovers_the_rows_in_the_output(tmp_path: Path) -> None:
    output = LocalStore(str(tmp_path / "output"))
    writer = ManifestWriter(output, "r1")
    killed = Journal(str(tmp_path / "machine-1"), "r1", remote=output)
    for row in range(3):
        killed.append(item(row), [], [])
    asyncio.run(killed.durable())
    fresh = Journal(str(tmp_path / "machine-2"), "r1", remote=output)
    assert recover(output, writer, fresh) == {0, 1, 2}
    assert sum(pq.read_table(output.uri(k)).num_rows for k in writer.part_keys("items")) == 3


def test_chunk_cache_keeps_flac_on_disk_and_reads_older_raw_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    samples = (np.sin(np.arange(88_200) / 30) * 9000 + rng.normal(0, 20, 88_200)).astype(np.int16)
    made: list[str] = []

    def maker(key: str) -> Callable[[], Awaitable[Synthesized]]:
        async def make() -> Synthesized:
            made.append(key)
            return Synthesized(Audio(samples, 44_100), "s", 1, 0.1)

        return make

    async def get(cache: ChunkCache, key: str) -> Audio:
        audio, _ = await cache.get_or_make(key, 44_100, maker(key), persist=True)
        cache.compress(key, audio)  # as the item's writer does once it has used the chunk
        return audio

    folder = tmp_path / "chunks"
    first = ChunkCache(str(folder))
    audio, _ = asyncio.run(first.get_or_make("ab" * 16, 44_100, maker("ab" * 16), persist=True))
    assert [p.suffix for p in folder.rglob("*.44100.*")] == [".s16"]  # raw until used
    first.compress("ab" * 16, audio)
    (kept,) = folder.rglob("*.44100.*")
    assert kept.name == f"{'ab' * 16}.44100.flac"
    assert kept.stat().st_size < 0.5 * samples.nbytes
    # A cache of the raw layout that came before: read as it is.
    (folder / "cd").mkdir()
    (folder / "cd" / f"{'cd' * 16}.44100.s16").write_bytes(samples.tobytes())
    # A damaged file: a miss, made again and replaced.
    (folder / "ef").mkdir()
    (folder / "ef" / f"{'ef' * 16}.44100.flac").write_bytes(b"fLaC and then nothing")

    later = ChunkCache(str(folder))  # a later run: nothing in memory
    for key in ("ab" * 16, "cd" * 16, "ef" * 16):
        assert np.array_equal(asyncio.run(get(later, key)).samples, samples)
    assert made == ["ab" * 16, "ef" * 16]
    assert sorted(p.suffix for p in folder.rglob("*.44100.*")) == [".flac"] * 3  # the raw one too
    assert ChunkCache(str(folder)).read("ef" * 16, 44_100) is not None
    # Modes as a plain open() gives them (0644 under umask 022): a second worker account that
    # shares the output reads the cache too.
    umask = os.umask(0o022)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in folder.rglob("*.44100.*")} == {0o666 & ~umask}


def test_memory_keeps_audio_found_nowhere_else_before_chunks_also_on_disk(tmp_path: Path) -> None:
    """Chunks also on disk have their own, smaller share of memory: many of them (a long
    item) never push out a single-chunk item's audio, which only memory holds."""
    second = np.zeros(44_100, np.int16)  # 88,200 bytes
    cache = ChunkCache(
        str(tmp_path / "chunks"), 10 * second.nbytes, on_disk_bytes=3 * second.nbytes
    )
    made: list[str] = []

    async def get(key: str, *, persist: bool) -> None:
        async def make() -> Synthesized:
            made.append(key)
            return Synthesized(Audio(second, 44_100), "s", 1, 0.1)

        await cache.get_or_make(key, 44_100, make, persist=persist)

    async def scenario() -> None:
        await get("aa" * 16, persist=False)  # a one-line item: only in memory
        for i in range(12):  # a long item's chunks, more than memory holds, each also on disk
            await get(f"{i:02d}" * 16, persist=True)
        await get("aa" * 16, persist=False)  # an identical one-line item later in the run

    asyncio.run(scenario())
    assert made.count("aa" * 16) == 1  # reused from memory, not requested again
    assert [k for k in made if k != "aa" * 16 and cache.recall(k) is not None] == [
        f"{i:02d}" * 16 for i in (9, 10, 11)
    ]  # the three newest of the long item's chunks; the rest are read back from disk
    assert all(cache.read(f"{i:02d}" * 16, 44_100) is not None for i in range(12))


def test_a_chunk_made_for_a_one_line_item_and_reused_by_a_long_item_is_kept_on_disk(
    tmp_path: Path,
) -> None:
    """A long item's writer reads a chunk back from disk once it has left memory, so a chunk
    it reuses from a single-chunk item (memory only) must be written there too."""
    second = np.ones(44_100, np.int16)
    cache = ChunkCache(str(tmp_path / "chunks"), 2 * second.nbytes, on_disk_bytes=second.nbytes)
    made: list[str] = []

    async def get(key: str, *, persist: bool) -> Audio:
        async def make() -> Synthesized:
            made.append(key)
            return Synthesized(Audio(second, 44_100), "s", 1, 0.1)

        audio, _ = await cache.get_or_make(key, 44_100, make, persist=persist)
        return audio

    async def scenario() -> None:
        await get("aa" * 16, persist=False)  # "Summary." as a one-line item
        await get("aa" * 16, persist=True)  # ... and as a heading in a long lesson
        for key in ("bb" * 16, "cc" * 16):  # the lesson's later chunks push it out of memory
            await get(key, persist=True)

    asyncio.run(scenario())
    assert made == ["aa" * 16, "bb" * 16, "cc" * 16]
    assert cache.recall("aa" * 16) is None
    recalled = cache.read("aa" * 16, 44_100)  # what the lesson's writer does now
    assert recalled is not None and np.array_equal(recalled.samples, second)
