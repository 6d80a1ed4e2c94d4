"""What happens to one item, and to one batch of items, with no Prefect in sight.

source row -> validated Item -> chunks -> audio per chunk (shared between identical chunks)
-> audio file written chunk by chunk, in order, with captions -> stored objects -> manifest
rows. Every row ends as exactly one ItemRow:
``ok``, ``skipped`` (unchanged since an earlier run) or ``failed`` (with its ErrorRows).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import io
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import numpy as np
import soundfile as sf

from fishflow.asr import asr_verdict, heard
from fishflow.audio import Audio, stitch
from fishflow.chunk_files import open_chunk_folder
from fishflow.chunking import (
    Chunk,
    chunk_blocks,
    chunk_budget,
    chunk_key,
    split_at_clause,
    split_in_two,
)
from fishflow.errors import (
    ConfigError,
    CutAtTokenCap,
    FishflowError,
    SourceError,
    StorageError,
    SynthesisError,
    TextTooLong,
    VoiceRefused,
)
from fishflow.loudness import Level
from fishflow.manifest import ChunkRow, ErrorRow, ItemRow, Journal
from fishflow.markdown import code_cue, markdown_blocks
from fishflow.pool import ServerPool, Synthesized
from fishflow.publish import ItemPublisher, Published, sidecar_keys
from fishflow.qa import Checked, SpeechRates, Verdict, retry_seed
from fishflow.qa import check as check_answer
from fishflow.settings import (
    AudioSettings,
    CaptionSettings,
    ChunkSettings,
    QaSettings,
    Reference,
    SynthesisOptions,
    TextSettings,
    reference_id_problem,
)
from fishflow.sources import SourceRow
from fishflow.spoken import speak_blocks
from fishflow.storage import FILE_MODE, Store, safe_key, write_error
from fishflow.text import (
    Block,
    blocks_text,
    detect_language,
    is_speakable,
    plain_blocks,
    prose_text,
    text_sha256,
)
from fishflow.voices import ReferenceFiles, item_seed


@dataclass(frozen=True, slots=True)
class Item:
    row: int
    item_id: str
    text: str  # normalised
    language: str
    voice: str | None  # the row's reference_id
    content_key: str
    # What is sent, request by request, with the join after each; made when the row is
    # validated because the content key is computed from it.
    chunks: tuple[Chunk, ...] = ()
    reference_audio: str | None = None  # the row's reference recording (path or URI)
    reference_text: str | None = None  # ... and its transcript
    reference_digest: str | None = None  # of both: part of the content and chunk keys
    seed: int | None = None  # pinned when the item has no reference: one voice for its chunks
    only_code: bool = False  # Markdown of code blocks alone: what is spoken is their cue

    @property
    def voice_identity(self) -> str:
        return voice_identity(self.voice, self.reference_digest, self.seed)

    @property
    def voice_name(self) -> str | None:
        """How messages name the item's own voice (None: the run's)."""
        if self.reference_audio:
            return f"reference audio {self.reference_audio}"
        return self.voice


def voice_identity(voice: str | None, reference_digest: str | None, seed: int | None) -> str:
    """Everything of an item's voice that is not in the run's options, for its keys."""
    return f"{voice or ''}|{reference_digest or ''}|{'' if seed is None else seed}"


@dataclass(frozen=True, slots=True)
class Rejection:
    row: int
    item_id: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class PreviousItem:
    """An `ok` row of an earlier run of the same output."""

    content_key: str
    audio_uri: str
    audio_key: str
    duration_s: float | None
    bytes: int | None
    audio_sha256: str | None = None
    loudness_lufs: float | None = None
    captions_uri: str | None = None
    chapters_uri: str | None = None
    qa: str | None = None  # "marked": published, but every answer of a chunk was suspect
    seed: int | None = None  # the seed its voice came from, when it had no reference voice


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides what a run produces (plain data, safe to pass to tasks)."""

    options: SynthesisOptions = field(default_factory=SynthesisOptions)
    audio: AudioSettings = field(default_factory=AudioSettings)
    chunking: ChunkSettings = field(default_factory=ChunkSettings)
    captions: CaptionSettings = field(default_factory=CaptionSettings)
    text: TextSettings = field(default_factory=TextSettings)
    qa: QaSettings = field(default_factory=QaSettings)

    @functools.cached_property
    def _fingerprints(self) -> tuple[str, str]:
        # Computed once: model dumps and hashes per chunk showed up in the CPU profile.
        return self.options.fingerprint(), self.audio.fingerprint()

    def voice_fingerprint(self, voice: str | None) -> str:
        return f"{self._fingerprints[0]}:{voice or ''}"

    def content_key(self, chunks: Sequence[Chunk], voice: str | None) -> str:
        """Changes whenever the audio would: what each request says and the pause after it,
        the voice, the synthesis fields, the output format. A setting that changes neither
        (the budget of a one-chunk item, the pause at a join an item does not have) leaves
        the item's key, and so its audio, alone."""
        digest = hashlib.sha256(
            f"{self.voice_fingerprint(voice)}\0{self._fingerprints[1]}".encode()
        )
        for chunk in chunks:
            digest.update(f"\0{chunk.text}\0{self.audio.pause_after_ms(chunk.boundary)}".encode())
        return digest.hexdigest()[:32]


