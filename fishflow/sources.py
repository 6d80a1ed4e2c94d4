"""Read catalog rows from CSV, JSONL, Parquet, folders of .txt/.md, locally or on S3, in batches.

Readers never hold a whole catalog: they yield lists of ``SourceRow`` of at most ``batch_rows``.
A row that cannot be read (bad JSON line, invalid UTF-8) still yields a ``SourceRow`` carrying a
``problem``, so that it ends in the manifest as a failed item rather than vanishing.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fishflow.errors import ConfigError, FishflowError, SourceError, StorageError
from fishflow.rows import Columns, SourceRow, check_columns
from fishflow.storage import Listed, UriReader, is_remote_uri

TEXT_SUFFIXES = (".txt", ".md", ".markdown")
TABLE_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".parquet")
LIST_PAGE_SIZE = 1000  # keys per S3 listing request (S3's own maximum)
# A long book is a few MB of text; a file much larger is not a document to read aloud, and
# reading it whole would cost memory many times its size (bytes, str, blocks, chunks).
DEFAULT_MAX_FILE_BYTES = 20_000_000

logger = logging.getLogger("fishflow.sources")


def _clean(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    return value if isinstance(value, str) else str(value)


def _rows_from_records(
    records: Sequence[Mapping[Any, Any]], start: int, cols: Columns
) -> list[SourceRow]:
    return [
        SourceRow(
            row=start + i,
            item_id=_clean(r.get(cols.id)),
            text=_clean(r.get(cols.text)),
            language=_clean(r.get(cols.language)) or None,
            voice=_clean(r.get(cols.voice)) or None,
            reference_audio=(_clean(r.get(cols.reference_audio)) or "").strip() or None,
            reference_text=_clean(r.get(cols.reference_text)) or None,
        )
        for i, r in enumerate(records)
    ]


def read_csv(path: str, cols: Columns, batch_rows: int) -> Iterator[list[SourceRow]]:
    try:
        reader = pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,
            chunksize=batch_rows,
            encoding="utf-8",
            encoding_errors="replace",  # a bad byte fails its row below, not the whole file
        )
        start = 0
        for i, frame in enumerate(reader):
            if i == 0:
                check_columns(list(frame.columns), cols, path)
            rows = _rows_from_records(frame.to_dict("records"), start, cols)
            yield [
                dataclasses.replace(r, problem="text is not valid UTF-8")
                if r.text and "\ufffd" in r.text
                else r
                for r in rows
            ]
            start += len(frame)
    except pd.errors.EmptyDataError as exc:
        raise SourceError(f"{path}: the file is empty") from exc
    except pd.errors.ParserError as exc:
        raise SourceError(f"{path}: not valid CSV: {exc}".strip()) from exc


def read_jsonl(path: str, cols: Columns, batch_rows: int) -> Iterator[list[SourceRow]]:
    batch: list[SourceRow] = []
    row = 0
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
                batch.extend(_rows_from_records([record], row, cols))
            except UnicodeDecodeError:
                batch.append(
                    SourceRow(row, None, None, problem=f"line {line_no} is not valid UTF-8")
                )
            except ValueError as exc:
                batch.append(
                    SourceRow(row, None, None, problem=f"line {line_no}: invalid JSON ({exc})")
                )
            row += 1
            if len(batch) >= batch_rows:
                yield batch
                batch = []
    if batch:
        yield batch
    elif row == 0:
        raise SourceError(f"{path}: the file is empty")


def read_parquet(path: str, cols: Columns, batch_rows: int) -> Iterator[list[SourceRow]]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SourceError(f"{path}: not a Parquet file ({exc})") from exc
    names = pf.schema_arrow.names
    check_columns(names, cols, path)
    text_type = pf.schema_arrow.field(cols.text).type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
        raise SourceError(f"{path}: column {cols.text!r} is {text_type}, expected strings")
    optional = (cols.language, cols.voice, cols.reference_audio, cols.reference_text)
    wanted = [c for c in (cols.id, cols.text, *optional) if c in names]
    start = 0
    for record_batch in pf.iter_batches(batch_size=batch_rows, columns=wanted):
        records = record_batch.to_pylist()
        yield _rows_from_records(records, start, cols)
        start += len(records)


def _text_file_row(row: int, item_id: str, data: bytes, suffix: str) -> SourceRow:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return SourceRow(row, item_id, None, problem="file is not valid UTF-8")
    # Editors on Windows start files with a BOM: kept, a .md's first heading is not a heading.
    text = text.removeprefix("\ufeff")
    text_format = "markdown" if suffix in (".md", ".markdown") else "plain"
    return SourceRow(row, item_id, text, text_format=text_format)


@dataclass(frozen=True, slots=True)
class FileLimits:
    """What a folder or S3-prefix source may read (see ``RunSettings.max_file_bytes``)."""

    max_bytes: int = DEFAULT_MAX_FILE_BYTES
    follow_symlinks: bool = False  # to files outside the source folder (inside: always)


def _too_large(size: int, limits: FileLimits) -> str:
    return (
        f"file is {size:,} bytes, over the {limits.max_bytes:,}-byte limit: not read "
        "(raise --max-file-bytes to read it)"
    )


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


@dataclass(frozen=True, slots=True)
class _Entry:
    """A file of a folder source: its id, its path, and whether to open it through a link."""

    item_id: str
    path: str
    follow: bool
    problem: str | None = None
    size: int = 0  # as listed: a file over the cap is not even opened


def _folder_entries(root: str, limits: FileLimits) -> Iterator[_Entry]:
    """The folder's .txt/.md files in id order, lstat'ed, never opened. Symbolic links to
    files outside the folder become entries with a problem (unless ``follow_symlinks``);
    fifos, sockets, devices and links to folders are skipped with a note (opening a fifo
    blocks; a linked folder may be anywhere, or contain the folder itself)."""
    real_root = os.path.realpath(root)
    found: list[_Entry] = []
    for folder, dirs, files in os.walk(root):  # never into linked folders: they are noted
        for name in sorted([*dirs, *files]):
            path = os.path.join(folder, name)
            item_id = Path(path).relative_to(root).as_posix()
            try:
                info = os.lstat(path)
            except OSError as exc:
                if name in files and name.lower().endswith(TEXT_SUFFIXES):
                    found.append(_Entry(item_id, path, False, _read_problem(exc)))
                continue
            if stat.S_ISDIR(info.st_mode):
                continue  # walked by os.walk
            if not name.lower().endswith(TEXT_SUFFIXES) and not stat.S_ISLNK(info.st_mode):
                continue
            if stat.S_ISLNK(info.st_mode):
                target = os.path.realpath(path)
                if os.path.isdir(target):
                    logger.warning("%s: a link to a folder, not read", item_id)
                    continue
                if not name.lower().endswith(TEXT_SUFFIXES):
                    continue
                if not _inside(target, real_root) and not limits.follow_symlinks:
                    problem = (
                        "a symbolic link to a file outside the source folder: not read "
                        "(--follow-symlinks reads it)"
                    )
                    found.append(_Entry(item_id, path, False, problem))
                    continue
                try:
                    info = os.stat(path)
                except OSError as exc:  # a dangling link, or a loop of links
                    found.append(_Entry(item_id, path, True, _read_problem(exc)))
                    continue
                if not stat.S_ISREG(info.st_mode):
                    logger.warning("%s: a link to %s, not read", item_id, _kind(info.st_mode))
                    continue
                found.append(_Entry(item_id, path, True, size=info.st_size))
                continue
            if not stat.S_ISREG(info.st_mode):
                logger.warning("%s: %s, not read", item_id, _kind(info.st_mode))
                continue
            found.append(_Entry(item_id, path, False, size=info.st_size))
    yield from sorted(found, key=lambda e: Path(e.path))  # the order (rows) of earlier versions


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a fifo"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _read_problem(exc: OSError) -> str:
    return f"cannot read the file: {exc.strerror or type(exc).__name__}"


def read_text_file(path: str, limits: FileLimits, *, follow: bool = True) -> bytes | str:
    """A text file's bytes, or why it was not read (a string). Opened without blocking (a
    fifo put in its place since the listing would block) and, unless ``follow``, without
    following a link put there since; never more than ``limits.max_bytes`` read."""
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            return "a symbolic link put in place of the file while it was read: not read"
        return _read_problem(exc)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return f"{_kind(info.st_mode)}, not a text file: not read"
        if info.st_size > limits.max_bytes:
            return _too_large(info.st_size, limits)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(limits.max_bytes + 1)
        if len(data) > limits.max_bytes:  # grew since the stat
            return _too_large(len(data), limits)
        return data
    except OSError as exc:  # EIO on a failing disk, EISDIR...
        return _read_problem(exc)
    finally:
        os.close(fd)


def _file_row(row: int, entry: _Entry, limits: FileLimits) -> SourceRow:
    problem = entry.problem or (
        _too_large(entry.size, limits) if entry.size > limits.max_bytes else None
    )
    if problem:
        return SourceRow(row, entry.item_id, None, problem=problem)
    data = read_text_file(entry.path, limits, follow=entry.follow)
    if isinstance(data, str):
        return SourceRow(row, entry.item_id, None, problem=data)
    return _text_file_row(row, entry.item_id, data, Path(entry.path).suffix.lower())


def read_folder(
    path: str, batch_rows: int, limits: FileLimits = FileLimits()
) -> Iterator[list[SourceRow]]:
    """One row per .txt/.md file under ``path`` (id: its path below it), read a batch at a
    time. Only what is the folder's own is read (see ``_folder_entries``); a file that cannot
    be read, or is over ``limits.max_bytes``, fails its own row."""
    entries = list(_folder_entries(path, limits))
    if not entries:
        raise SourceError(f"{path}: no .txt or .md files in this folder")
    for start in range(0, len(entries), batch_rows):
        yield [
            _file_row(start + i, entry, limits)
            for i, entry in enumerate(entries[start : start + batch_rows])
        ]


def _folder_prefix(uri: str) -> str:
    """A remote prefix read as a folder: "course" lists "course/...", never "course-2/..."."""
    return uri if uri.endswith("/") else uri + "/"


def _remote_suffix(uri: str) -> str:
    return PurePosixPath(uri).suffix.lower()


def _read_remote(
    uri: str, cols: Columns, batch_rows: int, limits: FileLimits = FileLimits()
) -> Iterator[list[SourceRow]]:
    reader = UriReader()
    try:
        if _remote_suffix(uri) in TABLE_SUFFIXES:
            # Tables are spooled to a local temp file so that pandas/pyarrow read them in batches.
            with reader.local_copy(uri) as local:
                yield from read_table(local, cols, batch_rows)
            return
        yield from _read_remote_prefix(reader, uri, batch_rows, limits)
    except SourceError:
        raise
    except StorageError as exc:  # named after the object, never the credentials
        raise SourceError(str(exc)) from exc
    except Exception as exc:
        raise SourceError(f"{uri}: {type(exc).__name__}: {exc}") from exc


def _read_remote_prefix(
    reader: UriReader, uri: str, batch_rows: int, limits: FileLimits = FileLimits()
) -> Iterator[list[SourceRow]]:
    """Like a folder: one row per .txt/.md object, id = key below the prefix. Listed page by
    page (S3 lists keys in order, so rows keep their positions from run to run) and read a
    batch at a time, never the whole listing or every body at once. An object over
    ``limits.max_bytes`` (by its listed size) is not fetched; one that cannot be fetched
    fails its own row."""
    prefix = _folder_prefix(uri)

    def read(listed: Listed) -> bytes | str:
        if listed.size > limits.max_bytes:
            return _too_large(listed.size, limits)
        try:
            # One byte over the limit: it may have grown since the listing.
            data = reader.read(prefix + listed.key, limits.max_bytes + 1)
        except StorageError as exc:  # this object's, named, no credentials
            return f"cannot read the object: {exc.message}"
        return _too_large(len(data), limits) if len(data) > limits.max_bytes else data

    def row(i: int, item_id: str, body: bytes | str) -> SourceRow:
        if isinstance(body, str):
            return SourceRow(i, item_id, None, problem=body)
        return _text_file_row(i, item_id, body, PurePosixPath(item_id).suffix.lower())

    def rows(listed: list[Listed], start: int) -> list[SourceRow]:
        return [
            row(start + i, o.key, body)
            for i, (o, body) in enumerate(zip(listed, readers.map(read, listed), strict=True))
        ]

    keys: list[Listed] = []
    start = 0
    # GETs wait on the network: a few at once keep a batch of small documents quick.
    with ThreadPoolExecutor(8, thread_name_prefix="fishflow-s3-read") as readers:
        for page in reader.pages(prefix, page_size=LIST_PAGE_SIZE):
            for listed in page:
                if PurePosixPath(listed.key).suffix.lower() in TEXT_SUFFIXES:
                    keys.append(listed)
                if len(keys) >= batch_rows:
                    yield rows(keys, start)
                    start, keys = start + len(keys), []
        if keys:
            yield rows(keys, start)
        elif start == 0:
            raise SourceError(f"{uri}: no .txt or .md objects under this prefix")


def read_table(path: str, cols: Columns, batch_rows: int) -> Iterator[list[SourceRow]]:
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return read_csv(path, cols, batch_rows)
    if suffix in (".jsonl", ".ndjson"):
        return read_jsonl(path, cols, batch_rows)
    if suffix == ".parquet":
        return read_parquet(path, cols, batch_rows)
    raise SourceError(f"{path}: unknown source type; use .csv, .jsonl, .parquet or a folder")


def check_source(
    uri: str,
    *,
    columns: Columns | None = None,
    table: str | None = None,
    query: str | None = None,
) -> None:
    """Raise SourceError now when `uri` cannot be read at all, before a run writes anything.

    Cheap on purpose (a stat, or one S3 request): what is inside is read_source's business.
    A database, given the run's ``columns``, is connected to and its table or query run
    with LIMIT 0 (``database.check_database``); without them, read_source says.
    Kinds of source it does not know (``scheme://`` other than s3) pass: read_source decides.
    """
    if is_remote_uri(uri):
        _check_remote(uri)
        return
    if "://" in uri or uri.startswith("env:"):
        from fishflow import database

        url = database.resolve_env(uri) if columns is not None else uri
        if columns is not None and database.is_database_url(url):
            database.check_database(url, columns, table=table, query=query)
        return
    path = Path(uri)
    if not path.exists():
        raise SourceError(f"{uri}: no such file or folder")
    if path.is_dir():
        if not os.access(path, os.R_OK | os.X_OK):
            raise SourceError(f"{uri}: cannot read this folder (permission denied)")
        return
    if not os.access(path, os.R_OK):
        raise SourceError(f"{uri}: cannot read this file (permission denied)")
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES + TABLE_SUFFIXES:
        raise SourceError(f"{uri}: unknown source type; use .csv, .jsonl, .parquet or a folder")
    if suffix in TABLE_SUFFIXES and path.stat().st_size == 0:
        raise SourceError(f"{uri}: the file is empty")


def _check_remote(uri: str) -> None:
    reader = UriReader()
    try:
        if _remote_suffix(uri) in TABLE_SUFFIXES:
            reader.check(uri)
            return
        first = next(reader.pages(_folder_prefix(uri), page_size=1, max_keys=1), [])
    except StorageError as error:  # named after the object, never the credentials
        if error.http_status == 404 and "NoSuchBucket" not in error.message:
            raise SourceError(f"{uri}: no such object") from error
        raise SourceError(error.message) from error
    if not first:
        raise SourceError(f"{uri}: no objects under this prefix")


def read_source(
    uri: str,
    cols: Columns = Columns(),
    batch_rows: int = 1000,
    *,
    table: str | None = None,
    query: str | None = None,
    limits: FileLimits = FileLimits(),
) -> Iterator[list[SourceRow]]:
    """Batches of rows from any supported source: a local path, an s3:// URI, or a database URL
    with ``table`` or ``query`` (see ``fishflow.database``); ``env:NAME`` names any of them.
    ``limits`` bound what text files (a folder, an S3 prefix, one file) may be read."""
    from fishflow import database  # SQLAlchemy is imported only when a database is read

    uri = database.resolve_env(uri)
    if database.is_database_url(uri):
        return database.read_database(uri, cols, batch_rows, table=table, query=query)
    if table or query:
        raise ConfigError(
            f"{uri}: --table and --query read a database; give a database URL as the source"
        )
    if is_remote_uri(uri):
        return _read_remote(uri, cols, batch_rows, limits)
    if os.path.isdir(uri):
        return read_folder(uri, batch_rows, limits)
    if not os.path.exists(uri):
        raise SourceError(f"{uri}: no such file or folder")
    suffix = Path(uri).suffix.lower()
    if suffix in TEXT_SUFFIXES:  # named by the user: followed if a link
        entry = _Entry(Path(uri).name, uri, True)
        return iter([[_file_row(0, entry, limits)]])
    return read_table(uri, cols, batch_rows)


def estimate_rows(uri: str, *, table: str | None = None) -> int | None:
    """About how many rows a source holds, cheaply (for progress), or None if unknown.

    Parquet from its footer, a folder by its files, CSV/JSONL by their line count (a quoted
    newline in a CSV cell counts twice: this is for a progress bar, not for the manifest); an
    S3 prefix by listing it (up to ``ESTIMATE_LIST_KEYS`` keys), a database ``table`` by
    COUNT(*). A query, or a CSV/JSONL/Parquet object on S3, is not estimated.
    """
    from fishflow import database

    try:
        uri = database.resolve_env(uri)
        if database.is_database_url(uri):
            return database.count_rows(uri, table) if table else None
        if is_remote_uri(uri):
            return _estimate_remote_prefix(uri)
        if "://" in uri:
            return None
        if os.path.isdir(uri):
            walk = os.walk(uri)
            return sum(1 for _, _, files in walk for f in files if f.endswith(TEXT_SUFFIXES))
        suffix = Path(uri).suffix.lower()
        if suffix == ".parquet":
            return pq.ParquetFile(uri).metadata.num_rows
        if suffix in (".csv", ".jsonl", ".ndjson"):
            lines = 0
            with open(uri, "rb") as fh:
                while block := fh.read(1 << 20):
                    lines += block.count(b"\n")
            return max(0, lines - (suffix == ".csv"))
        return 1 if suffix in TEXT_SUFFIXES else None
    except (OSError, ValueError, FishflowError):  # pyarrow's ArrowInvalid is a ValueError
        return None  # the reader says what is wrong with the source


ESTIMATE_LIST_KEYS = 20_000  # 20 listing requests: beyond, a progress total is not worth it


def _estimate_remote_prefix(uri: str) -> int | None:
    if _remote_suffix(uri) in TABLE_SUFFIXES:
        return None  # counting its rows would mean reading it
    try:
        # One key more than allowed tells a prefix with more keys than the listing may cover.
        pages = UriReader().pages(
            _folder_prefix(uri), page_size=LIST_PAGE_SIZE, max_keys=ESTIMATE_LIST_KEYS + 1
        )
        listed = [o.key for page in pages for o in page]
    except StorageError:  # the reader reports it, with the bucket's name
        return None
    if len(listed) > ESTIMATE_LIST_KEYS:
        return None
    return sum(PurePosixPath(key).suffix.lower() in TEXT_SUFFIXES for key in listed)
