"""Chunks synthesised once and reused: by the same run, by a resumed one, and by the next run."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import os
import tempfile
from collections.abc import Awaitable, Callable

import numpy as np
import soundfile as sf

from fishflow.audio import Audio
from fishflow.chunk_files import open_chunk_folder
from fishflow.errors import (
    StorageError,
)
from fishflow.loudness import Level
from fishflow.pool import Synthesized
from fishflow.storage import FILE_MODE, Store, write_error


def encode_chunk(audio: Audio) -> bytes:
    """Chunk audio as kept in the chunk cache and the output's copy of it: FLAC, lossless.

    Measured on a shared 2-core machine (44.1 kHz mono, libsndfile 1.2.2): 0.3-0.5 ms to encode
    and ~0.3-0.45 ms to decode per audio second, whatever the compression level (libsndfile's own
    copying and FLAC's MD5 dominate), to 23% of the raw bytes on the emulator's audio and ~60%
    on noise-like audio. libsndfile's default level: higher levels cost twice as much for 1%.
    """
    buf = io.BytesIO()
    sf.write(buf, audio.samples, audio.sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def decode_chunk(data: bytes, rate: int) -> Audio | None:
    """The audio `encode_chunk` made, or None when it is damaged or at another rate (a miss)."""
    try:
        samples, found_rate = sf.read(io.BytesIO(data), dtype="int16")
    except (RuntimeError, ValueError):  # sf.LibsndfileError is a RuntimeError
        return None
    return Audio(samples, found_rate) if found_rate == rate and samples.ndim == 1 else None


class ChunkCache:
    """Chunk audio by content key, so identical chunks are synthesised once.

    Chunks of multi-chunk items go to disk, FLAC-compressed (``encode_chunk``), so that an
    item whose text changed in one sentence re-synthesises only that chunk on the next run.
    A single-chunk item's audio is its published file, so keeping it twice would only cost.
    Identical chunks in flight at once share one request. Recent chunks stay in memory,
    64 MB in all, of which chunks that are also on disk take at most 32 MB: reading one back
    is cheap, so memory is mostly for audio that is nowhere else (a single-chunk item's, for
    an identical item later in the run). With one 64 MB budget, a 1 MB course peaked 47 MB
    higher in flac (489 MB against 442), at the same CPU.

    A chunk is written raw (16-bit samples, ``.s16``) when it is made and compressed once
    its item's writer has used it (``compress``, in the publisher thread, from the samples
    it holds): when synthesis outpaces the writer, chunks leave memory and are read back,
    and reading FLAC back would cost as much as encoding it again (~0.45 ms per audio
    second). Raw writes and reads stay on the event loop, as they were before FLAC: a
    thread hop per chunk cost ~15 MB of peak RSS in bench.longform (measured with glibc's
    arena per thread, before ``fishflow.memory``); FLAC decoding goes to a thread. Raw
    files left by an item that failed, a run that was stopped or an earlier version are read
    as they are, and compressed when used. With the output's copy (``RemoteChunks``) the
    chunk is encoded when it is made, and the same bytes kept locally. ``fishflow gc``
    deletes either kind of file.
    """

    def __init__(
        self,
        directory: str,
        memory_bytes: int = 64 << 20,
        *,
        on_disk_bytes: int = 32 << 20,
        remote: Store | None = None,
    ) -> None:
        self.directory = directory
        # The output's copy (see RemoteChunks), behind the local folder: another machine's
        # run reuses the chunks this one made.
        self.remote = RemoteChunks(remote) if remote is not None else None
        open_chunk_folder(directory)  # with the marker `fishflow gc` looks for
        self._pending: dict[str, asyncio.Future[Audio]] = {}
        self._memory: collections.OrderedDict[str, Audio] = collections.OrderedDict()
        self._memory_bytes = 0
        self._memory_limit = memory_bytes
        # Keys in memory that are also on disk, oldest first (their bytes are in _memory).
        self._on_disk: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._on_disk_bytes = 0
        self._on_disk_limit = on_disk_bytes
        self._raw: set[str] = set()  # keys kept raw on disk: compressed once used
        self._folders: set[str] = set()  # made already: one makedirs each, not one per file

    def _path(self, key: str, rate: int, suffix: str = "flac") -> str:
        return os.path.join(self.directory, key[:2], f"{key}.{rate}.{suffix}")

    def _forget(self, key: str) -> None:
        nbytes = self._memory.pop(key).samples.nbytes
        self._memory_bytes -= nbytes
        if key in self._on_disk:
            del self._on_disk[key]
            self._on_disk_bytes -= nbytes

    def _remember(self, key: str, audio: Audio, *, on_disk: bool) -> None:
        if key in self._memory:
            self._forget(key)
        self._memory[key] = audio
        self._memory_bytes += audio.samples.nbytes
        if on_disk:
            self._on_disk[key] = None
            self._on_disk_bytes += audio.samples.nbytes
        while self._on_disk_bytes > self._on_disk_limit and len(self._on_disk) > 1:
            self._forget(next(iter(self._on_disk)))
        while self._memory_bytes > self._memory_limit and len(self._memory) > 1:
            self._forget(next(iter(self._memory)))

    def recall(self, key: str) -> Audio | None:
        """A chunk's audio if it is still in memory (on the event loop: no disk work)."""
        if (audio := self._memory.get(key)) is not None:
            self._memory.move_to_end(key)
            if key in self._on_disk:
                self._on_disk.move_to_end(key)
        return audio

    def read(self, key: str, rate: int) -> Audio | None:
        """A chunk's audio from disk, or None (blocking, any thread: memory is not touched).
        A damaged file is a miss: the chunk is made again and the file replaced."""
        for _ in range(2):  # a raw file may be compressed (and removed) between the two tries
            try:
                with open(self._path(key, rate), "rb") as fh:
                    if (audio := decode_chunk(fh.read(), rate)) is not None:
                        return audio
            except FileNotFoundError:
                pass
            try:  # raw: made since (a damaged file is replaced only once the chunk is used)
                samples = np.fromfile(self._path(key, rate, "s16"), dtype=np.int16)
            except FileNotFoundError:
                continue
            self._raw.add(key)
            return Audio(samples, rate)
        return None

    def compress(self, key: str, audio: Audio) -> None:
        """Once a chunk's audio has been used: its raw file on disk, if any, becomes FLAC
        (blocking, any thread)."""
        if key not in self._raw:
            return
        self._raw.discard(key)
        self._write(key, audio.sample_rate, encode_chunk(audio))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(key, audio.sample_rate, "s16"))

    def keep_level(self, key: str, level: Level) -> None:
        """Keep a chunk's loudness with its audio in memory, so it is measured once."""
        if (audio := self._memory.get(key)) is not None:
            self._memory[key] = Audio(audio.samples, audio.sample_rate, level)

    def _write(self, key: str, rate: int, data: bytes | memoryview, suffix: str = "flac") -> None:
        path = self._path(key, rate, suffix)
        try:
            if (folder := os.path.dirname(path)) not in self._folders:
                os.makedirs(folder, exist_ok=True)
                self._folders.add(folder)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    os.fchmod(fd, FILE_MODE)  # not mkstemp's 0600: another account may share it
                    fh.write(data)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:  # disk full: the run stops (its items are redone on resume)
            raise write_error(path, exc) from None

    def _keep(self, key: str, audio: Audio) -> None:
        if self.remote is None:
            self._write(key, audio.sample_rate, np.ascontiguousarray(audio.samples).data, "s16")
            self._raw.add(key)
            return
        data = encode_chunk(audio)  # encoded once: the local folder and the output's copy
        self._write(key, audio.sample_rate, data)
        self.remote.keep_encoded(key, audio.sample_rate, data)

    def _fetch(self, key: str, rate: int) -> Audio | None:
        """From the output's copy, kept in the local folder as fetched (no re-encoding)."""
        assert self.remote is not None
        data = self.remote.fetch_encoded(key, rate)
        if data is None:
            return None
        if (audio := decode_chunk(data, rate)) is None:
            self.remote.errors += 1  # damaged: made again, like a miss
            return None
        self._write(key, rate, data)
        return audio

    async def _persist(self, key: str, audio: Audio) -> None:
        """Remember a chunk of a multi-chunk item and keep it on disk (and in the output's
        copy)."""
        self._remember(key, audio, on_disk=True)
        if self.remote is None:
            self._keep(key, audio)  # raw: one write (~0.04 ms per audio second)
        else:
            # Awaited: a chunk counts as made once a later run (here or, through the output's
            # copy, elsewhere) could reuse it.
            await asyncio.to_thread(self._keep, key, audio)

    async def get_or_make(
        self, key: str, rate: int, make: Callable[[], Awaitable[Synthesized]], *, persist: bool
    ) -> tuple[Audio, Synthesized | None]:
        """The chunk's audio, and how it was made (None when it was reused)."""
        reused: Audio | None = None
        while (pending := self._pending.get(key)) is not None:
            try:
                reused = await asyncio.shield(pending)
                break
            except asyncio.CancelledError:
                if (task := asyncio.current_task()) is not None and task.cancelling():
                    raise
                # The item making it was abandoned (made again in another voice): make it here.
        if reused is None:
            reused = self.recall(key)
        if reused is not None:
            if persist and key not in self._on_disk:
                # Made for a single-chunk item, so only in memory: this item's writer may have
                # to read it back from disk, and a later run reuse it from there.
                await self._persist(key, reused)
            return reused, None
        future: asyncio.Future[Audio] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            # Only chunks of multi-chunk items are kept on disk: a single-chunk item would look
            # for a file that is, but for a chunk shared with a longer item, never there.
            found = None
            if persist and os.path.exists(self._path(key, rate)):
                found = await asyncio.to_thread(self.read, key, rate)  # FLAC: decoded off the loop
            elif persist:
                found = self.read(key, rate)  # a miss (two stats) or raw: cheap enough here
            if found is None and persist and self.remote is not None:
                found = await asyncio.to_thread(self._fetch, key, rate)
            if found is not None:
                self._remember(key, found, on_disk=True)
                future.set_result(found)
                return found, None
            made = await make()
            if persist and not (made.checked is not None and made.checked.marked):
                await self._persist(key, made.audio)
            else:
                # A marked answer (every one suspect) stays out of the disk cache: the next run
                # makes it again rather than reuse it.
                self._remember(key, made.audio, on_disk=False)
            future.set_result(made.audio)
            return made.audio, made
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs "never retrieved"
            raise
        finally:
            del self._pending[key]


