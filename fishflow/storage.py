"""Where audio and manifests go: a local folder or an S3 prefix, written atomically.

Keys are pure functions of the item id. Blocking boto3 and file calls run in worker threads
(the callers use ``asyncio.to_thread``); this module itself is synchronous.

This module is the only one that knows what is behind a location: the rest of fishflow asks a
``Store`` (is it ``remote``, ``open`` a key, ``read_parquet``) or, for a single file or prefix
named by a URI (a source, a reference recording, a lexicon), ``is_remote_uri``,
``read_uri_bytes``, ``local_copy`` and ``UriReader``. Nothing outside it checks a scheme.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import os
import posixpath
import re
import tempfile
import threading
import unicodedata
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, ClassVar, Protocol

from fishflow.errors import StorageError

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    import pyarrow as pa
    import pyarrow.parquet as pq

_UNSAFE = re.compile(r"[^\w.\-]+", re.UNICODE)
# File systems count a name's bytes (255 per component, UTF-8 on Linux), not its characters: a
# segment keeps room for the hash ("-1234abcd") and the longest suffix (".chapters.vtt").
_MAX_SEGMENT = 120  # characters, as before: names of earlier runs stay as they were
MAX_NAME_BYTES = 255
LONGEST_SUFFIX = ".chapters.vtt"
_MAX_SEGMENT_BYTES = MAX_NAME_BYTES - len("-12345678") - len(LONGEST_SUFFIX)  # 233
# A whole key: S3 allows 1,024 bytes with the output's prefix and "audio/" before it.
_MAX_KEY_CHARS = 400
_MAX_KEY_BYTES = 700
# How long a presigned S3 link works: the most SigV4 allows (links signed with temporary
# credentials, an assumed role's, end with those credentials, often sooner).
LINK_EXPIRES_S = 7 * 24 * 3600


def _read_umask() -> int:
    # os.umask can only be read by setting it: done once, at import, before any thread writes.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Published files get the mode a plain open() would give (0644 under the usual umask 022), so
# a web server running as another user can serve them; mkstemp alone makes them 0600.
FILE_MODE = 0o666 & ~_read_umask()


# Failures of the output itself: every later item would fail alike, so the run stops. Writing
# the same item again once there is room (or the disk is back) can succeed: retryable.
_OUTPUT_FAILURES = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


def write_error(what: str, exc: BaseException) -> StorageError:
    """A write of the run's own state (chunk cache, journal, libsndfile's audio) failed: the
    run stops. A failure of the disk itself (full, over quota, read-only, I/O) is retryable:
    the same write succeeds once it is mended, so `resume` and a re-run redo the items it
    failed (see ``manifest.output_write_failure``)."""
    no_room = getattr(exc, "errno", None) in _OUTPUT_FAILURES or "No space left" in str(exc)
    reason = getattr(exc, "strerror", None) or str(exc)
    return StorageError(f"cannot write {what}: {reason}", fatal=True, retryable=no_room)


def output_write_error(exc: OSError, path: str, root: str) -> StorageError:
    """A local write's failure, classified: the output's own (disk full, quota, read-only, an
    I/O error, its folder not writable) stops the run; anything else (a name the file system
    refuses, one file's permissions) fails only the item that wrote `path`."""
    reason = exc.strerror or type(exc).__name__
    message = f"cannot write {path}: {reason}"
    if exc.errno in _OUTPUT_FAILURES:
        return StorageError(message, fatal=True, retryable=True)
    if exc.errno in (errno.EACCES, errno.EPERM) and not os.access(root, os.W_OK):
        return StorageError(f"{message} (the output folder is not writable)", fatal=True)
    return StorageError(message, fatal=False, retryable=False)


S3_SCHEME = "s3://"


def is_remote_uri(uri: str) -> bool:
    """Whether `uri` names an object store location (``s3://bucket/key``), not a local path."""
    return uri.startswith(S3_SCHEME)


def is_relative_path(location: str) -> bool:
    """Whether `location` is a local path relative to the working folder (not a URL, not
    absolute)."""
    return "://" not in location and not os.path.isabs(location)


def relative_paths(**locations: str) -> list[str]:
    """Which of the named locations are relative paths: a deployment's run works in a
    temporary folder of its worker, deleted after the run, so such a path would read nothing
    and write where nobody looks."""
    return [f"{name} {value!r}" for name, value in locations.items() if is_relative_path(value)]


def parse_s3_uri(uri: str) -> tuple[str, str]:
    rest = uri.removeprefix(S3_SCHEME)
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"not an S3 URI: {uri!r}", fatal=True)
    return bucket, key