def validate_row(
    row: SourceRow,
    spec: RunSpec,
    seen: dict[str, int],
    *,
    references: ReferenceFiles | None = None,
) -> Item | Rejection:
    """Turn a source row into an Item, or say why it cannot be one.

    ``seen`` maps the ids (and audio names) of earlier rows to their row, to name it when a
    later row repeats one.

    A reference recording is read here (once per run, through ``references``) to put its
    digest in the content key; ``row.reference_audio`` is already resolved to a path or URI.
    """
    item_id = row.item_id.strip() if row.item_id else None
    if row.problem:
        return Rejection(row.row, item_id, row.problem)
    if not item_id:
        return Rejection(row.row, None, "row has no id")
    if (first := seen.setdefault(item_id, row.row)) != row.row:
        return Rejection(row.row, item_id, f"duplicate id {item_id!r} (first at row {first})")
    if row.text is None or not row.text.strip():
        return Rejection(row.row, item_id, "text is empty")
    # `intro.md` and `intro.txt` would both be published as audio/intro.<fmt>: the stems share
    # the map of seen ids, under a prefix (NUL) that ids do not carry.
    if (first := seen.setdefault("\0audio:" + audio_stem(item_id), row.row)) != row.row:
        return Rejection(
            row.row,
            item_id,
            f"id {item_id!r} would share its audio file ({audio_stem(item_id)}.<format>) with "
            f"the id at row {first}: the same name with another extension",
        )
    # Captions and chapters are named after the audio's stem, so the files of two stems can
    # meet: `x`'s chapters and `x.chapters`'s captions are both x.chapters.vtt. That happens
    # when one stem is the other plus what a longer suffix has over a shorter one (".chapters"):
    # checked against the stems claimed above, for every file an item may publish (whatever
    # this run's caption settings), without keeping each file's name.
    stem = audio_stem(item_id)
    for extra, suffix in _suffix_overlaps(spec.audio.format):
        others = [stem + extra, *([stem[: -len(extra)]] if stem.endswith(extra) else [])]
        for other in others:
            if (first := seen.get("\0audio:" + other, row.row)) != row.row:
                return Rejection(
                    row.row,
                    item_id,
                    f"id {item_id!r} would write {max(stem, other, key=len)}{suffix}, a file "
                    f"of the id at row {first}: rename one of them",
                )
    if row.voice and (problem := reference_id_problem(row.voice)):
        return Rejection(row.row, item_id, problem)
    digest = None
    if row.reference_audio or row.reference_text:
        if not row.reference_audio:
            return Rejection(row.row, item_id, "reference_text given without reference_audio")
        if not (row.reference_text or "").strip():
            return Rejection(
                row.row, item_id, "reference_audio needs its transcript in reference_text"
            )
        if row.voice:
            return Rejection(
                row.row,
                item_id,
                "both a reference_id and reference_audio: the server would use the id only",
            )
        try:
            audio_digest = (references or ReferenceFiles()).digest(row.reference_audio)
        except SourceError as exc:
            return Rejection(row.row, item_id, exc.message)
        digest = hashlib.sha256(f"{audio_digest}\0{row.reference_text}".encode()).hexdigest()[:16]
    language = (row.language or "").strip().lower() or None
    written = speech_blocks(row, spec.text, language=language)
    language = language or detect_language(prose_text(written))
    blocks = speak_blocks(written, language, spec.text.speech())
    text = blocks_text(blocks)
    if not is_speakable(text):
        return Rejection(row.row, item_id, "text has no letters or digits to speak")
    chunks = tuple(chunk_blocks(blocks, language, spec.chunking.max_bytes, spec.chunking.min_bytes))
    seed = None
    options = spec.options
    if not (row.voice or digest or options.reference_id or options.references):
        seed = options.seed if options.seed is not None else item_seed(item_id)
    key = spec.content_key(chunks, voice_identity(row.voice, digest, seed))
    return Item(
        row.row,
        item_id,
        text,
        language,
        row.voice,
        key,
        chunks,
        reference_audio=row.reference_audio if digest else None,
        reference_text=row.reference_text if digest else None,
        reference_digest=digest,
        seed=seed,
        only_code=all(b.kind == "code" for b in blocks),
    )


