"""One typed settings tree: what a run synthesises, where, and how.

Bounds follow what the Fish Speech server enforces (docs/fish-speech-api.md), so an invalid
sampling field is refused here, before any request is sent.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from fishflow.chunking import DEFAULT_CHUNK_BYTES, Boundary
from fishflow.errors import ConfigError
from fishflow.lexicon import LexiconEntry
from fishflow.spoken import DEFAULT_MAX_CODE_CHARS, SpeechOptions

AudioFormat = Literal["wav", "flac", "mp3"]
OnOff = Literal["on", "off"]
WireEncoding = Literal["msgpack", "json"]
TextFormat = Literal["auto", "plain", "markdown"]


# The ids current Fish Speech servers accept (ReferenceLoader._validate_id, March 2026 on).
# Any other id is refused inside the engine, so the client only ever sees a bare 500.
_REFERENCE_ID = re.compile(r"[a-zA-Z0-9\-_ ]+")


def reference_id_problem(reference_id: str) -> str | None:
    """Why a Fish Speech server would refuse this voice id, or None when it accepts it."""
    if len(reference_id) > 255:
        return f"reference_id {reference_id[:40]!r}... is over the 255 characters servers accept"
    if not _REFERENCE_ID.fullmatch(reference_id):
        return (
            f"reference_id {reference_id!r} is not an id Fish Speech servers accept: only "
            "letters, digits, '-', '_' and spaces (current servers answer any other with "
            "500 'Failed to generate speech')"
        )
    return None


def _check_reference_id(value: str | None) -> str | None:
    if value is not None and (problem := reference_id_problem(value)):
        raise ValueError(problem)
    return value


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Reference(_Frozen):
    """A reference voice sent with each request: audio bytes plus its transcript."""

    audio: bytes = Field(description="Reference audio file contents (wav/mp3/flac)")
    text: str = Field(description="What is said in the reference audio")

    def digest(self) -> str:
        return hashlib.sha256(self.audio + b"\0" + self.text.encode()).hexdigest()[:16]


class SynthesisOptions(_Frozen):
    """Fields of Fish's ServeTTSRequest that change the audio."""

    reference_id: str | None = Field(None, description="Voice id known to the server")
    references: tuple[Reference, ...] = Field((), description="Inline reference voices")
    seed: int | None = Field(None, ge=0, description="Seed; makes a voice-less voice stable")
    temperature: float = Field(0.8, ge=0.1, le=1.0, description="Sampling temperature")
    top_p: float = Field(0.8, ge=0.1, le=1.0, description="Nucleus sampling")
    repetition_penalty: float = Field(1.1, ge=0.9, le=2.0, description="Repetition penalty")
    max_new_tokens: int = Field(1024, ge=1, le=8192, description="~21.5 tokens per audio second")
    chunk_length: int = Field(200, ge=100, le=1000, description="Server-side split size (bytes)")
    normalize: bool = Field(True, description="Text normalisation (ignored by 1.5+ servers)")
    use_memory_cache: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Server keeps encoded reference audio (auto: on when a request names a "
        "voice); no change to the audio",
    )

    _reference_id = field_validator("reference_id")(_check_reference_id)

    def request_fields(
        self,
        text: str,
        reference_id: str | None = None,
        *,
        references: tuple[Reference, ...] = (),
        seed: int | None = None,
    ) -> dict[str, object]:
        """The body of one /v1/tts request; a per-item voice and seed override the run's.

        Inline references go without a reference_id: the server would use the id instead."""
        refs = references or self.references
        voice = None if references else (reference_id or self.reference_id)
        cache = self.use_memory_cache
        if cache == "auto":
            # Without it the server encodes the reference audio again for every request.
            cache = "on" if refs or voice else "off"
        return {
            "text": text,
            "chunk_length": self.chunk_length,
            "format": "wav",  # batch clients ask for wav and encode other formats themselves
            "references": [{"audio": r.audio, "text": r.text} for r in refs],
            "reference_id": voice,
            "seed": self.seed if seed is None else seed,
            "use_memory_cache": cache,
            "normalize": self.normalize,
            "streaming": False,
            "max_new_tokens": self.max_new_tokens,
            "top_p": self.top_p,
            "repetition_penalty": self.repetition_penalty,
            "temperature": self.temperature,
        }

    def fingerprint(self) -> str:
        """Stable digest of every field that changes the audio (references by their hash)."""
        data = self.model_dump(exclude={"references"})
        data["references"] = [r.digest() for r in self.references]
        # The server's cache changes no audio: keys stay those of runs from before "auto".
        data["use_memory_cache"] = "off"
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class TextSettings(_Frozen):
    """How an item's text becomes speech. Not part of the content key: what they change shows
    in the spoken text, which is."""

    format: TextFormat = Field(
        "auto", description="markdown, plain, or auto: .md/.markdown files Markdown, rest plain"
    )
    code: Literal["cue", "silent"] = Field(
        "cue", description="Markdown code blocks: a short cue in the item's language, or nothing"
    )
    images: Literal["alt", "skip"] = Field("alt", description="Markdown images: alt text read")
    tables: Literal["rows", "skip"] = Field(
        "rows", description='Markdown tables: read row by row ("header: value, ..."), or skipped'
    )
    numbers: bool = Field(True, description="Numbers, units and symbols said in words")
    lexicon: tuple[LexiconEntry, ...] = Field((), description="Pronunciation lexicon entries")
    max_code_chars: int = Field(
        DEFAULT_MAX_CODE_CHARS, ge=0, le=10_000, description="Longer inline code is not read"
    )

    def speech(self) -> SpeechOptions:
        return SpeechOptions(
            numbers=self.numbers, lexicon=self.lexicon, max_code_chars=self.max_code_chars
        )