def safe_key(item_id: str) -> str:
    """A storage key from an item id: no '..', no leading '/', no control characters, each
    segment short enough in bytes for any file system once a hash and a suffix are added.

    Whenever cleaning changes the id, a short hash of the original is appended, so two ids
    that clean to the same text never share a key (and an unchanged id never collides with a
    changed one).
    """
    normalized = unicodedata.normalize("NFC", item_id).replace("\\", "/")
    segments = []
    for part in normalized.split("/"):
        part = "".join(ch for ch in part if unicodedata.category(ch)[0] != "C")
        part = _UNSAFE.sub("_", part.strip()).strip("._") or ""
        if part:
            segments.append(_cut_bytes(part[:_MAX_SEGMENT], _MAX_SEGMENT_BYTES))
    cleaned = _cut_bytes("/".join(segments)[:_MAX_KEY_CHARS], _MAX_KEY_BYTES).rstrip("/")
    cleaned = cleaned or "item"
    if cleaned != item_id:
        cleaned += "-" + hashlib.sha256(item_id.encode()).hexdigest()[:8]
    return cleaned


def _cut_bytes(text: str, limit: int) -> str:
    """The longest start of `text` of at most `limit` UTF-8 bytes (never half a character)."""
    data = text.encode()
    return text if len(data) <= limit else data[:limit].decode(errors="ignore")


@dataclass(frozen=True, slots=True)
class Listed:
    """A stored file or object, as a listing shows it."""

    key: str
    size: int
    modified: float  # seconds since the epoch


class Versioned(Protocol):
    """One small object changed only if it is still the version last read (compare and swap),
    each version named by a tag: what a lock kept in the output needs (``fishflow.lock``).

    Atomic on both stores: S3's conditional writes (``If-None-Match: *`` to create,
    ``If-Match: <etag>`` to replace), on a local disk an exclusive ``flock`` around each
    read-decide-write.
    """

    def read(self) -> tuple[bytes, str] | None:
        """The object and its tag, or None if there is none."""
        ...

    def create(self, data: bytes) -> str | None:
        """The new tag, or None if the object exists."""
        ...

    def replace(self, data: bytes, tag: str) -> str | None:
        """The new tag, or None if the object is no longer the version `tag`."""
        ...

    def remove(self, tag: str, *, tombstone: bytes) -> None:
        """Remove the object if it is still the version `tag`. Where only a write is atomic
        (S3: a conditional put, on every S3; a conditional delete, not) it is overwritten with
        `tombstone` instead, which readers must take as no object."""
        ...


class Store(Protocol):
    """An output location. Keys are relative ('audio/x.wav'); URIs are what users read."""

    root: str
    write_threads: ClassVar[int]  # how many puts are worth running at once
    # Reached from other machines too (S3): runs elsewhere keep their state in it as well, and
    # this machine's working state lives in its cache, not beside the output (``state_dir``).
    remote: ClassVar[bool]

    def uri(self, key: str) -> str: ...
    def open(self, key: str) -> AbstractContextManager[IO[bytes]]: ...
    def put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> str: ...
    def put_file(self, key: str, path: str, content_type: str) -> str: ...
    def staging_path(self, key: str) -> str: ...
    def publish_file(
        self, key: str, path: str, content_type: str, metadata: dict[str, str]
    ) -> str: ...
    def get(self, key: str) -> bytes: ...
    def list(self, prefix: str) -> builtins.list[str]: ...
    def list_sized(self, prefix: str) -> builtins.list[Listed]: ...
    def delete(self, keys: builtins.list[str]) -> builtins.list[str]: ...
    def key_of(self, uri: str) -> str | None: ...
    def versioned(self, key: str, content_type: str) -> Versioned: ...
    def link(
        self, key: str, *, page: str | None = None, expires_s: int = LINK_EXPIRES_S
    ) -> str: ...