def speech_blocks(
    row: SourceRow, settings: TextSettings, *, language: str | None = None
) -> tuple[Block, ...]:
    """What will be spoken of a row's text: Markdown read construct by construct (when the run
    says so, or for .md files under ``auto``), plain text as paragraphs."""
    text = row.text or ""
    markdown = (
        settings.format == "markdown"
        if settings.format != "auto"
        else row.text_format == "markdown"
    )
    if not markdown:
        return plain_blocks(text)
    return markdown_blocks(
        text,
        language=language,
        code=settings.code,
        images=settings.images,
        tables=settings.tables,
    )


def item_chunks(item: Item, spec: RunSpec) -> list[Chunk]:
    """An item's chunks, each with the boundary (and so the pause) after it."""
    if item.chunks:
        return list(item.chunks)
    blocks = plain_blocks(item.text)
    return chunk_blocks(blocks, item.language, spec.chunking.max_bytes, spec.chunking.min_bytes)


# Item ids of files read from a folder or an S3 prefix keep their name; their audio drops the
# extension: lessons/1-intro/README.md -> audio/lessons/1-intro/README.wav.
SOURCE_FILE_SUFFIXES = (".md", ".markdown", ".txt")


def audio_stem(item_id: str) -> str:
    """The item's published name without format extension (pure function of the id)."""
    base = item_id
    lowered = item_id.lower()
    for suffix in SOURCE_FILE_SUFFIXES:
        stem = item_id[: -len(suffix)]
        if lowered.endswith(suffix) and stem and not stem.endswith("/"):
            base = stem
            break
    return f"audio/{safe_key(base)}"


@functools.cache
def _suffix_overlaps(fmt: str) -> tuple[tuple[str, str], ...]:
    """(extra, suffix) for each pair of an item's file suffixes where one is the other with
    `extra` before it: stem + extra + suffix is a file of two stems (".chapters", ".vtt")."""
    key = audio_key("x", fmt)
    stem = audio_stem("x")
    suffixes = [name[len(stem) :] for name in (key, *sidecar_keys(key).values())]
    return tuple(
        (longer[: -len(shorter)], shorter)
        for longer in suffixes
        for shorter in suffixes
        if longer != shorter and longer.endswith(shorter)
    )


def audio_key(item_id: str, fmt: str) -> str:
    return f"{audio_stem(item_id)}.{fmt}"


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


@dataclass
class ItemOutcome:
    item: ItemRow
    chunks: list[ChunkRow] = field(default_factory=list)
    errors: list[ErrorRow] = field(default_factory=list)


@dataclass
class RunContext:
    """What a batch needs while it runs: built once per process by the tasks layer."""

    run_id: str
    spec: RunSpec
    pool: ServerPool
    store: Store
    cache: ChunkCache
    previous: dict[str, PreviousItem] = field(default_factory=dict)
    existing_audio: set[str] = field(default_factory=set)
    force: bool = False
    fatal_error: FishflowError | None = None
    on_item_done: Callable[[ItemRow], None] | None = None
    # Chunks placed in their items' files, and their audio: progress within long items.
    chunks_done: int = 0
    audio_done_s: float = 0.0
    item_slots: asyncio.Semaphore | None = None
    journal: Journal | None = None
    publisher: Executor | None = None  # runs stitch, encode and put (None: asyncio's default)
    warnings: list[str] = field(default_factory=list)  # said once each, in the run's log
    notes: list[str] = field(default_factory=list)  # the same, at info level
    references: ReferenceFiles = field(default_factory=ReferenceFiles)
    rates: SpeechRates = field(default_factory=SpeechRates)  # voices' rates learned in the run
    _voices: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _said: set[str] = field(default_factory=set)

    def warn_once(self, topic: str, message: str, *, note: bool = False) -> None:
        if topic not in self._said:
            self._said.add(topic)
            (self.notes if note else self.warnings).append(message)

    async def check_voice(self, voice: str | None) -> None:
        """Raise ConfigError for a reference_id the server lists its voices without (current
        servers answer 200 for it and speak in a default voice); with ``unknown_voice:
        default``, warn once instead."""
        voice = voice or self.spec.options.reference_id
        if not voice:
            return
        if voice not in self._voices:
            self._voices[voice] = asyncio.ensure_future(self._check_voice(voice))
        await self._voices[voice]

    async def _check_voice(self, voice: str) -> None:
        server = self.pool.servers[0]
        known = await server.client.reference_ids()
        if known is not None and voice not in known:
            if self.spec.qa.unknown_voice == "stop":
                held = ", ".join(repr(v) for v in sorted(known)[:10]) or "none"
                more = f" and {len(known) - 10} more" if len(known) > 10 else ""
                raise ConfigError(
                    f"reference_id {voice!r} is not among the voices {server.url} holds "
                    f"({held}{more}): the server would speak it in a default voice; fix the id, "
                    "add the voice with `fishflow voices add`, or pass --unknown-voice default"
                )
            self.warnings.append(
                f"reference_id {voice!r} is not among the voices {server.url} lists: current "
                "servers answer 200 for it and speak those items in a default voice, chosen by "
                "the seed (random without one); add it with `fishflow voices add`"
            )

    def now(self) -> datetime:
        return datetime.now(UTC)

    def stop(self, exc: FishflowError) -> None:
        """Stop the run: items not yet started fail with `exc`, waiting chunks are refused."""
        if self.fatal_error is None:
            self.fatal_error = exc
        self.pool.stop(exc)


