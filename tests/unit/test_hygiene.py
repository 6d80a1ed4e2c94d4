"""Removed items, prune and gc rules, and the progress line, as plain functions."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fishflow.chunk_files import MARKER, open_chunk_folder
from fishflow.errors import ConfigError
from fishflow.hygiene import (
    collect_chunks,
    prune_outputs,
    referenced_chunk_keys,
    removed_items,
)
from fishflow.incremental import load_previous
from fishflow.items import PreviousItem
from fishflow.manifest import ChunkRow, ItemRow, ManifestWriter
from fishflow.progress import ProgressLog, Tally, format_duration
from fishflow.storage import LocalStore

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def ok(run: str, item: str, at: int, fmt: str = "wav", status: str = "ok") -> ItemRow:
    return ItemRow(run_id=run, item_id=item, source_row=0, status=status,
                   created_at=T0 + timedelta(minutes=at), content_key=f"k-{item}",
                   audio_uri=f"/o/audio/{item}.{fmt}", duration_s=1.0)  # fmt: skip


def chunk(run: str, item: str, key: str, status: str = "ok") -> ChunkRow:
    return ChunkRow(run_id=run, item_id=item, source_row=0, chunk_index=0, start_char=0,
                    end_char=1, utf8_bytes=1, chunk_key=key, server=None, attempts=1,
                    latency_s=0.1, duration_s=1.0, reused=False, status=status)  # fmt: skip


def test_removed_rows_carry_the_previous_audio_and_match_no_source_row() -> None:
    previous = {
        "a": PreviousItem("ka", "/o/audio/a.wav", "audio/a.wav", 2.5, 100, "sha-a"),
        "b": PreviousItem("kb", "/o/audio/b.mp3", "audio/b.mp3", 1.0, 50, "sha-b"),
    }
    rows = removed_items(run_id="r2", present={"a", "z"}, previous=previous, now=T0)
    assert [(r.item_id, r.status, r.source_row) for r in rows] == [("b", "removed", -1)]
    assert (rows[0].audio_uri, rows[0].audio_format, rows[0].duration_s) == (
        "/o/audio/b.mp3",
        "mp3",
        1.0,
    )


def test_an_item_whose_newest_row_is_removed_has_no_published_state(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path))
    root = store.uri("")
    rows = [
        ItemRow(
            run_id="r1",
            item_id=i,
            source_row=n,
            status="ok",
            created_at=T0,
            content_key=f"k{i}",
            audio_uri=f"{root}audio/{i}.wav",
        )
        for n, i in enumerate(["a", "b"])
    ]
    ManifestWriter(store, "r1").write_part("p", rows, [], [])
    assert set(load_previous(store)) == {"a", "b"}
    gone = ItemRow(run_id="r2", item_id="b", source_row=-1, status="removed",
                   created_at=T0 + timedelta(hours=1), audio_uri=rows[1].audio_uri)  # fmt: skip
    ManifestWriter(store, "r2").write_part("p", [gone], [], [])
    assert set(load_previous(store)) == {"a"}
    back = ItemRow(run_id="r3", item_id="b", source_row=0, status="ok",
                   created_at=T0 + timedelta(hours=2), content_key="kb2",
                   audio_uri=f"{root}audio/b.wav")  # fmt: skip
    ManifestWriter(store, "r3").write_part("p", [back], [], [])
    assert load_previous(store)["b"].content_key == "kb2"


def test_prune_keeps_exactly_the_current_files_of_items_in_the_source(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path))
    names = ["a.mp3", "a.wav", "a.vtt", "a.srt", "a.chapters.vtt", "b.wav", "b.vtt",
             "dir/README.md.wav", "dir/README.mp3", "failed.wav"]  # fmt: skip
    for name in names:
        store.put(f"audio/{name}", b"x", "", {})
    latest = {
        item: PreviousItem("k", store.uri(key), key, 1.0, 1)
        for item, key in [
            ("a", "audio/a.mp3"),
            ("b", "audio/b.wav"),
            ("dir/README.md", "audio/dir/README.mp3"),
            ("failed", "audio/failed.wav"),
        ]
    }
    # b is gone from the source; "failed" failed this run: its earlier audio is still current.
    pruned = prune_outputs(store, present={"a", "dir/README.md", "failed"}, latest=latest)
    assert sorted(store.list("audio/")) == [
        "audio/a.chapters.vtt", "audio/a.mp3", "audio/a.srt", "audio/a.vtt",
        "audio/dir/README.mp3", "audio/failed.wav",
    ]  # fmt: skip
    assert sorted(pruned) == sorted(
        store.uri(f"audio/{n}") for n in ["a.wav", "b.wav", "b.vtt", "dir/README.md.wav"]
    )
    # A lesson gone with its folder leaves no empty folder behind; audio/ itself stays.
    store.put("audio/gone/deep/README.wav", b"x", "", {})
    prune_outputs(store, present={"a"}, latest=latest)
    assert not (tmp_path / "audio/gone").exists() and not (tmp_path / "audio/dir").exists()
    assert sorted(store.list("audio/")) == [
        "audio/a.chapters.vtt", "audio/a.mp3", "audio/a.srt", "audio/a.vtt",
    ]  # fmt: skip
    # A folder emptied and written again in the same process (its cached "made" is forgotten),
    # or through another store on the same root, which still believes the folder is there.
    other = LocalStore(str(tmp_path))
    other.put("audio/gone/deep/README.wav", b"x", "", {})
    store.put("audio/gone/deep/README.wav", b"y", "", {})
    assert store.get("audio/gone/deep/README.wav") == b"y"
    store.delete(["audio/gone/deep/README.wav"])
    other.put("audio/gone/deep/README.wav", b"z", "", {})
    assert store.get("audio/gone/deep/README.wav") == b"z"


def K(name: str) -> str:
    """A chunk key (32 hex digits, as chunking.chunk_key makes) standing for `name`."""
    return hashlib.sha256(name.encode()).hexdigest()[:32]


def put_chunk(cache: Path, name: str, suffix: str = "flac") -> Path:
    key = K(name)
    (cache / key[:2]).mkdir(parents=True, exist_ok=True)
    path = cache / key[:2] / f"{key}.44100.{suffix}"
    path.write_bytes(b"\0" * 10)
    return path


def test_gc_keeps_chunks_of_each_current_items_newest_ok_and_later_failed_rows(
    tmp_path: Path,
) -> None:
    store = LocalStore(str(tmp_path / "out"))
    runs = {
        "r1": ([ok("r1", "a", 1), ok("r1", "b", 1), ok("r1", "c", 1)],
               [chunk("r1", "a", K("a-old")), chunk("r1", "b", K("b-1")),
                chunk("r1", "c", K("c-1"))]),
        # a edited: new ok row; b edited and failed (one chunk made, one failed); c gone.
        "r2": ([ok("r2", "a", 2), ok("r2", "b", 2, status="failed"),
                ItemRow(run_id="r2", item_id="c", source_row=-1, status="removed",
                        created_at=T0 + timedelta(minutes=2))],
               [chunk("r2", "a", K("a-new")), chunk("r2", "b", K("b-2")),
                chunk("r2", "b", K("b-x"), status="failed")]),
        "r3": ([ok("r3", "a", 3, status="skipped")], []),
    }  # fmt: skip
    for run, (items, chunks) in runs.items():
        writer = ManifestWriter(store, run)
        writer.write_part("p", items, chunks, [])
        writer.finalize()
    assert referenced_chunk_keys(store) == {K("a-new"), K("b-1"), K("b-2")}

    cache = tmp_path / "chunks"
    open_chunk_folder(str(cache))
    names = {}
    for name in ["a-old", "a-new", "b-1", "b-2", "c-1", "stranger"]:
        # FLAC, and the raw layout of earlier versions: both are chunk files.
        names[K(name)] = name
        put_chunk(cache, name, "s16" if name in ("a-old", "b-1") else "flac")
    dry = collect_chunks(store, str(cache), dry_run=True, min_age_s=0)
    assert sorted(names[Path(p).name.split(".")[0]] for p, _ in dry.deleted) == [
        "a-old",
        "c-1",
        "stranger",
    ]
    assert dry.deleted_bytes == 30 and dry.kept_files == 3 and dry.foreign == []
    assert len(list(cache.rglob("*.44100.*"))) == 6
    young = collect_chunks(store, str(cache), dry_run=False)  # default grace: an hour
    assert (len(young.deleted), young.recent_files) == (0, 3)
    collect_chunks(store, str(cache), dry_run=False, min_age_s=0)
    assert sorted(names[p.name.split(".")[0]] for p in cache.rglob("*.44100.*")) == [
        "a-new",
        "b-1",
        "b-2",
    ]


def test_gc_deletes_only_files_named_as_fishflow_names_chunks(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "out"))
    cache = tmp_path / "chunks"
    open_chunk_folder(str(cache))
    assert (cache / MARKER).is_file()
    ours = put_chunk(cache, "gone")
    temp = ours.parent / ".tmp-ab12_x9z"  # a write cut short
    temp.write_bytes(b"x")
    outside = tmp_path / "precious.flac"
    outside.write_bytes(b"keep")
    key = K("other")
    strangers = [
        cache / "notes.txt",
        cache / key[:2] / "readme.flac",
        cache / "zz" / f"{key}.44100.flac",  # a key in the wrong folder
        cache / key[:2] / f"{key}.44100.flac.bak",
        cache / key[:2] / f"{key.upper()}.44100.flac",
        cache / "deep" / key[:2] / f"{key}.44100.flac",
    ]
    for path in strangers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"mine")
    link = cache / key[:2] / f"{key}.44100.s16"  # a chunk name, but a link to another's file
    link.symlink_to(outside)
    done = collect_chunks(store, str(cache), dry_run=False, min_age_s=0, keys=set())
    assert sorted(Path(p) for p, _ in done.deleted) == sorted([ours, temp])
    assert not ours.exists() and not temp.exists()
    assert all(p.read_bytes() == b"mine" for p in strangers)
    assert link.is_symlink() and outside.read_bytes() == b"keep"
    assert sorted(done.foreign) == sorted(str(p) for p in [*strangers, link])
    assert (cache / MARKER).is_file()


def test_gc_refuses_a_folder_fishflow_did_not_mark_and_deletes_nothing(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "out"))
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_bytes(b"years of work")
    put_chunk(home, "looks-like-a-chunk")
    before = sorted(home.rglob("*"))
    for adopt in (False, True):  # with --adopt too: not every file is a chunk
        with pytest.raises(ConfigError) as refused:
            collect_chunks(store, str(home), dry_run=False, min_age_s=0, keys=set(), adopt=adopt)
        assert "nothing deleted" in refused.value.message and "\n" not in refused.value.message
    assert sorted(home.rglob("*")) == before and not (home / MARKER).exists()


def test_gc_adopts_an_unmarked_cache_of_chunk_files_only_when_asked(tmp_path: Path) -> None:
    """Caches of versions before the marker: every file in the layout, no marker."""
    store = LocalStore(str(tmp_path / "out"))
    old = tmp_path / "old-cache"
    gone, kept = put_chunk(old, "gone"), put_chunk(old, "kept")
    with pytest.raises(ConfigError, match="--adopt"):
        collect_chunks(store, str(old), dry_run=False, min_age_s=0, keys={K("kept")})
    assert gone.exists()
    dry = collect_chunks(store, str(old), dry_run=True, min_age_s=0, keys={K("kept")}, adopt=True)
    assert dry.adopted and not (old / MARKER).exists() and gone.exists()
    done = collect_chunks(store, str(old), dry_run=False, min_age_s=0, keys={K("kept")}, adopt=True)
    assert done.adopted and (old / MARKER).is_file()
    assert not gone.exists() and kept.exists()
    # A run's cache folder: marked when the run makes it or finds it empty, not otherwise.
    open_chunk_folder(str(tmp_path / "new" / "chunks"))
    (tmp_path / "empty").mkdir()
    open_chunk_folder(str(tmp_path / "empty"))
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_bytes(b"")
    open_chunk_folder(str(tmp_path / "used"))
    assert (tmp_path / "new" / "chunks" / MARKER).is_file()
    assert (tmp_path / "empty" / MARKER).is_file() and not (tmp_path / "used" / MARKER).exists()


def test_progress_line_has_a_total_share_counts_and_eta() -> None:
    now = [100.0]
    tally = Tally(10_000, clock=lambda: now[0])
    assert tally.line() == "fishflow: 0 of 10,000 items (0%), 0 ok, 0 failed"
    tally.add("ok")  # the first item: the pace is measured from here
    for i in range(1_199):
        now[0] += 0.2
        tally.add("failed" if i < 20 else "ok")
    # 1,199 items in 239.8 s after the first: 8,800 more take 1,760 s.
    assert tally.line() == (
        "fishflow: 1,200 of 10,000 items (12%), 1,180 ok, 20 failed, ETA 29m20s"
    )
    assert Tally(None).line() == "fishflow: 0 items, 0 ok, 0 failed"


def test_a_resumed_run_counts_what_it_had_done_and_paces_only_this_session() -> None:
    now = [0.0]
    tally = Tally(1_000, clock=lambda: now[0], already=600)
    assert tally.line() == "fishflow: 600 of 1,000 items (60%), 600 earlier, 0 ok, 0 failed"
    tally.add("ok")  # the first item of this session: its pace is measured from here
    for _ in range(100):
        now[0] += 1.0
        tally.add("ok")
    # 100 items in 100 s after the first of this session: 299 more take 299 s.
    assert tally.line() == (
        "fishflow: 701 of 1,000 items (70%), 600 earlier, 101 ok, 0 failed, ETA 4m59s"
    )


def test_a_progress_log_says_its_first_line_when_started_then_ticks() -> None:
    said: list[str] = []
    placed = [(0, 0.0)]  # chunks placed, seconds of audio made
    progress = ProgressLog(Tally(41), lambda: placed[0], said.append, 3600)
    progress.start()
    # The first line comes from start() itself: before any item, whatever the threads do.
    assert said == ["fishflow: 0 of 41 items (0%), 0 ok, 0 failed; 0 chunks, 0s of audio"]
    progress.tally.add("ok")
    placed[0] = (212, 3725.0)
    assert progress.line() == (
        "fishflow: 1 of 41 items (2%), 1 ok, 0 failed; 212 chunks, 1h02m of audio"
    )
    progress.stop()
    assert len(said) == 1  # the next line was an hour away


def test_durations_read_as_people_write_them() -> None:
    assert [format_duration(s) for s in (0, 35.4, 250, 3600 + 120 + 5)] == [
        "0s", "35s", "4m10s", "1h02m",
    ]  # fmt: skip


def test_prune_on_s3_deletes_the_same_way(bucket: str) -> None:
    from fishflow.storage import S3Store

    store = S3Store(f"s3://{bucket}/catalog")
    for name in ["a.mp3", "a.wav", "a.vtt", "b.mp3", "b.srt"]:
        store.put(f"audio/{name}", b"x", "audio/mpeg", {})
    store.put("manifests/run=r1/items.parquet", b"x", "application/octet-stream", {})
    latest = {"a": PreviousItem("k", store.uri("audio/a.mp3"), "audio/a.mp3", 1.0, 1)}
    pruned = prune_outputs(store, present={"a"}, latest=latest)
    assert store.list("audio/") == ["audio/a.mp3", "audio/a.vtt"]
    assert sorted(pruned) == [store.uri(f"audio/{n}") for n in ["a.wav", "b.mp3", "b.srt"]]
    assert store.list("manifests/") == ["manifests/run=r1/items.parquet"]


def test_a_run_excluded_from_the_previous_state_is_excluded_before_it_finalizes(
    tmp_path: Path,
) -> None:
    """A run tidies (removed items) before it merges its parts: its own rows, still in parts,
    are not "previous" (reading them held every row of a 100,000-item run in memory)."""
    store = LocalStore(str(tmp_path))
    row = ItemRow(run_id="r1", item_id="a", source_row=0, status="ok", created_at=T0,
                  content_key="ka", audio_uri=f"{store.uri('')}audio/a.wav")  # fmt: skip
    ManifestWriter(store, "r1").write_part("p", [row], [], [])
    assert set(load_previous(store)) == {"a"}
    assert load_previous(store, exclude_run="r1") == {}


def test_gc_of_the_outputs_copy_says_what_the_store_refused_to_delete(tmp_path: Path) -> None:
    import pytest

    from fishflow.errors import StorageError
    from fishflow.hygiene import collect_output_chunks

    class Refusing(LocalStore):  # as S3 answers DeleteObjects for keys the role may not delete
        def delete(self, keys: list[str]) -> list[str]:
            return [f"{keys[0]}: AccessDenied"]

    store = Refusing(str(tmp_path / "out"))
    for name in ("kept-1", "gone-1", "gone-2"):
        key = K(name)
        store.put(f".fishflow/chunks/{key[:2]}/{key}.44100.flac", b"\0" * 10, "audio/flac", {})
    store.put(".fishflow/chunks/notes.txt", b"not ours", "text/plain", {})
    dry = collect_output_chunks(store, dry_run=True, min_age_s=0, keys={K("kept-1")})
    assert sorted(Path(p).name for p, _ in dry.deleted) == sorted(
        f"{K(n)}.44100.flac" for n in ("gone-1", "gone-2")
    )
    assert dry.foreign == [store.uri(".fishflow/chunks/notes.txt")]
    first = min(K("gone-1"), K("gone-2"))
    with pytest.raises(StorageError, match=rf"1 of 2 chunk objects were not deleted \(.*{first}"):
        collect_output_chunks(store, dry_run=False, min_age_s=0, keys={K("kept-1")})


def test_gc_of_an_output_deletes_unreferenced_chunks_and_says_what_went(tmp_path: Path) -> None:
    """`fishflow gc OUT`'s work, without the CLI: the output's own chunk cache, a dry run
    that lists and deletes nothing, then the real one."""
    from fishflow.hygiene import chunk_cache_dir, collect_garbage, describe_collection

    out = tmp_path / "out"
    store = LocalStore(str(out))
    writer = ManifestWriter(store, "r1")
    writer.write_part("p", [ok("r1", "a", 1)], [chunk("r1", "a", K("a"))], [])
    writer.finalize()
    cache = Path(chunk_cache_dir(store, None))
    open_chunk_folder(str(cache))
    kept, gone = put_chunk(cache, "a"), put_chunk(cache, "gone")

    dry = collect_garbage(str(out), dry_run=True, grace_s=0)
    assert [(where, [p for p, _ in c.deleted]) for where, c in dry.places] == [
        (str(cache), [str(gone)])
    ]
    assert describe_collection(dry, dry_run=True, grace_s=0) == [
        f"would delete {gone} (10 bytes)",
        f"fishflow: would delete 1 chunk file(s), 10 bytes; kept 1 referenced, 10 bytes ({cache})",
    ]
    assert gone.exists()
    young = collect_garbage(str(out))  # an hour's grace: a run going on now may need it
    assert "1 unreferenced file(s) younger than 3600 s kept" in " ".join(
        describe_collection(young, dry_run=False, grace_s=3600)
    )
    done = collect_garbage(str(out), grace_s=0)
    assert describe_collection(done, dry_run=False, grace_s=0) == [
        f"fishflow: deleted 1 chunk file(s), 10 bytes; kept 1 referenced, 10 bytes ({cache})"
    ]
    assert kept.exists() and not gone.exists()


def test_gc_of_an_output_without_chunk_audio_or_that_is_missing(tmp_path: Path) -> None:
    from fishflow.hygiene import collect_garbage, describe_collection

    (tmp_path / "empty").mkdir()
    found = collect_garbage(str(tmp_path / "empty"))
    assert found.places == []
    [line] = describe_collection(found, dry_run=False, grace_s=3600)
    assert line.startswith("fishflow: no chunk audio in ") and "nothing to collect" in line
    with pytest.raises(ConfigError, match="no such output folder"):
        collect_garbage(str(tmp_path / "missing"))


def test_sizes_read_in_powers_of_a_thousand() -> None:
    from fishflow.hygiene import format_size

    assert [format_size(n) for n in (0, 999, 1000, 1_234_567, 5 * 10**9, 7 * 10**12)] == [
        "0 bytes",
        "999 bytes",
        "1.0 kB",
        "1.2 MB",
        "5.0 GB",
        "7,000.0 GB",
    ]
