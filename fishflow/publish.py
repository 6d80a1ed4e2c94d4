"""One item's published files, made as its chunks come in: the audio, captions and chapters.

Chunks are added in order (``ItemPublisher.add``); each is measured (loudness, once per chunk
audio), evened to the target loudness, faded at the joins and encoded straight into the output
file, so memory holds one chunk whatever the item's length. A single-chunk item is encoded in
memory and published with one ``Store.put``; longer items are written to a staging file the
store publishes by a rename (local) or a multipart upload (S3). Captions and chapters are
timed from the offsets the chunks really got in the file.

Every method is blocking: callers run them in the run's publisher threads, one call at a time
per item.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import threading
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf

from fishflow.audio import Audio, AudioWriter, content_type, file_sha256
from fishflow.captions import (
    Placed,
    chapters,
    chapters_webvtt,
    cues,
    srt,
    tag_mp3_chapters,
    webvtt,
)
from fishflow.chunking import Chunk
from fishflow.errors import StorageError
from fishflow.loudness import (
    PEAK_MARGIN_DB,
    Level,
    chunk_gain_db,
    gain_segments,
    integrated_loudness,
    measure,
)
from fishflow.settings import AudioSettings, CaptionSettings
from fishflow.storage import Store, output_write_error, write_error


def sidecar_keys(audio_key: str) -> dict[str, str]:
    """Keys of the files published beside an item's audio (same stem)."""
    stem = audio_key.rsplit(".", 1)[0]
    return {"vtt": f"{stem}.vtt", "srt": f"{stem}.srt", "chapters": f"{stem}.chapters.vtt"}


@dataclass(frozen=True, slots=True)
class Published:
    audio_uri: str
    bytes: int
    sha256: str
    duration_s: float
    sample_rate: int
    loudness_lufs: float | None
    captions_uri: str | None
    chapters_uri: str | None


@dataclass
class ItemPublisher:
    store: Store
    key: str  # the audio's key
    audio: AudioSettings
    captions: CaptionSettings
    language: str
    chunk_count: int
    sample_rate: int
    metadata: dict[str, str] = field(default_factory=dict)
    # Files beside the audio before this publish (``sidecar_keys``): those it does not write
    # again (captions turned off, headings gone) are deleted once the new audio is published.
    existing_sidecars: frozenset[str] = frozenset()
    _writer: AudioWriter | None = None
    _buffer: io.BytesIO | None = None
    _staging: str | None = None
    _added: int = 0
    _gain_db: float = 0.0
    _segments: list[np.ndarray] = field(default_factory=list)
    _placed: list[Placed] = field(default_factory=list)
    _pause_ms: int = 0  # before the next chunk
    # abort() may come from the event loop (a cancelled run) while add() runs in a thread.
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _open(self) -> AudioWriter:
        if self.chunk_count == 1:
            self._buffer = io.BytesIO()
            target: str | io.BytesIO = self._buffer
        else:
            self._staging = target = self.store.staging_path(self.key)
        return AudioWriter(target, self.audio.format, self.sample_rate, fade_ms=self.audio.fade_ms)

    def add(self, chunk: Chunk, audio: Audio) -> tuple[Level | None, Published | None]:
        """Append the next chunk. Returns the chunk's level when it was measured here (to keep
        with the chunk's audio), and, after the last chunk, what was published."""
        with self._lock:
            return self._add(chunk, audio)

    def _add(self, chunk: Chunk, audio: Audio) -> tuple[Level | None, Published | None]:
        level = None
        gain = 0.0
        ceiling = None
        loudness = self.audio.loudness == "on"
        if loudness:
            level = audio.level or measure(audio.samples, audio.sample_rate)
            gain = self._gain_db = chunk_gain_db(level, self.audio.loudness_target, self._gain_db)
            # Sample-peak ceiling with a margin for inter-sample peaks (see fishflow.loudness).
            ceiling = 10 ** ((self.audio.true_peak_db - PEAK_MARGIN_DB) / 20)
            if level.peak * 10 ** (gain / 20) <= ceiling:
                ceiling = None  # nothing to limit: skip the limiter's pass
            if self._added and self._pause_ms:  # the pause before it: silent segments
                self._segments.append(np.zeros(round(self._pause_ms / 100)))
            self._segments.append(gain_segments(level, gain))
        try:
            if self._writer is None:
                self._writer = self._open()
            last = self._added == self.chunk_count - 1
            start = self._writer.add(
                audio.samples,
                pause_before_ms=self._pause_ms,
                gain_db=gain,
                ceiling=ceiling,
                fade_in=self._added > 0,
                fade_out=not last,
            )
        except OSError as exc:
            raise output_write_error(exc, self.store.uri(self.key), self.store.root) from None
        except sf.LibsndfileError as exc:  # libsndfile's own error: disk full says so in words
            raise write_error(f"the audio of {self.key}", exc) from None
        self._added += 1
        self._pause_ms = self.audio.pause_after_ms(chunk.boundary)
        if self.captions.captions == "on" or self.captions.chapters == "on":
            # A heading is spoken as a chunk of its own (see fishflow.chunking): its text,
            # without the full stop added for speech, is the chapter's title.
            title = chunk.shown.rstrip(".。") if chunk.heading_level else None
            self._placed.append(Placed(chunk.shown, start, audio.duration_s, title))
        published = self._finish() if last else None
        return (level if audio.level is None else None), published

    def _finish(self) -> Published:
        assert self._writer is not None
        self._writer.close()
        duration = self._writer.duration_s
        chapter_list = chapters(self._placed, duration) if self.captions.chapters == "on" else []
        if chapter_list and self.audio.format == "mp3":
            tag_mp3_chapters(self._buffer or self._staging or "", chapter_list)
        keys = sidecar_keys(self.key)
        captions_uri = chapters_uri = None
        written: set[str] = set()
        try:
            if self.captions.captions == "on":
                cue_list = cues(self._placed, self.language)
                captions_uri = self.store.put(keys["vtt"], webvtt(cue_list), "text/vtt", {})
                written.add(keys["vtt"])
                self.store.put(keys["srt"], srt(cue_list), "application/x-subrip", {})
                written.add(keys["srt"])
            if chapter_list:
                chapters_uri = self.store.put(
                    keys["chapters"], chapters_webvtt(chapter_list), "text/vtt", {}
                )
                written.add(keys["chapters"])
            ctype = content_type(self.audio.format)
            if self._buffer is not None:
                data = self._buffer.getvalue()
                size, digest = len(data), hashlib.sha256(data).hexdigest()
                uri = self.store.put(self.key, data, ctype, self.metadata)
            else:
                assert self._staging is not None
                digest, size = file_sha256(self._staging)
                uri = self.store.publish_file(self.key, self._staging, ctype, self.metadata)
                self._staging = None
        except StorageError:
            # The item fails: captions it wrote for audio that is not published go too.
            if new := sorted(written - self.existing_sidecars):
                with contextlib.suppress(Exception):
                    self.store.delete(new)
            raise
        if stale := sorted(self.existing_sidecars - written):
            self.store.delete(stale)
        lufs = None
        if self._segments:
            value = integrated_loudness(np.concatenate(self._segments))
            lufs = round(value, 2) if math.isfinite(value) else None
        return Published(
            uri, size, digest, duration, self.sample_rate, lufs, captions_uri, chapters_uri
        )

    def abort(self) -> None:
        """Drop what was written (the item failed or the run is stopping)."""
        with self._lock:
            self._abort()

    def _abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        if self._staging is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._staging)
            self._staging = None
        self._writer = None