def _error_row(
    ctx: RunContext,
    row: int,
    item_id: str | None,
    exc: BaseException,
    chunk_index: int | None = None,
    stage: str | None = None,
) -> ErrorRow:
    ours = exc if isinstance(exc, FishflowError) else None
    return ErrorRow(
        run_id=ctx.run_id,
        item_id=item_id,
        source_row=row,
        chunk_index=chunk_index,
        stage=stage or (ours.stage if ours else "run"),
        error_type=type(exc).__name__,
        error_message=(ours.message if ours else str(exc)) or type(exc).__name__,
        http_status=ours.http_status if ours else None,
        retryable=bool(ours.retryable) if ours else False,
        attempts=getattr(exc, "attempts", 1),
        created_at=ctx.now(),
    )


def _unprocessed(
    ctx: RunContext,
    entry: Item | Rejection,
    stage: str,
    error_type: str,
    message: str,
    *,
    retryable: bool,
) -> ItemOutcome:
    """A failed row that never reached synthesis, with its one error row."""
    now = ctx.now()
    return ItemOutcome(
        ItemRow(
            run_id=ctx.run_id,
            item_id=entry.item_id,
            source_row=entry.row,
            status="failed",
            created_at=now,
            error=message,
        ),
        errors=[
            ErrorRow(
                run_id=ctx.run_id,
                item_id=entry.item_id,
                source_row=entry.row,
                chunk_index=None,
                stage=stage,
                error_type=error_type,
                error_message=message,
                http_status=None,
                retryable=retryable,
                attempts=0,
                created_at=now,
            )
        ],
    )


def rejected_outcome(ctx: RunContext, rejection: Rejection) -> ItemOutcome:
    return _unprocessed(ctx, rejection, "source", "InvalidRow", rejection.reason, retryable=False)


def internal_failure(ctx: RunContext, entry: Item | Rejection, exc: BaseException) -> ItemOutcome:
    """An item lost to a bug in fishflow itself: failed, retryable, with the exception named."""
    message = f"internal error: {type(exc).__name__}: {exc}"
    return _unprocessed(ctx, entry, "run", type(exc).__name__, message, retryable=True)


def _failed(
    ctx: RunContext,
    item: Item,
    errors: list[ErrorRow],
    chunks: list[ChunkRow],
    *,
    chunk_count: int | None = None,
    attempts: int | None = None,
    synth_seconds: float | None = None,
) -> ItemOutcome:
    return ItemOutcome(
        ItemRow(
            run_id=ctx.run_id,
            item_id=item.item_id,
            source_row=item.row,
            status="failed",
            created_at=ctx.now(),
            language=item.language,
            text_sha256=text_sha256(item.text),
            content_key=item.content_key,
            chars=len(item.text),
            chunk_count=chunk_count,
            attempts=attempts,
            synth_seconds=synth_seconds,
            error=errors[0].error_message,
        ),
        chunks,
        errors,
    )


def _skip_if_unchanged(ctx: RunContext, item: Item) -> ItemOutcome | None:
    prev = ctx.previous.get(item.item_id)
    if ctx.force or prev is None or prev.content_key != item.content_key:
        return None
    if prev.qa == "marked" and not ctx.spec.qa.accept_marked:
        return None  # published, but an answer in it was suspect: made again
    if prev.audio_key not in ctx.existing_audio:
        return None
    sidecars = sidecar_keys(prev.audio_key)
    has_captions = sidecars["vtt"] in ctx.existing_audio
    has_chapters = sidecars["chapters"] in ctx.existing_audio
    if ctx.spec.captions.captions == "on" and not has_captions:
        # Captions are part of the published item: redo it (its chunk audio is in the cache
        # when it had several chunks) rather than report it complete without them.
        return None
    if (
        ctx.spec.captions.chapters == "on"
        and not has_chapters
        and any(chunk.heading_level for chunk in item.chunks)
    ):
        return None  # chapters turned on since (in mp3 they are in the audio too): the same
    row = ItemRow(
        run_id=ctx.run_id,
        item_id=item.item_id,
        source_row=item.row,
        status="skipped",
        created_at=ctx.now(),
        language=item.language,
        text_sha256=text_sha256(item.text),
        content_key=item.content_key,
        chars=len(item.text),
        audio_uri=prev.audio_uri,
        audio_format=ctx.spec.audio.format,
        duration_s=prev.duration_s,
        bytes=prev.bytes,
        audio_sha256=prev.audio_sha256,
        attempts=0,
        loudness_lufs=prev.loudness_lufs,
        captions_uri=ctx.store.uri(sidecars["vtt"]) if has_captions else None,
        chapters_uri=ctx.store.uri(sidecars["chapters"]) if has_chapters else None,
        qa=prev.qa,
        seed=prev.seed,
    )
    return ItemOutcome(row)