@dataclass
class LocalStore:
    root: str
    # Files created at once in one folder contend for its lock: six writer threads cost
    # 0.3-0.45 ms of system CPU per 176 kB file here, one thread 0.08 ms.
    write_threads: ClassVar[int] = 1
    remote: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self.root = os.path.abspath(self.root)
        self._made: set[str] = set()  # folders known to exist: one makedirs each, not per file
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create output folder {self.root}: {exc.strerror}", fatal=True
            ) from exc
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"output folder {self.root} is not writable", fatal=True)

    def uri(self, key: str) -> str:
        return os.path.join(self.root, key)

    def key_of(self, uri: str) -> str | None:
        """The key of a URI this store gave (None for one outside it)."""
        rel = os.path.relpath(os.path.abspath(uri), self.root)
        return None if rel.startswith("..") else Path(rel).as_posix()

    def link(self, key: str, *, page: str | None = None, expires_s: int = LINK_EXPIRES_S) -> str:
        """An address of ``key`` for a browser: relative to the page stored at ``page`` (so the
        folder can be moved, or served as it is), else a file:// URL."""
        if page is None:
            return Path(self.uri(key)).as_uri()
        return urllib.parse.quote(posixpath.relpath(key, posixpath.dirname(page) or "."))

    def versioned(self, key: str, content_type: str) -> Versioned:
        """``key`` as an object changed only by compare and swap (see ``Versioned``)."""
        return _LocalVersioned(self.uri(key))

    def _make_folder(self, folder: str) -> None:
        if folder not in self._made:  # once per folder and store
            os.makedirs(folder, exist_ok=True)
            self._made.add(folder)

    def _temp_in(self, folder: str, suffix: str = "") -> tuple[int, str]:
        """A new temporary file in `folder`, made if needed, and made again if it went away
        since (`delete` removes folders it empties, maybe through another store on this root)."""
        self._make_folder(folder)
        try:
            return tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
        except FileNotFoundError:
            self._made.discard(folder)
            self._make_folder(folder)
            return tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)

    def _atomic(self, key: str, write: Any) -> str:
        path = self.uri(key)
        folder = os.path.dirname(path)
        try:
            fd, tmp = self._temp_in(folder)
            try:
                with os.fdopen(fd, "wb") as fh:
                    write(fh)
                    os.fchmod(fh.fileno(), FILE_MODE)
                os.replace(tmp, path)  # readers see the old file or the whole new one
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            raise output_write_error(exc, path, self.root) from exc
        return path

    def put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> str:
        return self._atomic(key, lambda fh: fh.write(data))

    def put_file(self, key: str, path: str, content_type: str) -> str:
        def copy(fh: Any) -> None:
            with open(path, "rb") as src:
                while block := src.read(1 << 20):
                    fh.write(block)

        return self._atomic(key, copy)

    def staging_path(self, key: str) -> str:
        """A new empty file beside where ``key`` goes, to be written and then published by a
        rename (same folder, same file system: atomic)."""
        path = self.uri(key)
        folder = os.path.dirname(path)
        try:
            fd, tmp = self._temp_in(folder, Path(path).suffix)
        except OSError as exc:
            raise output_write_error(exc, path, self.root) from None
        os.close(fd)
        return tmp

    def publish_file(self, key: str, path: str, content_type: str, metadata: dict[str, str]) -> str:
        """Move a file made by ``staging_path`` to ``key``: readers see the old file or the
        whole new one."""
        dest = self.uri(key)
        try:
            os.chmod(path, FILE_MODE)
            os.replace(path, dest)
        except OSError as exc:
            raise output_write_error(exc, dest, self.root) from None
        return dest

    def get(self, key: str) -> bytes:
        return Path(self.uri(key)).read_bytes()

    def open(self, key: str) -> AbstractContextManager[IO[bytes]]:
        """The file of ``key``, for reading (FileNotFoundError if there is none)."""
        return open(self.uri(key), "rb")

    def list(self, prefix: str) -> builtins.list[str]:
        base = Path(self.uri(prefix))
        if not base.exists():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        )

    def list_sized(self, prefix: str) -> builtins.list[Listed]:
        found = []
        for key in self.list(prefix):
            with contextlib.suppress(FileNotFoundError):  # deleted since the listing
                stat = os.stat(self.uri(key))
                found.append(Listed(key, stat.st_size, stat.st_mtime))
        return found

    def delete(self, keys: builtins.list[str]) -> builtins.list[str]:
        """Delete files (missing ones are fine); returns what could not be deleted (nothing:
        a local failure raises)."""
        for key in keys:
            Path(self.uri(key)).unlink(missing_ok=True)
        # Folders the deletions left empty go too (a removed lesson's audio/2-setup/), deepest
        # first, never a top-level one (audio/): an object store has no folders to leave.
        for folder in sorted({os.path.dirname(k) for k in keys}, key=len, reverse=True):
            while "/" in folder:
                try:
                    os.rmdir(self.uri(folder))
                except OSError:  # not empty, or gone already
                    break
                self._made.discard(self.uri(folder))
                folder = os.path.dirname(folder)
        return []