class ChunkSettings(_Frozen):
    max_bytes: int = Field(
        DEFAULT_CHUNK_BYTES,
        ge=20,
        le=4000,
        description="Chunk budget in UTF-8 bytes (see fishflow.chunking.chunk_budget)",
    )
    min_bytes: int = Field(24, ge=0, le=200, description="Smaller fragments are merged")


class AudioSettings(_Frozen):
    format: AudioFormat = Field("wav", description="Output file format")
    sample_rate: int = Field(44_100, description="Sample rate the servers produce")
    # Silence added at each join, by what the join is. They add to the short silence the model
    # leaves at a chunk's edges; within a chunk Fish pauses ~0.3 s between sentences itself,
    # so a sentence join sounds like one inside a chunk, a paragraph about twice that, and a
    # heading stands apart.
    pause_clause_ms: int = Field(
        150, ge=0, le=5000, description="Pause where a sentence too long for one chunk is cut"
    )
    pause_sentence_ms: int = Field(300, ge=0, le=5000, description="Pause between sentences")
    pause_paragraph_ms: int = Field(
        700, ge=0, le=10_000, description="Pause between paragraphs, list items and table rows"
    )
    pause_section_ms: int = Field(
        1200, ge=0, le=10_000, description="Pause before and after a heading"
    )
    fade_ms: int = Field(8, ge=0, le=200, description="Fade at each join, against clicks")
    loudness: OnOff = Field("on", description="Normalise each item's loudness (BS.1770)")
    loudness_target: float = Field(
        -16.0, ge=-40, le=-5, description="Target integrated loudness, LUFS"
    )
    true_peak_db: float = Field(-1.0, ge=-12, le=0, description="Peak ceiling, dBTP")

    def pause_after_ms(self, boundary: Boundary) -> int:
        """The silence after a chunk that ends at ``boundary`` (0 after the last)."""
        return {
            "clause": self.pause_clause_ms,
            "sentence": self.pause_sentence_ms,
            "paragraph": self.pause_paragraph_ms,
            "section": self.pause_section_ms,
            "end": 0,
        }[boundary]

    def fingerprint(self) -> str:
        """Digest of what changes every item's audio alike; the pauses enter each item's
        content key join by join (see ``RunSpec.content_key``)."""
        joins = {"pause_clause_ms", "pause_sentence_ms", "pause_paragraph_ms", "pause_section_ms"}
        return hashlib.sha256(self.model_dump_json(exclude=joins).encode()).hexdigest()[:16]