def _split(ctx: RunContext, item: Item, text: str, exc: SynthesisError) -> list[str] | None:
    """The parts to send instead of ``text``: within the server's text limit, cut at sentence
    and clause ends (evenly sized); for audio cut at the token cap, in two near the middle."""
    if isinstance(exc, TextTooLong):
        budget = chunk_budget(
            max_new_tokens=ctx.spec.options.max_new_tokens,
            chunk_bytes=ctx.spec.chunking.max_bytes,
            max_chars=exc.limit,
            text=text,
        )
        parts = split_at_clause(text, budget, language=item.language)
        if len(parts) > 1:
            return parts
    halves = split_in_two(text)
    return list(halves) if halves else None


async def _synthesize_fitting(
    ctx: RunContext,
    item: Item,
    text: str,
    references: tuple[Reference, ...],
    depth: int = 0,
    *,
    seed: int | None = None,
) -> Synthesized:
    """Synthesise a chunk's text; where the server cannot take it whole, its parts.

    Audio cut at the token cap is cut again if sent again, and a text over the server's
    --max-text-length is refused again: the text is split (see ``_split``) and each part
    sent (split again if need be), then joined with the pause of a cut clause. ``seed``
    overrides the item's (another answer after a suspect one)."""
    try:
        return await ctx.pool.synthesize(
            text,
            ctx.spec.options,
            reference_id=item.voice,
            references=references,
            seed=item.seed if seed is None else seed,
            voice=item.voice_name,
        )
    except (CutAtTokenCap, TextTooLong) as exc:
        pieces = _split(ctx, item, text, exc) if depth < 10 else None
        if not pieces:
            raise
        spent = exc.attempts  # requests that told us to split (0: the known limit did)
        fingerprint = ctx.spec.voice_fingerprint(item.voice_identity)
        if seed is not None:
            fingerprint += f":{seed}"  # another answer: not the first one's pieces again

        def part_of(piece: str) -> Awaitable[tuple[Audio, Synthesized | None]]:
            # Through the chunk cache: a repeated piece of one item is sent once.
            return ctx.cache.get_or_make(
                chunk_key(piece, fingerprint),
                ctx.spec.audio.sample_rate,
                lambda: _synthesize_fitting(ctx, item, piece, references, depth + 1, seed=seed),
                persist=False,
            )

        parts = await asyncio.gather(*(part_of(p) for p in pieces))
    settings = ctx.spec.audio
    audio = stitch(
        [a for a, _ in parts], pause_ms=settings.pause_after_ms("clause"), fade_ms=settings.fade_ms
    )
    made = [m for _, m in parts if m is not None]
    return Synthesized(
        audio,
        made[0].server if made else "",
        spent + sum(m.attempts for m in made),
        sum(m.latency_s for m in made),
    )


def _rate_voice(ctx: RunContext, item: Item) -> str:
    """Whose speaking rate a chunk's answer is judged by: the item's reference voice, else
    the run's, else the seed voices together (each item has its own: too few answers each)."""
    if item.voice or item.reference_digest:
        return item.voice or f"audio:{item.reference_digest}"
    options = ctx.spec.options
    if options.reference_id or options.references:
        return options.reference_id or "references"
    return "seed"


def _accepted(audio: Audio, verdict: Verdict) -> Audio:
    if verdict.outcome != "trim":
        return audio
    return Audio(audio.samples[verdict.start : verdict.end], audio.sample_rate)