class _LocalVersioned:
    """A file whose every read-decide-write holds an exclusive flock on ``<file>.guard``; the
    tag is the content's sha256."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.guard = path + ".guard"

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[None]:
        import fcntl

        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd = os.open(self.guard, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot lock {self.path}: {exc.strerror}", fatal=True) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for microseconds: read, decide, write
            yield
        except OSError as exc:
            raise StorageError(f"cannot write {self.path}: {exc.strerror}", fatal=True) from None
        finally:
            os.close(fd)

    def _read(self) -> tuple[bytes, str] | None:
        try:
            with open(self.path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def _write(self, data: bytes) -> str:
        tmp = f"{self.path}.{os.urandom(16).hex()}"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, self.path)
        return hashlib.sha256(data).hexdigest()

    def read(self) -> tuple[bytes, str] | None:
        with self._guarded():
            return self._read()

    def create(self, data: bytes) -> str | None:
        with self._guarded():
            return None if self._read() is not None else self._write(data)

    def replace(self, data: bytes, tag: str) -> str | None:
        with self._guarded():
            current = self._read()
            return self._write(data) if current is not None and current[1] == tag else None

    def remove(self, tag: str, *, tombstone: bytes) -> None:
        with self._guarded():
            current = self._read()
            if current is not None and current[1] == tag:
                os.unlink(self.path)


def s3_client() -> Any:
    import boto3  # imported late: 0.3 s that local runs do not need
    from botocore.config import Config

    # botocore is the one layer that retries S3 (5xx, throttling, SlowDown). SigV4 for
    # presigned links too: botocore's default there is SigV2, which newer buckets refuse.
    return boto3.client(
        "s3",
        config=Config(retries={"mode": "standard", "max_attempts": 6}, signature_version="s3v4"),
    )


def wrap_s3_error(exc: Exception, where: str) -> StorageError:
    """A StorageError that names the bucket and the cause, never the credentials."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return StorageError(f"{where}: no AWS credentials found", fatal=True)
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        fatal = code in (
            "NoSuchBucket",
            "AccessDenied",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AllAccessDisabled",
            "403",
        )
        retryable = not fatal and (
            status is None or status >= 500 or code in ("SlowDown", "Throttling")
        )
        hint = " (does the bucket exist?)" if code == "NoSuchBucket" else ""
        return StorageError(
            f"{where}: S3 {code or status}{hint}",
            http_status=status,
            retryable=retryable,
            fatal=fatal,
        )
    if isinstance(exc, BotoCoreError):
        return StorageError(f"{where}: {type(exc).__name__}", retryable=True)
    return StorageError(f"{where}: {type(exc).__name__}: {exc}")