class RemoteChunks:
    """Chunk audio kept under the output (``.fishflow/chunks/``), FLAC-compressed.

    One GET when a chunk of a multi-chunk item is not in the local cache (a 404 when it is
    new), one PUT when it is made, of the bytes the local cache keeps (``encode_chunk``).
    FLAC is lossless, so a reused chunk is the same samples; a generic compressor (zlib -1)
    kept 79% of the emulator's audio where FLAC keeps 23%, and took longer. Failures only
    cost reuse: they are counted, never raised.
    """

    PREFIX = ".fishflow/chunks"

    def __init__(self, store: Store) -> None:
        self.store = store
        self.errors = 0

    def key(self, key: str, rate: int) -> str:
        return f"{self.PREFIX}/{key[:2]}/{key}.{rate}.flac"

    def fetch_encoded(self, key: str, rate: int) -> bytes | None:
        try:
            return self.store.get(self.key(key, rate))
        except FileNotFoundError:
            return None
        except StorageError as exc:
            if exc.http_status != 404:
                self.errors += 1
            return None

    def fetch(self, key: str, rate: int) -> Audio | None:
        if (data := self.fetch_encoded(key, rate)) is None:
            return None
        if (audio := decode_chunk(data, rate)) is None:  # damaged: made again, like a miss
            self.errors += 1
        return audio

    def keep_encoded(self, key: str, rate: int, data: bytes) -> None:
        try:
            self.store.put(self.key(key, rate), data, "audio/flac", {})
        except StorageError:
            self.errors += 1

    def keep(self, key: str, audio: Audio) -> None:
        self.keep_encoded(key, audio.sample_rate, encode_chunk(audio))