class CaptionSettings(_Frozen):
    """Files published beside each item's audio. Not part of the content key: turning them on
    makes items without them be redone from cached chunk audio, turning them off changes
    nothing already published. An item published again (its text changed) drops the files
    beside it that it no longer has: captions turned off, chapters of headings gone."""

    captions: OnOff = Field("on", description="WebVTT and SRT captions beside the audio")
    chapters: OnOff = Field("on", description="Chapters from headings: WebVTT, ID3 in mp3")


class QaSettings(_Frozen):
    """The check of every chunk's answer before it is cached or stitched (``fishflow.qa``).
    Not part of the content key: changing it redoes nothing already published (only items
    published marked are made again, see ``accept_marked``)."""

    enabled: bool = Field(True, description="Check every answer; suspect ones are made again")
    retries: int = Field(
        2, ge=0, le=10, description="Answers made again (another seed) after a suspect one"
    )
    rate_long: float = Field(
        1.35,
        gt=1,
        le=10,
        description="Suspect when speech lasts more than this times what its text predicts at "
        "the voice's rate (repetition)",
    )
    rate_short: float = Field(
        0.7,
        gt=0,
        lt=1,
        description="Suspect when speech lasts less than this times what its text predicts "
        "(words skipped)",
    )
    rate_spread: float = Field(
        4.0, ge=0, le=50, description="... or further than this many robust deviations (MAD)"
    )
    rate_slack_s: float = Field(
        0.25, ge=0, le=10, description="Seconds either way a short chunk may be off its rate"
    )
    rate_warmup: int = Field(
        5,
        ge=0,
        le=10_000,
        description="Answers of a voice before its own rate is used (until then the rough "
        "rate, with the rough checks' bounds: 0.4x and 3x + 5 s)",
    )
    max_edge_s: float = Field(
        0.6,
        ge=0.05,
        le=60,
        description="Non-speech before or after the speech beyond this is trimmed (apart from "
        "the speech) or suspect (running into it)",
    )
    edge_pad_s: float = Field(0.15, ge=0, le=5, description="Silence kept at a trimmed edge")
    edge_gap_s: float = Field(
        0.2, ge=0.02, le=5, description="Quiet between speech and an edge that makes it apart"
    )
    consonant_s: float = Field(
        0.3, ge=0, le=2, description="Unvoiced sound next to the voiced speech counted as speech"
    )
    min_voiced: float = Field(
        0.3, ge=0, le=1, description="Suspect (babble) below this share of voiced loud frames"
    )
    max_flatness: float = Field(
        0.45, gt=0, le=1, description="Suspect (noise) above this median spectral flatness"
    )
    max_clipped: float = Field(
        0.002, ge=0, le=1, description="Suspect above this share of samples at full scale"
    )
    max_dc: float = Field(0.05, ge=0, le=1, description="Suspect above this DC offset (FS)")
    accept_marked: bool = Field(
        False, description="Treat an item published marked as done on the next run"
    )
    asr: str | None = Field(
        None,
        description="Recognizer that transcribes each answer that passed the signal checks "
        "(faster-whisper:MODEL, fishflow[asr]); None: off",
    )
    max_cer: float = Field(
        0.3, gt=0, le=1, description="Suspect (asr) above this character error rate"
    )
    unknown_voice: Literal["stop", "default"] = Field(
        "stop",
        description="A reference_id the server does not list: stop the run before any request "
        "for it, or go on (the server speaks it in a default voice)",
    )


class ServerConfig(_Frozen):
    url: str = Field(description="Base URL, e.g. http://gpu-1:8080")
    max_in_flight: int = Field(2, ge=1, le=256, description="Requests in flight on this server")
    model: str | None = Field(None, description="Fish Audio cloud `model` header (s1, s2-pro)")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"server URL must start with http:// or https://: {value!r}")
        if "@" in urlsplit(value).netloc:
            # The URL names the server in logs, errors and manifests: never with a password.
            raise ValueError(
                "a server URL must not carry a user or password (it names the server in logs "
                "and manifests): give the key in FISHFLOW_API_KEY"
            )
        return value.rstrip("/")