@dataclass
class S3Store:
    root: str  # s3://bucket/prefix
    sse: str | None = None  # AES256 | aws:kms
    write_threads: ClassVar[int] = 16  # uploads wait on the network, not the CPU
    remote: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self.bucket, prefix = parse_s3_uri(self.root)
        self.prefix = prefix.strip("/")
        self.client = s3_client()
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            err = wrap_s3_error(exc, f"s3://{self.bucket}")
            err.fatal = True
            raise err from exc

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def key_of(self, uri: str) -> str | None:
        """The key of a URI this store gave (None for one outside it)."""
        start = self.uri("")
        return uri[len(start) :] if uri.startswith(start) else None

    def link(self, key: str, *, page: str | None = None, expires_s: int = LINK_EXPIRES_S) -> str:
        """A presigned GET URL of ``key`` (wherever the page is): the bucket needs no public
        access. Signed here, without a request to S3."""
        try:
            url: str = self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self._key(key)},
                ExpiresIn=expires_s,
            )
        except Exception as exc:
            raise wrap_s3_error(exc, self.uri(key)) from exc
        return url

    def versioned(self, key: str, content_type: str) -> Versioned:
        """``key`` as an object changed only by compare and swap (see ``Versioned``)."""
        return _S3Versioned(self, key, content_type)

    def _extra(self, content_type: str, metadata: dict[str, str] | None = None) -> dict[str, Any]:
        extra: dict[str, Any] = {"ContentType": content_type, "ChecksumAlgorithm": "SHA256"}
        if metadata:
            extra["Metadata"] = metadata
        if self.sse:
            extra["ServerSideEncryption"] = self.sse
        return extra

    def put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> str:
        import io

        try:
            # The transfer manager goes multipart above 8 MB; either way the object appears whole.
            self.client.upload_fileobj(
                io.BytesIO(data),
                self.bucket,
                self._key(key),
                ExtraArgs=self._extra(content_type, metadata),
            )
        except Exception as exc:
            raise wrap_s3_error(exc, self.uri(key)) from exc
        return self.uri(key)

    def put_file(self, key: str, path: str, content_type: str) -> str:
        try:
            self.client.upload_file(
                path, self.bucket, self._key(key), ExtraArgs=self._extra(content_type)
            )
        except Exception as exc:
            raise wrap_s3_error(exc, self.uri(key)) from exc
        return self.uri(key)

    def staging_path(self, key: str) -> str:
        """A local temporary file to write ``key`` into before ``publish_file`` uploads it."""
        fd, tmp = tempfile.mkstemp(prefix="fishflow-", suffix=Path(key).suffix)
        os.close(fd)
        return tmp

    def publish_file(self, key: str, path: str, content_type: str, metadata: dict[str, str]) -> str:
        """Upload a staged file (multipart above 8 MB, the object appears whole) and remove it.

        Two part uploads at a time per file: up to 16 files upload at once (write_threads),
        and each part in flight holds its 8 MB in memory.
        """
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_chunksize=8 << 20, max_concurrency=2)
        try:
            self.client.upload_file(
                path,
                self.bucket,
                self._key(key),
                ExtraArgs=self._extra(content_type, metadata),
                Config=config,
            )
        except Exception as exc:
            raise wrap_s3_error(exc, self.uri(key)) from None
        finally:
            os.unlink(path)
        return self.uri(key)

    def get(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except Exception as exc:
            raise wrap_s3_error(exc, self.uri(key)) from exc

    def open(self, key: str) -> AbstractContextManager[IO[bytes]]:
        """A local temporary copy of ``key``, for reading (removed when closed): Parquet
        readers seek, which a streamed body cannot."""
        return _spooled(self.client, self.bucket, self._key(key), self.uri(key))

    def list(self, prefix: str) -> builtins.list[str]:
        return sorted(o.key for o in self.list_sized(prefix))

    def list_sized(self, prefix: str) -> builtins.list[Listed]:
        start = len(self._key(""))
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix)
            )
            return [
                Listed(o["Key"][start:], o["Size"], o["LastModified"].timestamp())
                for page in pages
                for o in page.get("Contents", [])
            ]
        except Exception as exc:
            raise wrap_s3_error(exc, self.uri(prefix)) from exc

    def delete(self, keys: builtins.list[str]) -> builtins.list[str]:
        """Delete objects, 1,000 per request; returns those S3 refused, each with its reason
        ("key: AccessDenied"), for the caller to report or leave."""
        refused: builtins.list[str] = []
        start = len(self._key(""))
        for i in range(0, len(keys), 1000):
            objects = [{"Key": self._key(k)} for k in keys[i : i + 1000]]
            try:
                answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects})
            except Exception as exc:
                raise wrap_s3_error(exc, self.uri(keys[i])) from None
            refused += [
                f"{e['Key'][start:]}: {e.get('Code', 'refused')}" for e in answer.get("Errors", [])
            ]
        return refused


