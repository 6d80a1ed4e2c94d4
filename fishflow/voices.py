"""Voices of a run: reference recordings named in the source, and seeds for items without one.

A Fish Speech server speaks in the voice of a reference: an id it holds (``reference_id``) or a
recording sent with each request with its transcript (``references``). Without either, every
generation picks a voice from its random state, so the chunks of one item would each sound
different: fishflow then pins one seed per item.
"""

from __future__ import annotations

import collections
import hashlib
import os
import posixpath
import threading

from fishflow.errors import SourceError, StorageError
from fishflow.settings import Reference
from fishflow.storage import is_remote_uri, read_uri_bytes

# A reference of 10-30 s is what the model wants; anything far larger is a wrong file.
MAX_REFERENCE_BYTES = 20 << 20


def item_seed(item_id: str) -> int:
    """The seed of an item without a voice: stable per item id (its text may change without
    changing its voice, so unchanged chunks of an edited item can still be reused)."""
    return int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:4], "big") & 0x7FFF_FFFF


def resolve(path: str, source: str) -> str:
    """A reference path as written in a row: absolute, s3://, or relative to the source's
    folder (or prefix)."""
    if is_remote_uri(path) or os.path.isabs(path):
        return path
    if is_remote_uri(source):
        return posixpath.join(posixpath.dirname(source.rstrip("/")), path)
    if "://" in source or source.startswith("env:"):  # a database: no folder of its own
        return os.path.abspath(path)
    base = source if os.path.isdir(source) else os.path.dirname(os.path.abspath(source))
    return os.path.normpath(os.path.join(base, path))


class ReferenceFiles:
    """Reference recordings by path or URI, each read once per run.

    Validation reads a recording to hash it into the items' content keys; synthesis needs its
    bytes again. Recent recordings stay in memory (bounded by bytes); digests stay for the run.
    Thread-safe: rows are validated in a worker thread while the event loop synthesises.
    """

    def __init__(self, memory_bytes: int = 128 << 20) -> None:
        self._lock = threading.Lock()
        self._data: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._bytes = 0
        self._limit = memory_bytes
        self._digests: dict[str, str] = {}
        self._problems: dict[str, str] = {}
        self.reads = 0

    def _read(self, uri: str) -> bytes:
        self.reads += 1
        try:
            data = read_uri_bytes(uri, MAX_REFERENCE_BYTES + 1)
        except StorageError as exc:  # an object's, named without credentials
            raise SourceError(str(exc), fatal=False) from None
        except FileNotFoundError:
            raise SourceError(f"reference_audio {uri!r}: no such file", fatal=False) from None
        except OSError as exc:
            raise SourceError(
                f"reference_audio {uri!r}: cannot read it ({exc.strerror})", fatal=False
            ) from None
        if not data:
            raise SourceError(f"reference_audio {uri!r}: the file is empty", fatal=False)
        if len(data) > MAX_REFERENCE_BYTES:
            raise SourceError(
                f"reference_audio {uri!r}: over {MAX_REFERENCE_BYTES >> 20} MB; a reference "
                "of 10-30 s is what the model uses",
                fatal=False,
            )
        return data

    def _remember(self, uri: str, data: bytes) -> None:
        self._data[uri] = data
        self._bytes += len(data)
        while self._bytes > self._limit and len(self._data) > 1:
            _, old = self._data.popitem(last=False)
            self._bytes -= len(old)

    def audio(self, uri: str) -> bytes:
        """The recording's bytes (read at most once while it stays in memory)."""
        with self._lock:
            if (data := self._data.get(uri)) is not None:
                self._data.move_to_end(uri)
                return data
            if (problem := self._problems.get(uri)) is not None:
                raise SourceError(problem, fatal=False)
            try:
                data = self._read(uri)
            except SourceError as exc:
                self._problems[uri] = exc.message
                raise
            self._digests[uri] = hashlib.sha256(data).hexdigest()
            self._remember(uri, data)
            return data

    def digest(self, uri: str) -> str:
        """sha256 of the recording (SourceError when it cannot be read)."""
        with self._lock:
            if (digest := self._digests.get(uri)) is not None:
                return digest
        self.audio(uri)
        return self._digests[uri]

    def cached(self, uri: str) -> bool:
        with self._lock:
            return uri in self._data

    def reference(self, uri: str, text: str) -> Reference:
        """The inline reference to send: the recording and its transcript."""
        return Reference(audio=self.audio(uri), text=text)