async def _synthesize_checked(
    ctx: RunContext, item: Item, text: str, references: tuple[Reference, ...]
) -> Synthesized:
    """Synthesise a chunk's text and check the answer (``fishflow.qa``) before it is cached.

    A suspect answer of an item with a reference voice is asked for again with another seed,
    this chunk alone (the voice stays the reference's), up to ``qa.retries`` more times; the
    first that passes is kept, else the least bad. An item whose voice is its seed cannot
    change seed for one chunk: its suspect answer goes back marked, and ``process_item``
    makes the whole item again with another seed."""
    made = await _synthesize_fitting(ctx, item, text, references)
    settings = ctx.spec.qa
    if not settings.enabled:
        return made
    voice = _rate_voice(ctx, item)
    spent, latency = made.attempts, made.latency_s
    best: tuple[Synthesized, Verdict] | None = None
    answers = 0
    while True:
        answers += 1
        audio = made.audio
        verdict = check_answer(
            audio.samples,
            audio.sample_rate,
            text,
            ctx.rates.expected(voice, item.language),
            settings,
        )
        if verdict.ratio is not None:  # speech, of whatever length: its rate is the voice's
            ctx.rates.add(voice, item.language, verdict.ratio)
        if not verdict.suspect and settings.asr:  # what a listener would hear, word by word
            cer = await asyncio.to_thread(
                heard, audio.samples, audio.sample_rate, text, item.language, settings.asr
            )
            verdict = asr_verdict(cer, settings.max_cer, verdict)
        if not verdict.suspect:
            accepted = _accepted(audio, verdict)
            return Synthesized(accepted, made.server, spent, latency, Checked(answers))
        if best is None or verdict.severity < best[1].severity:
            best = (made, verdict)
        if item.seed is not None or answers > settings.retries:
            kept_made, kept = best
            checked = Checked(answers, kept.check, kept.measure)
            return Synthesized(kept_made.audio, kept_made.server, spent, latency, checked)
        seed = retry_seed(ctx.spec.options.seed, text, answers)
        made = await _synthesize_fitting(ctx, item, text, references, seed=seed)
        spent += made.attempts
        latency += made.latency_s


async def _chunk_audio(
    ctx: RunContext,
    item: Item,
    chunk: Chunk,
    references: tuple[Reference, ...],
    *,
    persist: bool,
) -> tuple[Audio | None, ChunkRow]:
    """The chunk's audio (None when it was persisted: the writer reads it back from the cache
    when its turn comes, so chunks that finish early do not pile up in memory) and its row."""
    key = chunk_key(chunk.text, ctx.spec.voice_fingerprint(item.voice_identity))
    rate = ctx.spec.audio.sample_rate

    def make() -> Awaitable[Synthesized]:
        return _synthesize_checked(ctx, item, chunk.text, references)

    audio, made = await ctx.cache.get_or_make(key, rate, make, persist=persist)
    checked = made.checked if made else None
    row = _chunk_row(
        ctx,
        item,
        chunk,
        key,
        server=made.server if made else None,
        attempts=made.attempts if made else 0,
        latency_s=made.latency_s if made else None,
        duration_s=audio.duration_s,
        reused=made is None,
        status="ok",
        checked=checked,
    )
    # A marked answer is not on disk (see ChunkCache.get_or_make): handed over as it is.
    kept_on_disk = persist and not (checked is not None and checked.marked)
    return (None if kept_on_disk else audio), row


async def _references(ctx: RunContext, item: Item) -> tuple[Reference, ...]:
    if not item.reference_audio or item.reference_text is None:
        return ()
    uri, text = item.reference_audio, item.reference_text
    if ctx.references.cached(uri):
        return (ctx.references.reference(uri, text),)
    return (await asyncio.to_thread(ctx.references.reference, uri, text),)


def _failed_chunk_row(ctx: RunContext, item: Item, chunk: Chunk, exc: Exception) -> ChunkRow:
    key = chunk_key(chunk.text, ctx.spec.voice_fingerprint(item.voice_identity))
    return _chunk_row(
        ctx,
        item,
        chunk,
        key,
        server=getattr(exc, "server", None),
        attempts=getattr(exc, "attempts", 1),
        latency_s=None,
        duration_s=None,
        reused=False,
        status="failed",
    )


def _chunk_row(
    ctx: RunContext,
    item: Item,
    chunk: Chunk,
    key: str,
    *,
    server: str | None,
    attempts: int,
    latency_s: float | None,
    duration_s: float | None,
    reused: bool,
    status: str,
    checked: Checked | None = None,
) -> ChunkRow:
    """A chunk's manifest row: where it sits in its item, and how it was made."""
    return ChunkRow(
        run_id=ctx.run_id,
        item_id=item.item_id,
        source_row=item.row,
        chunk_index=chunk.index,
        start_char=chunk.start,
        end_char=chunk.end,
        utf8_bytes=chunk.utf8_bytes,
        chunk_key=key,
        server=server,
        attempts=attempts,
        latency_s=latency_s,
        duration_s=duration_s,
        reused=reused,
        status=status,
        qa_check=checked.check if checked else None,
        qa_measure=checked.measure if checked else None,
        qa_attempts=checked.answers if checked else None,
    )


def _add_chunk(
    cache: ChunkCache, publisher: ItemPublisher, chunk: Chunk, key: str, audio: Audio | None
) -> tuple[Level | None, Published | None]:
    """In a publisher thread: the chunk's audio (read back from the cache's disk when it has
    left memory) added to its item's file; then its raw copy on disk compressed."""
    if audio is None and (audio := cache.read(key, publisher.sample_rate)) is None:
        raise StorageError(f"chunk audio {key} vanished from the chunk cache")
    added = publisher.add(chunk, audio)
    cache.compress(key, audio)
    return added