class _S3Versioned:
    """An object changed by conditional puts; the tag is its ETag."""

    def __init__(self, store: S3Store, key: str, content_type: str) -> None:
        self.store = store
        self.key = store._key(key)
        self.where = store.uri(key)
        self.content_type = content_type

    def _put(self, data: bytes, **condition: str) -> str | None:
        from botocore.exceptions import ClientError

        extra: dict[str, Any] = {"ServerSideEncryption": self.store.sse} if self.store.sse else {}
        try:
            response = self.store.client.put_object(
                Bucket=self.store.bucket,
                Key=self.key,
                Body=data,
                ContentType=self.content_type,
                **extra,
                **condition,
            )
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            # 412: not the version we expected; 409: a concurrent conditional write won;
            # 404 on If-Match: the object was removed meanwhile.
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412"):
                return None
            raise wrap_s3_error(exc, self.where) from None
        except Exception as exc:
            raise wrap_s3_error(exc, self.where) from None
        return str(response["ETag"])

    def read(self) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError

        try:
            obj = self.store.client.get_object(Bucket=self.store.bucket, Key=self.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise wrap_s3_error(exc, self.where) from None
        except Exception as exc:
            raise wrap_s3_error(exc, self.where) from None
        return obj["Body"].read(), str(obj["ETag"])

    def create(self, data: bytes) -> str | None:
        return self._put(data, IfNoneMatch="*")

    def replace(self, data: bytes, tag: str) -> str | None:
        return self._put(data, IfMatch=tag)

    def remove(self, tag: str, *, tombstone: bytes) -> None:
        current = self.read()
        if current is not None and current[1] == tag:
            self._put(tombstone, IfMatch=tag)


@contextlib.contextmanager
def _spooled(client: Any, bucket: str, key: str, uri: str) -> Iterator[IO[bytes]]:
    """Object `key` streamed into a temporary file (never whole in memory), rewound; one GET,
    so a missing object fails as ``get`` does (NoSuchKey, 404)."""
    import shutil

    with tempfile.TemporaryFile(prefix="fishflow-") as fh:
        try:
            body = client.get_object(Bucket=bucket, Key=key)["Body"]
            with contextlib.closing(body):
                shutil.copyfileobj(body, fh, 1 << 20)
        except Exception as exc:
            raise wrap_s3_error(exc, uri) from exc
        fh.seek(0)
        yield fh


def state_dir(store: Store) -> str:
    """Local working state of an output (journals, chunk audio): inside a local output, or in
    the user's cache for a remote (S3) output, where it is the fast layer in front of the copy
    kept under ``<out>/.fishflow/`` (see ``manifest.Journal`` and ``chunk_cache.RemoteChunks``)."""
    if not store.remote:
        return os.path.join(store.root, ".fishflow")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "fishflow", hashlib.sha256(store.root.encode()).hexdigest()[:16])


def open_store(out: str, sse: str | None = None) -> Store:
    return S3Store(out, sse=sse) if is_remote_uri(out) else LocalStore(out)


def output_exists(out: str) -> bool:
    """Whether there is an output at `out` to read, without creating one: a local folder must
    exist; a remote output is taken to (``open_store`` checks its bucket)."""
    return is_remote_uri(out) or os.path.isdir(out)


# -- Parquet in a store: the one reader and the one writer ----------------------------------------

PARQUET_TYPE = "application/vnd.apache.parquet"


@contextlib.contextmanager
def parquet_file(store: Store, key: str) -> Iterator[pq.ParquetFile]:
    """The Parquet file at `key`, open for its schema and columns (a remote one is copied to a
    local temporary file first)."""
    import pyarrow.parquet as pq

    with store.open(key) as fh, pq.ParquetFile(fh) as parquet:
        yield parquet


def read_parquet(
    store: Store, key: str, columns: list[str] | None = None, *, use_threads: bool = True
) -> pa.Table:
    """The table at `key` (only `columns`, if given). ``use_threads=False`` holds less memory
    for many small files read one after another (the manifest's parts)."""
    with parquet_file(store, key) as parquet:
        return parquet.read(columns=columns, use_threads=use_threads)