class RetryPolicy(_Frozen):
    max_attempts: int = Field(6, ge=1, le=50, description="Attempts per chunk, all causes")
    max_server_errors: int = Field(3, ge=1, le=50, description="Attempts after plain 500s")
    backoff_s: float = Field(0.5, ge=0, le=60, description="First backoff; doubles per attempt")
    max_backoff_s: float = Field(30.0, ge=0, le=600, description="Backoff ceiling")
    jitter: float = Field(0.5, ge=0, le=1, description="Random share of each backoff")
    request_timeout_s: float = Field(
        120.0, gt=0, description="Read timeout per queued generation ahead on the server"
    )
    down_after_failures: int = Field(
        2, ge=1, description="Consecutive connection failures before a server leaves rotation"
    )
    all_down_grace_s: float = Field(
        60.0, ge=0, description="How long every server may be down before the run stops"
    )
    voice_refused_after: int = Field(
        4,
        ge=2,
        le=100,
        description="Failed requests of one voice, all alike and none ok, before it is given up",
    )
    start_grace_s: float = Field(
        5.0,
        ge=0,
        description="The same while no server has answered yet in this run (a wrong URL or a "
        "server not started fails fast; one lost mid-run gets all_down_grace_s)",
    )


_Model = TypeVar("_Model", bound=BaseModel)


class EnvSettings(BaseSettings):
    """Secrets and defaults read from the environment (FISHFLOW_ prefix), never parameters."""

    model_config = SettingsConfigDict(env_prefix="FISHFLOW_", extra="ignore")

    api_key: SecretStr | None = Field(None, description="Bearer key for the Fish Speech servers")
    progress_interval_s: float = Field(
        30.0, gt=0, le=3600, description="Seconds between progress lines when not on a terminal"
    )


def problems(exc: ValidationError, label: Callable[[tuple[Any, ...]], str]) -> str:
    """Pydantic's report as one line, each error after the ``label`` of its location (if
    the label is not empty)."""
    said = []
    for err in exc.errors():
        message = err["msg"].removeprefix("Value error, ")
        said.append(f"{where}: {message}" if (where := label(err["loc"])) else message)
    return "; ".join(said)


def validated(model_class: type[_Model], /, **values: object) -> _Model:
    """Build a settings model, turning pydantic's report into one readable ConfigError."""
    try:
        return model_class(**values)
    except ValidationError as exc:
        report = problems(exc, lambda loc: ".".join(map(str, loc)) or model_class.__name__)
        raise ConfigError(f"invalid {model_class.__name__}: {report}") from exc