async def process_item(ctx: RunContext, item: Item) -> ItemOutcome:
    """Synthesise, stitch and publish one item; never raises for the item's own failures.

    Chunks are requested all at once and written to the item's file in order as they come
    in; a chunk that finishes before its predecessors waits in the chunk cache (on disk), so
    memory does not grow with the item's length.
    """
    if (skipped := _skip_if_unchanged(ctx, item)) is not None:
        return skipped
    if ctx.fatal_error is not None:
        err = _error_row(ctx, item.row, item.item_id, ctx.fatal_error, stage="run")
        return _failed(ctx, item, [err], [])
    if not item.reference_audio:  # a recording, not an id, is this item's voice
        try:
            await ctx.check_voice(item.voice)
        except ConfigError as exc:  # a voice the server does not hold: stop the run
            ctx.stop(exc)
            return _failed(ctx, item, [_error_row(ctx, item.row, item.item_id, exc)], [])
    if item.seed is not None:
        ctx.warn_once(
            "seed",
            "no voice given (--reference-id, a reference_id column or reference audio): the "
            "server picks a voice from the seed, so fishflow pins one per item (--seed, or one "
            "derived from the item id) and all its chunks share it; items may differ in voice",
            note=True,
        )
    if item.only_code:
        ctx.warn_once(
            f"only-code:{item.item_id}",
            f"{item.item_id!r} (row {item.row}) is only code blocks: its audio is the code cue "
            f"alone ({code_cue(item.language)!r}); with --markdown-code silent such items fail "
            "instead",
        )
    try:
        references = await _references(ctx, item)
    except SourceError as exc:
        return _failed(ctx, item, [_error_row(ctx, item.row, item.item_id, exc)], [])
    chunks = item_chunks(item, ctx.spec)
    started = time.monotonic()
    qa = ctx.spec.qa
    voiced = item  # the item as made: its seed may change (a seed voice answered badly)
    prev = ctx.previous.get(item.item_id)
    if (
        item.seed is not None
        and ctx.spec.options.seed is None
        and prev is not None
        and prev.seed is not None
        and prev.qa != "marked"
    ):
        # Its text changed: keep the voice (the seed) its published audio was accepted in.
        voiced = replace(item, seed=prev.seed)
    spent = 0
    attempt = 1
    while True:
        may_redo = qa.enabled and voiced.seed is not None and attempt <= qa.retries
        made = await _make_item(
            ctx, voiced, chunks, references, started, may_redo=may_redo, spent=spent
        )
        if isinstance(made, ItemOutcome):
            return _with_qa(ctx, made, voiced, attempt)
        # A suspect answer, in a voice that is the seed's: the whole item in another voice.
        spent = made
        voiced = replace(item, seed=retry_seed(item.seed, item.item_id, attempt))
        attempt += 1


def _with_qa(ctx: RunContext, outcome: ItemOutcome, item: Item, attempt: int) -> ItemOutcome:
    """The item's row with what the answer check found: "marked" when a chunk's kept answer
    was suspect (the first such chunk's check and measure), else "pass"; for a seed voice,
    the whole-item attempts as every chunk's answers tried."""
    row = outcome.item
    if row.status != "ok":
        return outcome
    if not ctx.spec.qa.enabled:
        return replace(outcome, item=replace(row, seed=item.seed))
    chunks = outcome.chunks
    if item.seed is not None:
        chunks = [
            replace(c, qa_attempts=attempt) if c.qa_attempts is not None else c for c in chunks
        ]
    marked = next((c for c in chunks if c.qa_check is not None), None)
    tried = [c.qa_attempts for c in chunks if c.qa_attempts is not None]
    row = replace(
        row,
        qa="marked" if marked else "pass",
        qa_check=marked.qa_check if marked else None,
        qa_measure=marked.qa_measure if marked else None,
        qa_attempts=attempt if item.seed is not None else max(tried, default=1),
        seed=item.seed,
    )
    return ItemOutcome(row, chunks, outcome.errors)