def write_parquet(store: Store, key: str, table: pa.Table) -> str:
    """Write `table` to `key` (zstd), whole or not at all; returns its URI."""
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="fishflow-parquet-") as tmp:
        path = os.path.join(tmp, "table.parquet")
        pq.write_table(table, path, compression="zstd")
        return store.put_file(key, path, PARQUET_TYPE)


# -- a single file or prefix named by a URI: sources, reference recordings, lexicons ---------------


def browser_url(uri: str) -> str:
    """A clickable address of a stored file: the S3 console for an object, file:// for a path."""
    if is_remote_uri(uri):
        bucket, key = parse_s3_uri(uri)
        query = urllib.parse.urlencode({"prefix": key})
        return f"https://s3.console.aws.amazon.com/s3/object/{bucket}?{query}"
    return "file://" + urllib.parse.quote(uri)


class UriReader:
    """Reads files and objects named by URI (a local path or ``s3://bucket/key``), with one S3
    client made when first needed and shared by the reader's threads (boto3 clients are
    thread-safe; making them is not). Failures of S3 raise StorageError naming the object and
    the cause, never the credentials; those of a local file raise OSError."""

    def __init__(self) -> None:
        self._client: Any = None
        self._made = threading.Lock()

    def _s3(self) -> Any:
        with self._made:
            if self._client is None:
                self._client = s3_client()
            return self._client

    def read(self, uri: str, max_bytes: int | None = None) -> bytes:
        """The bytes of `uri`, at most `max_bytes` of them (read one more to tell it is over)."""
        if not is_remote_uri(uri):
            with open(uri, "rb") as fh:
                return fh.read(-1 if max_bytes is None else max_bytes)
        bucket, key = parse_s3_uri(uri)
        try:
            body = self._s3().get_object(Bucket=bucket, Key=key)["Body"]
            with contextlib.closing(body):
                return bytes(body.read() if max_bytes is None else body.read(max_bytes))
        except Exception as exc:
            raise wrap_s3_error(exc, uri) from exc

    def check(self, uri: str) -> None:
        """Raise StorageError unless the object `uri` exists (one HEAD, without its body)."""
        bucket, key = parse_s3_uri(uri)
        try:
            self._s3().head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            raise wrap_s3_error(exc, uri) from exc

    def pages(
        self, prefix_uri: str, *, page_size: int = 1000, max_keys: int | None = None
    ) -> Iterator[builtins.list[Listed]]:
        """The objects under a remote prefix, one listing page at a time, in key order, each
        keyed below the prefix (its URI is ``prefix_uri + key``); at most `max_keys`."""
        bucket, prefix = parse_s3_uri(prefix_uri)
        config: dict[str, int] = {"PageSize": page_size}
        if max_keys is not None:
            config["MaxItems"] = max_keys
        try:
            pages = (
                self._s3()
                .get_paginator("list_objects_v2")
                .paginate(Bucket=bucket, Prefix=prefix, PaginationConfig=config)
            )
            for page in pages:
                yield [
                    Listed(o["Key"][len(prefix) :], int(o.get("Size", 0)), _epoch(o))
                    for o in page.get("Contents", [])
                ]
        except Exception as exc:
            raise wrap_s3_error(exc, prefix_uri) from exc

    @contextlib.contextmanager
    def local_copy(self, uri: str) -> Iterator[str]:
        """A path on this machine holding `uri`: the file itself, or a temporary download of
        the object (removed after), named with the object's suffix for readers that go by it."""
        if not is_remote_uri(uri):
            yield uri
            return
        bucket, key = parse_s3_uri(uri)
        with tempfile.TemporaryDirectory(prefix="fishflow-src-") as tmp:
            local = os.path.join(tmp, "source" + PurePosixPath(key).suffix.lower())
            try:
                self._s3().download_file(bucket, key, local)
            except Exception as exc:
                raise wrap_s3_error(exc, uri) from exc
            yield local


def _epoch(listed: dict[str, Any]) -> float:
    modified = listed.get("LastModified")
    return modified.timestamp() if modified is not None else 0.0


def read_uri_bytes(uri: str, max_bytes: int | None = None) -> bytes:
    """The bytes of the file or object at `uri` (see ``UriReader.read``)."""
    return UriReader().read(uri, max_bytes)
