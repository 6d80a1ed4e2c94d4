"""A source row made an Item: validated, its speech blocks, its chunks and its file names."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from fishflow.chunking import (
    Chunk,
    chunk_blocks,
)
from fishflow.errors import (
    SourceError,
)
from fishflow.markdown import markdown_blocks
from fishflow.publish import sidecar_keys
from fishflow.settings import (
    AudioSettings,
    CaptionSettings,
    ChunkSettings,
    QaSettings,
    SynthesisOptions,
    TextSettings,
    reference_id_problem,
)
from fishflow.sources import SourceRow
from fishflow.spoken import speak_blocks
from fishflow.storage import safe_key
from fishflow.text import (
    Block,
    blocks_text,
    detect_language,
    is_speakable,
    plain_blocks,
    prose_text,
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