async def _make_item(
    ctx: RunContext,
    item: Item,
    chunks: list[Chunk],
    references: tuple[Reference, ...],
    started: float,
    *,
    may_redo: bool,
    spent: int,
) -> ItemOutcome | int:
    """One attempt at an item: its outcome, or (``may_redo`` and a chunk's answer suspect)
    the requests it spent, abandoned: nothing of it is published."""
    multi = len(chunks) > 1
    tasks = [
        asyncio.ensure_future(_chunk_audio(ctx, item, c, references, persist=multi)) for c in chunks
    ]
    settings = ctx.spec.audio
    key = audio_key(item.item_id, settings.format)
    publisher = ItemPublisher(
        store=ctx.store,
        key=key,
        audio=settings,
        captions=ctx.spec.captions,
        language=item.language,
        chunk_count=len(chunks),
        sample_rate=settings.sample_rate,
        metadata={"text-sha256": text_sha256(item.text), "content-key": item.content_key},
        existing_sidecars=frozenset(sidecar_keys(key).values()) & ctx.existing_audio,
    )
    loop = asyncio.get_running_loop()
    rows: list[ChunkRow] = []
    errors: list[ErrorRow] = []
    published: Published | None = None
    try:
        for chunk, task in zip(chunks, tasks, strict=True):
            try:
                audio, row = await task
            except Exception as exc:
                if isinstance(exc, FishflowError) and exc.fatal:
                    ctx.stop(exc)
                if isinstance(exc, VoiceRefused):
                    ctx.warn_once(f"voice:{exc.voice}", exc.message)
                errors.append(_error_row(ctx, item.row, item.item_id, exc, chunk.index))
                rows.append(_failed_chunk_row(ctx, item, chunk, exc))
                continue
            rows.append(row)
            if errors:
                continue  # the item fails: collect the other chunks' rows, write nothing
            if may_redo and row.qa_check is not None:
                # Progress counted for this attempt's chunks is taken back: they are redone.
                ctx.chunks_done -= len(rows) - 1
                ctx.audio_done_s -= sum(r.duration_s or 0.0 for r in rows[:-1])
                return spent + sum(r.attempts for r in rows)  # the `finally` drops the rest
            if audio is None:
                audio = ctx.cache.recall(row.chunk_key)  # else read back in the publisher thread
            try:
                level, published = await loop.run_in_executor(
                    ctx.publisher, _add_chunk, ctx.cache, publisher, chunk, row.chunk_key, audio
                )
            except RuntimeError as exc:
                # The run's threads are shut down: it is stopping (Ctrl-C, SIGTERM) and its
                # tasks are being cancelled; this item is abandoned like the others.
                raise asyncio.CancelledError from exc
            if level is not None:
                ctx.cache.keep_level(row.chunk_key, level)
            ctx.chunks_done += 1
            ctx.audio_done_s += row.duration_s or 0.0
    except StorageError as exc:
        if exc.fatal:
            ctx.stop(exc)
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        rows = [r[1] for r in results if isinstance(r, tuple)]
        return _failed(
            ctx,
            item,
            [_error_row(ctx, item.row, item.item_id, exc)],
            rows,
            chunk_count=len(chunks),
            attempts=spent + sum(r.attempts for r in rows),
        )
    finally:
        for task in tasks:
            task.cancel()  # only those still running: the item is being cancelled
        if published is None:
            publisher.abort()  # not in the publisher threads: they may be shut down already
    synth_seconds = time.monotonic() - started
    attempts = spent + sum(r.attempts for r in rows)
    if errors or published is None:
        return _failed(
            ctx,
            item,
            errors,
            rows,
            chunk_count=len(chunks),
            attempts=attempts,
            synth_seconds=synth_seconds,
        )
    item_row = ItemRow(
        run_id=ctx.run_id,
        item_id=item.item_id,
        source_row=item.row,
        status="ok",
        created_at=ctx.now(),
        language=item.language,
        text_sha256=text_sha256(item.text),
        content_key=item.content_key,
        chars=len(item.text),
        chunk_count=len(chunks),
        reused_chunks=sum(r.reused for r in rows),
        audio_uri=published.audio_uri,
        audio_format=settings.format,
        sample_rate=published.sample_rate,
        duration_s=published.duration_s,
        bytes=published.bytes,
        audio_sha256=published.sha256,
        attempts=attempts,
        synth_seconds=synth_seconds,
        loudness_lufs=published.loudness_lufs,
        captions_uri=published.captions_uri,
        chapters_uri=published.chapters_uri,
    )
    return ItemOutcome(item_row, rows)


async def process_batch(ctx: RunContext, entries: list[Item | Rejection]) -> list[ItemOutcome]:
    """Process a batch, items concurrently; outcomes come back in input order."""

    async def one(entry: Item | Rejection) -> ItemOutcome:
        if isinstance(entry, Rejection):
            outcome = rejected_outcome(ctx, entry)
        elif ctx.item_slots is None:
            outcome = await process_item(ctx, entry)
        else:
            # Bound the items in progress so that audio in memory does not grow with the batch.
            async with ctx.item_slots:
                outcome = await process_item(ctx, entry)
        if ctx.journal is not None:
            try:
                ctx.journal.append(outcome.item, outcome.chunks, outcome.errors)
            except StorageError as exc:  # disk full: the batch's part may still record it
                ctx.stop(exc)
            await ctx.journal.durable()  # in the output too (an S3 output's run state)
        if ctx.on_item_done is not None:
            ctx.on_item_done(outcome.item)
        return outcome

    return list(await asyncio.gather(*(one(e) for e in entries)))