class RunSettings(_Frozen):
    """Every option of a run: the CLI's flags and the flow's `settings` parameter alike."""

    id_column: str = Field("id", description="Column holding the item id")
    text_column: str = Field("text", description="Column holding the text")
    language_column: str = Field("language", description="Optional column with a language code")
    voice_column: str = Field("reference_id", description="Optional column with a per-row voice")
    reference_audio_column: str = Field(
        "reference_audio",
        description="Optional column: a reference recording per row (path or s3:// URI)",
    )
    reference_text_column: str = Field(
        "reference_text", description="Optional column: the transcript of that recording"
    )
    audio_format: AudioFormat = Field("wav", description="Output audio format: wav, flac or mp3")
    max_in_flight: int = Field(2, ge=1, le=256, description="Requests in flight per server")
    encoding: WireEncoding = Field("msgpack", description="Request body encoding")
    cloud_model: str | None = Field(None, description="Fish Audio cloud model header (s1, s2-pro)")
    reference_id: str | None = Field(None, description="Voice id for rows without their own")
    seed: int | None = Field(None, ge=0, description="Sampling seed")
    temperature: float = Field(0.8, ge=0.1, le=1.0, description="Sampling temperature")
    top_p: float = Field(0.8, ge=0.1, le=1.0, description="Nucleus sampling")
    repetition_penalty: float = Field(1.1, ge=0.9, le=2.0, description="Repetition penalty")
    max_new_tokens: int = Field(1024, ge=1, le=8192, description="Token cap per generation")
    chunk_bytes: int | None = Field(
        None,
        ge=20,
        le=4000,
        description="Chunk budget in UTF-8 bytes (default: what fits max_new_tokens, at most 400)",
    )
    text_format: TextFormat = Field(
        "auto", description="markdown, plain, or auto (.md/.markdown files Markdown, rest plain)"
    )
    markdown_code: Literal["cue", "silent"] = Field(
        "cue", description="Markdown code blocks: a short spoken cue, or nothing"
    )
    markdown_images: Literal["alt", "skip"] = Field(
        "alt", description="Markdown images: read their alt text, or skip them"
    )
    markdown_tables: Literal["rows", "skip"] = Field(
        "rows", description="Markdown tables: read row by row, or skip them"
    )
    normalize: OnOff = Field(
        "on",
        description="Say numbers, units, dates and symbols in words before chunking (off: "
        "sent as written)",
    )
    lexicon: str | None = Field(
        None,
        description="Pronunciation lexicon: a CSV (term,spoken,language) or W3C PLS file, "
        "path or s3:// URI",
    )
    inline_code_max_chars: int = Field(
        DEFAULT_MAX_CODE_CHARS,
        ge=0,
        le=10_000,
        description="Inline code longer than this is not read (the sentence is said without it)",
    )
    pause_clause_ms: int = Field(
        150, ge=0, le=5000, description="Pause where a sentence too long for one chunk is cut"
    )
    pause_sentence_ms: int = Field(300, ge=0, le=5000, description="Pause between sentences")
    pause_paragraph_ms: int = Field(
        700, ge=0, le=10_000, description="Pause between paragraphs, list items, table rows"
    )
    pause_section_ms: int = Field(1200, ge=0, le=10_000, description="Pause around a heading")
    loudness: OnOff = Field("on", description="Normalise each item to --loudness-target")
    loudness_target: float = Field(
        -16.0, ge=-40, le=-5, description="Target integrated loudness, LUFS (BS.1770)"
    )
    captions: OnOff = Field("on", description="WebVTT and SRT captions beside each audio file")
    chapters: OnOff = Field("on", description="Chapters from headings (WebVTT; ID3 in mp3)")
    batch_size: int = Field(250, ge=1, le=100_000, description="Items per Prefect task run")
    max_attempts: int = Field(6, ge=1, le=50, description="Attempts per chunk")
    request_timeout_s: float = Field(120.0, gt=0, description="Read timeout per queued generation")
    all_down_grace_s: float = Field(60.0, ge=0, description="Stop when no server answers this long")
    sse: Literal["AES256", "aws:kms"] | None = Field(None, description="S3 server-side encryption")
    table: str | None = Field(
        None, description="Table to read when the source is a database URL (schema.name)"
    )
    query: str | None = Field(
        None, description="SELECT to read when the source is a database URL (instead of --table)"
    )
    state_in_output: bool = Field(
        True,
        description="Keep an S3 output's journal and chunk audio under <out>/.fishflow, so a "
        "run resumed or re-run on another machine redoes only what was in flight",
    )
    chunk_cache: str | None = Field(
        None,
        description="Folder of chunk audio (default: <out>/.fishflow/chunks; ~/.cache for S3)",
    )
    max_file_bytes: int = Field(
        20_000_000,
        ge=1,
        le=1 << 40,
        description="Largest .txt/.md file a folder or S3-prefix source reads; a larger one "
        "fails its row unread",
    )
    follow_symlinks: bool = Field(
        False,
        description="Read symbolic links in a source folder that lead outside it (otherwise "
        "their rows fail unread)",
    )
    slot_tenure_s: float = Field(
        10.0,
        ge=1,
        le=3600,
        description="Seconds a run keeps a shared server slot above its fair share while other "
        "runs wait for one",
    )
    local_limit: bool = Field(
        False,
        description="Run on a server that has no shared Prefect limit while the Prefect server "
        "has limits for others, keeping to this run's own limit (otherwise the run stops)",
    )
    wait_for_lock: float = Field(
        0.0,
        ge=0,
        le=86_400,
        description="Seconds to wait while another run writes the same output (0: stop at once)",
    )
    lock_ttl_s: float = Field(
        180.0,
        ge=30,
        le=3600,
        description="How long the output lock of a run that stopped renewing it (crashed) holds",
    )
    memory_cache: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Ask the server to keep encoded reference audio (use_memory_cache); auto: "
        "on for requests with a reference_id or reference audio",
    )
    unknown_voice: Literal["stop", "default"] = Field(
        "stop",
        description="A reference_id the server does not list: stop the run before any request "
        "for it, or go on in the server's default voice",
    )
    qa: OnOff = Field(
        "on",
        description="Check every chunk's answer before it is cached or stitched (speech rate, "
        "noise at the edges, babble, clipping) and make suspect ones again",
    )
    qa_retries: int = Field(
        2,
        ge=0,
        le=10,
        description="Answers asked for again, with another seed, after a suspect one",
    )
    qa_rate_long: float = Field(
        1.35,
        gt=1,
        le=10,
        description="Suspect when a chunk's speech lasts over this times what its text "
        "predicts at the voice's rate learned in the run",
    )
    qa_rate_short: float = Field(
        0.7, gt=0, lt=1, description="Suspect when it lasts under this times that"
    )
    qa_max_edge_s: float = Field(
        0.6,
        ge=0.05,
        le=60,
        description="Non-speech at either end beyond this: trimmed when apart from the speech, "
        "else suspect",
    )
    qa_on_marked: Literal["warn", "fail"] = Field(
        "warn",
        description="Items published marked (every answer of a chunk suspect): warn (exit 0, "
        "counted) or fail (exit 2, the items stay published)",
    )
    qa_accept_marked: bool = Field(
        False, description="Treat items published marked as done on the next run"
    )
    qa_asr: str | None = Field(
        None,
        description="Also transcribe each answer with a recognizer and compare it with the "
        "text: faster-whisper:MODEL (a name such as small, or a local model folder; pip install "
        "'fishflow[asr]'); off by default",
    )
    qa_max_cer: float = Field(
        0.3, gt=0, le=1, description="Suspect when the recognizer's character error rate is above"
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_pause(cls, data: Any) -> Any:
        # Runs recorded before pauses depended on the join had one `pause_ms` for every join;
        # `resume` reads those records back.
        if isinstance(data, dict) and "pause_ms" in data:
            data = dict(data)
            data.setdefault("pause_sentence_ms", data.pop("pause_ms"))
        return data

    _reference_id = field_validator("reference_id")(_check_reference_id)

    def synthesis_options(self) -> SynthesisOptions:
        return SynthesisOptions(
            reference_id=self.reference_id,
            seed=self.seed,
            temperature=self.temperature,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            max_new_tokens=self.max_new_tokens,
            use_memory_cache=self.memory_cache,
        )

    def qa_settings(self) -> QaSettings:
        return QaSettings(
            enabled=self.qa == "on",
            retries=self.qa_retries,
            rate_long=self.qa_rate_long,
            rate_short=self.qa_rate_short,
            max_edge_s=self.qa_max_edge_s,
            accept_marked=self.qa_accept_marked,
            asr=self.qa_asr,
            max_cer=self.qa_max_cer,
            unknown_voice=self.unknown_voice,
        )

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.max_attempts,
            request_timeout_s=self.request_timeout_s,
            all_down_grace_s=self.all_down_grace_s,
        )

    def server_configs(self, urls: list[str]) -> list[ServerConfig]:
        """`URL` or `URL#limit=N` (a per-server in-flight limit, e.g. for --workers N servers)."""
        configs = []
        for url in urls:
            base, _, fragment = url.partition("#")
            limit = self.max_in_flight
            if fragment.startswith("limit="):
                try:
                    limit = int(fragment.removeprefix("limit="))
                except ValueError as exc:
                    raise ConfigError(f"bad server limit in {url!r}: use URL#limit=N") from exc
            configs.append(
                validated(ServerConfig, url=base, max_in_flight=limit, model=self.cloud_model)
            )
        if not configs:
            raise ConfigError("no server given: pass --server URL")
        return configs
