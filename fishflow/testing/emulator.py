r"""A Fish Speech server emulator: the protocol of docs/fish-speech-api.md, without a GPU.

What it reproduces, because clients must cope with it (the last section of that file is what
the authors' own server code answers, and what this follows):
- ``POST /v1/tts`` validated by a pydantic copy of the server's ``ServeTTSRequest``: 422 is
  pydantic's own error array (``loc`` without a body prefix), lax where the server is lax;
  msgpack, JSON or multipart bodies, media types compared case-sensitively, anything else 415
  with ``message: null`` and ``Accept``; malformed JSON -> 400, malformed msgpack -> 500 with the
  decoder's text, empty text -> 500;
- voices: a reference_id outside ``^[a-zA-Z0-9\-_ ]+$`` (or over 255 characters) and reference
  audio that does not decode are the bare ``500 Failed to generate speech`` (``check_reference_ids
  =False`` for servers before March 2026, which take any id); an unknown valid id -> 200 in a
  default voice; ``/v1/references/add|list|delete`` with the server's answers;
- ``--max-text-length`` in characters (400 "Text is too long, max length is N");
- chunked 200 responses with no Content-Length, mono 44.1 kHz 16-bit WAV (or MP3), audio cut at
  ``max_new_tokens`` (about 21.5 tokens per second; 0: no cap) with a normal 200;
- ``--workers N`` serial workers, first in first out; ``/v1/health`` waits for a free worker,
  as the real server's blocked event loop does;
- ``--api-key``: every route needs the Bearer key, checked before the method: no key -> 401
  with ``WWW-Authenticate``, a wrong one -> 401 "Invalid token"; but OPTIONS -> 200 and HEAD ->
  405 (no body) whatever the key; an unknown path -> 404 with the JSON error body, the
  connection kept open;
- the ``POST /generate {"text", "language"}`` -> WAV dialect of some packaged images.

Audio is deterministic (a tone derived from the text, or with ``speak`` real words from
espeak-ng) and lasts about as long as the text takes to speak. ``bad_answers`` makes that share
of answers wrong as a model does (``BAD_MODES``: the end said again, the end swallowed, a noise
tail, babble), drawn from text and seed; ``Emulator.bad_answers`` lists them, so tests count
what the client caught. Generating takes ``rtf`` seconds per audio second (or a fixed
``service_time_s``).
Fault knobs inject 500s, connection resets, truncated bodies, 429s with Retry-After, audio cut
short and extra latency. ``GET /_emulator/stats`` reports requests per text and the most requests
ever in flight at once, so tests count rather than time; ``Emulator.received`` lists what each
valid request asked for (text, voice, seed, reference audio by its sha256).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import email.parser
import email.policy
import hashlib
import io
import json
import queue
import random
import re
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import ormsgpack
import soundfile as sf
from pydantic import BaseModel, Field, ValidationError, conint, model_validator

SAMPLE_RATE = 44_100
TOKENS_PER_SECOND = 21.5


@dataclass
class Faults:
    """Probabilities per /v1/tts request (0..1), and delays in seconds."""

    error_rate: float = 0.0  # 500 after the generation
    reset_rate: float = 0.0  # connection reset before answering
    truncate_rate: float = 0.0  # 200, then the body stops half way
    busy_rate: float = 0.0  # 429 with Retry-After, at once
    short_audio_rate: float = 0.0  # 200 with audio a fifth as long as it should be
    slow_rate: float = 0.0  # the generation hangs for slow_s while holding its worker
    slow_s: float = 5.0
    retry_after_s: float = 1.0
    latency_s: float = 0.0  # extra latency before queueing (network, proxy)


@dataclass
class EmulatorConfig:
    workers: int = 1
    rtf: float = 0.0  # compute seconds per audio second
    service_time_s: float | None = None  # fixed compute per request, for benchmarks
    api_key: str | None = None
    max_text_length: int | None = None
    reference_ids: tuple[str, ...] = ()  # voices the server holds (references/<id>/ folders)
    # Current servers refuse reference ids outside ^[a-zA-Z0-9\-_ ]+$ (or over 255 characters)
    # with the generic 500; servers from before March 2026 take any id (unknown: default voice).
    check_reference_ids: bool = True
    speech_slowdown: float = 1.0  # a slower voice: audio this many times longer per text
    request_model: type[BaseModel] = field(default_factory=lambda: ServeTTSRequest)
    fail_status: int | None = None  # answer every /v1/tts with this status (402: no credit)
    tier_limit: int | None = None  # like the Fish Audio cloud: 429 beyond N requests in flight
    seed: int = 0
    level_db: float | None = None  # peak level of the voice, dBFS (None: -10.5, the default)
    faults: Faults = field(default_factory=Faults)
    # Share of answers (0..1) that are 200 with the wrong speech, as a model misbehaves (see
    # BAD_MODES); drawn from the text and seed, so the same request is answered the same way
    # and another seed usually well.
    bad_answers: float = 0.0
    bad_modes: tuple[str, ...] = ("repeat_end", "drop_end", "trail_noise", "babble")
    # Say the text in real words (espeak-ng, fishflow[speech]) rather than a tone; the voice
    # sets the pitch. Durations are then espeak's, cut at the token cap as the tone is.
    speak: bool = False


def speech_duration_s(text: str) -> float:
    """How long the emulated voice takes: 0.065 s per Latin character, 0.21 s per CJK one,
    0.25 s per digit (a number is said in words: "350", "three hundred and fifty")."""
    seconds = 0.0
    for ch in text:
        if ch.isspace():
            seconds += 0.03
        elif ch.isdigit():
            seconds += 0.25
        elif ord(ch) >= 0x2E80:
            seconds += 0.21
        else:
            seconds += 0.065
    return max(0.3, seconds)


def synth_samples(text: str, seconds: float, voice: str | None) -> np.ndarray:
    """A deterministic tone whose pitch depends on the text and voice: never silent."""
    digest = hashlib.sha256(f"{voice}\0{text}".encode()).digest()
    freq = 110 + digest[0] * 2
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n, dtype=np.float32) / SAMPLE_RATE
    wave = 0.3 * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return (wave * 32767).astype(np.int16)


# What a TTS model does wrong while answering 200 (the Fish Speech issue tracker has each):
BAD_MODES = {
    "repeat_end": "the last half or more said again (#1087, #866)",
    "drop_end": "the last 45-55% swallowed (#632, #604, #1102)",
    "trail_noise": "1.5-4 s of noise right after the speech",
    "babble": "speech-shaped noise instead of speech (#944, #765)",
}


def bad_answer(
    text: str, seed: int | None, *, rate: float, modes: tuple[str, ...], salt: int = 0
) -> tuple[str, float] | None:
    """Whether the answer to (text, seed) is bad, how (a mode) and by how much (0..1)."""
    if rate <= 0 or not modes:
        return None
    digest = hashlib.sha256(f"bad\0{salt}\0{seed}\0{text}".encode()).digest()
    if int.from_bytes(digest[:8], "big") / 2**64 >= rate:
        return None
    return modes[digest[8] % len(modes)], int.from_bytes(digest[9:13], "big") / 2**32


def misbehave(samples: np.ndarray, mode: str, x: float, key: str) -> np.ndarray:
    """The answer ``samples`` spoiled in the way ``mode`` names, by ``x`` (0..1)."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))
    n = len(samples)
    if mode == "repeat_end":
        return np.concatenate([samples, samples[n - int(n * (0.5 + 0.5 * x)) :]])
    if mode == "drop_end":
        return samples[: max(1, int(n * (0.45 + 0.1 * x)))]
    if mode == "trail_noise":
        tail = rng.normal(0.0, 0.05 * 32767, int(SAMPLE_RATE * (1.5 + 2.5 * x)))
        return np.concatenate([samples, tail.clip(-32768, 32767).astype(np.int16)])
    if mode == "babble":
        # Low-passed noise with a syllable-rate envelope: the level of speech, no voice in it.
        noise = np.convolve(rng.normal(0.0, 1.0, n), np.ones(6) / 6, mode="same")
        t = np.arange(n) / SAMPLE_RATE
        envelope = 0.55 + 0.45 * np.sin(2 * np.pi * (3.5 + x) * t)
        wave = noise * envelope * (0.25 * 32767 / max(float(noise.std()), 1e-9))
        return wave.clip(-32768, 32767).astype(np.int16)
    raise ValueError(f"unknown bad answer mode {mode!r}")


def spoken_samples(
    text: str, seconds: float, voice: str | None, max_new_tokens: int, fault: str | None
) -> np.ndarray:
    """The text in real words (espeak-ng), pitched by the voice, cut like the tone would be
    (at the token cap; to a fifth under the ``short`` fault)."""
    from fishflow.testing.speech import speak

    pitch = 25 + hashlib.sha256(f"{voice}".encode()).digest()[0] % 50
    samples = speak(text, pitch=pitch)
    limit = len(samples)
    if max_new_tokens > 0:
        limit = min(limit, int(max_new_tokens / TOKENS_PER_SECOND * SAMPLE_RATE))
    if fault == "short":
        limit = min(limit, int(seconds * SAMPLE_RATE))  # already a fifth of the text's time
    return samples[: max(1, limit)]


def wav_bytes(samples: np.ndarray, fmt: str = "wav") -> bytes:
    buf = io.BytesIO()
    if fmt == "mp3":
        sf.write(buf, samples, SAMPLE_RATE, format="MP3", subtype="MPEG_LAYER_III")
    else:
        sf.write(buf, samples, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


_ID_PATTERN = re.compile(r"^[a-zA-Z0-9\-_ ]+$")
_INVALID_ID = (
    "Reference ID contains invalid characters or is too long. "
    "Only alphanumeric, hyphens, underscores, and spaces are allowed."
)


def valid_reference_id(reference_id: str) -> bool:
    """The check current servers make (``ReferenceLoader._validate_id``, March 2026 on)."""
    return bool(_ID_PATTERN.match(reference_id)) and len(reference_id) <= 255


class ServeReferenceAudio(BaseModel):
    """``fish_speech.utils.schema.ServeReferenceAudio``: audio in JSON is base64 (over 255
    characters; a shorter string stays as it is and fails later, when it is decoded)."""

    audio: bytes
    text: str

    @model_validator(mode="before")
    @classmethod
    def _decode_audio(cls, values: Any) -> Any:
        audio = values.get("audio") if isinstance(values, dict) else None
        if isinstance(audio, str) and len(audio) > 255:
            with contextlib.suppress(ValueError):
                values = {**values, "audio": base64.b64decode(audio)}
        return values


class ServeTTSRequest(BaseModel):
    """The server's request schema (``fish_speech/utils/schema.py``, 2026), field for field:
    pydantic's own validation gives the 422s the server gives, lax where it is lax."""

    text: str
    # Declared 100..1000 but, nested in Annotated, the bounds are never applied.
    chunk_length: Annotated[int, conint(ge=100, le=1000, strict=True)] = 200
    format: Literal["wav", "pcm", "mp3", "opus"] = "wav"
    latency: Literal["normal", "balanced"] = "normal"
    references: list[ServeReferenceAudio] = []
    reference_id: str | None = None
    seed: int | None = None
    use_memory_cache: Literal["on", "off"] = "off"
    normalize: bool = True
    streaming: bool = False
    max_new_tokens: int = 1024
    top_p: Annotated[float, Field(ge=0.1, le=1.0, strict=True)] = 0.8
    repetition_penalty: Annotated[float, Field(ge=0.9, le=2.0, strict=True)] = 1.1
    temperature: Annotated[float, Field(ge=0.1, le=1.0, strict=True)] = 0.8


class _AddReference(BaseModel):
    """The form fields of ``/v1/references/add`` (each ``Body(...)``, required)."""

    id: str
    audio: bytes
    text: str


class _DeleteReference(BaseModel):
    reference_id: str


def validation_errors(exc: ValidationError) -> bytes:
    """A 422 body as the server writes it: pydantic's errors, ``loc`` without a body prefix."""
    try:
        return exc.json().encode()
    except (ValueError, TypeError):  # an input pydantic cannot put in JSON (invalid UTF-8)
        return json.dumps(exc.errors(include_input=False, include_context=False)).encode()


class _Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.ok = 0
        self.texts: collections.Counter[str] = collections.Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.faults: collections.Counter[str] = collections.Counter()
        self.capped = 0  # answers cut at max_new_tokens
        self.bad: collections.Counter[str] = collections.Counter()  # bad answers, by mode
        self.busy_s = 0.0
        self.service_s = 0.0  # time workers were held: compute plus making the audio
        self.first_service_at: float | None = None  # time.time() a worker was first taken
        self.last_service_at: float | None = None  # and last given back
        self.started = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": self.requests,
                "ok": self.ok,
                "texts": dict(self.texts),
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "faults": dict(self.faults),
                "capped": self.capped,
                "bad": dict(self.bad),
                "busy_s": self.busy_s,
                "service_s": self.service_s,
                "first_service_at": self.first_service_at,
                "last_service_at": self.last_service_at,
                "uptime_s": time.monotonic() - self.started,
            }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    _in_flight: _InFlight | None = None  # the generation this response answers, if any

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing ----------------------------------------------------------------------------
    def _response_ending(self) -> None:
        """Called before a response's last bytes go out: a client that has read a whole
        response and sent its next request must never find the first one still counted in
        flight (the handler thread may not have run on yet)."""
        if self._in_flight is not None:
            self._in_flight.done()
            self._in_flight = None

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(
        self,
        status: int,
        body: bytes = b"",
        ctype: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self._response_ending()
        self.end_headers()
        if self.command != "HEAD":  # a body after a HEAD answer would be read as the next one
            self.wfile.write(body)

    def _error(
        self, status: int, message: str | None, headers: dict[str, str] | None = None
    ) -> None:
        body = {"statusCode": status, "message": message, "error": HTTPStatus(status).phrase}
        self._send(status, json.dumps(body).encode(), "application/json", headers)

    def _send_chunked(
        self,
        status: int,
        body: bytes,
        ctype: str,
        truncate: bool = False,
    ) -> None:
        """Like the server: chunked transfer, no Content-Length."""
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        step = 64 * 1024
        end = len(body) // 2 if truncate else len(body)
        for i in range(0, end, step):
            piece = body[i : min(i + step, end)]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        if truncate:
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._response_ending()
        self.wfile.write(b"0\r\n\r\n")

    def _reset_connection(self) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def _authorized(self) -> bool:
        """kui's bearer_auth as the server uses it: no key -> 401 with ``WWW-Authenticate`` and
        ``message: null``; a wrong key -> 401 "Invalid token" without that header."""
        key = self.server.config.api_key
        if key is None:
            return True
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            self._error(401, None, {"WWW-Authenticate": "Bearer"})
            return False
        if token.strip() != key:
            self._error(401, "Invalid token")
            return False
        return True

    # -- routes ------------------------------------------------------------------------------
    _ROUTES: ClassVar[dict[str, tuple[str, ...]]] = {
        "/v1/tts": ("POST",),
        "/v1/health": ("GET", "POST"),
        "/v1/references/add": ("POST",),
        "/v1/references/list": ("GET",),
        "/v1/references/delete": ("DELETE",),
        "/generate": ("POST",),
        "/_emulator/stats": ("GET",),
        "/_emulator/reset": ("POST",),
    }

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        if path not in self._ROUTES:
            self._body()
            self._error(404, "Not Found")
            return
        if path.startswith("/_emulator/"):
            self._body()
            if path == "/_emulator/reset":
                with self.server.stats.lock:
                    self.server.stats.reset()
            self._send(200, json.dumps(self.server.stats.snapshot()).encode(), "application/json")
            return
        if method == "OPTIONS":  # answered by the CORS middleware, before auth and routing
            self._body()
            self._send(
                200,
                headers={
                    "Access-Control-Allow-Origin": "*",
                    "Access-Control-Allow-Methods": ", ".join(self._ROUTES[path]),
                },
            )
            return
        if method == "HEAD":  # the framework answers HEAD itself, before auth looks at the key
            self._body()
            self._send(405, b"", headers={"Allow": ", ".join(self._ROUTES[path])})
            return
        # Auth wraps every route, method check included: GET /v1/tts without a key is a 401.
        if not self._authorized():
            self._body()
            return
        if method not in self._ROUTES[path]:
            self._body()
            self._send(405, b"", headers={"Allow": ", ".join(self._ROUTES[path])})
            return
        handler = {
            "/v1/tts": self._tts,
            "/v1/health": self._health,
            "/generate": self._generate,
            "/v1/references/add": self._ref_add,
            "/v1/references/list": self._ref_list,
            "/v1/references/delete": self._ref_delete,
        }[path]
        handler()

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _health(self) -> None:
        self._body()
        with self.server.worker():  # a busy worker blocks the event loop, and health with it
            pass
        self._send(200, b'{"status":"ok"}', "application/json")

    def _parse(self, raw: bytes) -> Any:
        """The body as the server's MsgPackRequest reads it. Media types are compared as sent
        (case-sensitive); parameters such as charset are dropped."""
        header = self.headers.get("Content-Type") or ""
        ctype = header.split(";", 1)[0].strip()
        if ctype == "application/json":
            try:
                return json.loads(raw)
            except ValueError:
                self._error(400, "Invalid JSON body")
        elif ctype == "application/msgpack":
            try:
                return ormsgpack.unpackb(raw)
            except (ormsgpack.MsgpackDecodeError, ValueError) as exc:
                self._error(500, str(exc))  # the server's catch-all: the exception's text
        elif ctype == "multipart/form-data":
            form = _multipart(header, raw)
            if form is not None:
                return form
            self._error(400, "Invalid multipart body")
        else:
            self._error(415, None, {"Accept": _ACCEPT})
        return _INVALID

    def _respond(self, status: int, body: dict[str, Any]) -> None:
        """``format_response``: JSON when asked for (``?format=json`` or Accept), else msgpack."""
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        fmt = (query.get("format") or [""])[0].strip().lower()
        accept = (self.headers.get("Accept") or "").strip().lower()
        if fmt in {"json", "application/json", "msgpack", "application/msgpack"}:
            as_json = fmt in ("json", "application/json")
        else:
            as_json = "application/json" in accept and "application/msgpack" not in accept
        if as_json:
            self._send(status, json.dumps(body).encode(), "application/json")
        else:
            self._send(status, ormsgpack.packb(body), "application/msgpack")

    def _tts(self) -> None:
        srv = self.server
        raw = self._body()
        with srv.stats.lock:
            srv.stats.requests += 1  # every request, valid or not
        body = self._parse(raw)
        if body is _INVALID:
            return
        try:
            # Fields of ServerTTSRequest, whichever model this server checks requests with.
            req: Any = srv.config.request_model.model_validate(body)
        except ValidationError as exc:
            self._send(422, validation_errors(exc), "application/json")
            return
        text = req.text
        srv.record(req)
        if srv.config.max_text_length is not None and len(text) > srv.config.max_text_length:
            self._error(400, f"Text is too long, max length is {srv.config.max_text_length}")
            return
        if req.streaming and req.format != "wav":
            self._error(400, "Streaming only supports WAV format")
            return
        with srv.stats.lock:
            srv.stats.texts[text] += 1
        if srv.config.fail_status is not None:
            self._error(srv.config.fail_status, HTTPStatus(srv.config.fail_status).phrase)
            return
        fault = srv.draw_fault()
        if srv.config.faults.latency_s:
            time.sleep(srv.config.faults.latency_s)
        if fault == "busy":
            self._error(
                429, "Too many requests", {"Retry-After": f"{srv.config.faults.retry_after_s:g}"}
            )
            return
        if fault == "reset":
            self._reset_connection()
            return
        with srv.stats.lock:  # the cloud's per-tier limit on requests in flight
            over = (
                srv.config.tier_limit is not None and srv.stats.in_flight >= srv.config.tier_limit
            )
            if over:
                srv.stats.faults["tier"] += 1
        if over:
            self._error(429, "Too many requests in flight for your plan")
            return
        with srv.tracked() as self._in_flight, srv.worker():
            # The engine loads the voice first; whatever it raises becomes the generic 500,
            # its reason only in the server's log.
            voice = srv.load_voice(req)
            if voice is _INVALID:
                self._error(500, "Failed to generate speech")
                return
            seconds = 0.0 if not text.strip() else speech_duration_s(text)
            seconds *= srv.config.speech_slowdown
            cap = req.max_new_tokens / TOKENS_PER_SECOND
            if req.max_new_tokens > 0 and seconds > cap:  # 0: no cap
                seconds = cap
                with srv.stats.lock:
                    srv.stats.capped += 1
            if fault == "short":
                seconds /= 5
            if fault == "slow":
                time.sleep(srv.config.faults.slow_s)
            srv.compute(seconds)
            if not text.strip():
                self._error(500, "No audio generated, please check the input text.")
                return
            if fault == "error" or req.format in ("pcm", "opus"):
                self._error(500, "Failed to generate speech")
                return
            named = voice if isinstance(voice, str) else None
            if srv.config.speak:
                samples = spoken_samples(text, seconds, named, req.max_new_tokens, fault)
            else:
                samples = synth_samples(text, seconds, named)
            bad = bad_answer(
                text,
                req.seed,
                rate=srv.config.bad_answers,
                modes=srv.config.bad_modes,
                salt=srv.config.seed,
            )
            if bad is not None:
                samples = misbehave(samples, *bad, key=f"{req.seed}\0{text}")
                srv.note_bad(req, bad[0])
            if srv.config.level_db is not None:  # a quiet or loud server, for loudness tests
                gain = 10 ** (srv.config.level_db / 20) / 0.3
                samples = np.clip(samples * gain, -32768, 32767).astype(np.int16)
            if req.streaming:
                data, ctype = samples.tobytes(), "audio/wav"
            else:
                data = wav_bytes(samples, req.format)
                ctype = "audio/mpeg" if req.format == "mp3" else "audio/wav"
            self._send_chunked(200, data, ctype, truncate=fault == "truncate")
            if fault != "truncate":
                with srv.stats.lock:
                    srv.stats.ok += 1

    def _generate(self) -> None:
        try:
            body = json.loads(self._body())
            text = body["text"]
            assert isinstance(text, str) and text.strip()
        except (ValueError, KeyError, TypeError, AssertionError):
            self._error(400, 'expected JSON {"text": str, "language": str}')
            return
        with self.server.stats.lock:
            self.server.stats.requests += 1
            self.server.stats.texts[text] += 1
        with self.server.tracked(), self.server.worker():
            seconds = speech_duration_s(text)
            self.server.compute(seconds)
            data = wav_bytes(synth_samples(text, seconds, body.get("language")))
        self._send(200, data, "audio/wav")

    def _form(self, model: type[BaseModel]) -> Any:
        body = self._parse(self._body())
        if body is _INVALID:
            return None
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            self._send(422, validation_errors(exc), "application/json")
            return None

    def _ref_add(self) -> None:
        form = self._form(_AddReference)
        if form is None:
            return
        ref_id = form.id
        refs = self.server.references

        def answer(status: int, message: str) -> None:
            body = {"success": status == 200, "message": message, "reference_id": ref_id}
            self._respond(status, body)

        if not ref_id.strip():
            return answer(400, "Reference ID cannot be empty")
        if not form.text.strip():
            return answer(400, "Reference text cannot be empty")
        if not form.audio:
            return answer(400, "Audio file is empty or could not be read")
        if not valid_reference_id(ref_id):
            return answer(400, _INVALID_ID)
        with self.server.lock:
            # Any id a TTS request named has a folder already, and a folder is what 409 checks.
            if ref_id in refs or ref_id in self.server.folders:
                return answer(409, f"Reference ID '{ref_id}' already exists")
            refs[ref_id] = (form.audio, form.text)
            self.server.folders.add(ref_id)
        return answer(200, f"Reference voice '{ref_id}' added successfully")

    def _ref_list(self) -> None:
        self._body()
        with self.server.lock:
            ids = sorted(self.server.references)  # folders holding audio and its transcript
        message = f"Found {len(ids)} reference voices"
        self._respond(200, {"success": True, "reference_ids": ids, "message": message})

    def _ref_delete(self) -> None:
        form = self._form(_DeleteReference)
        if form is None:
            return
        ref_id = form.reference_id

        def answer(status: int, message: str) -> None:
            body = {"success": status == 200, "message": message, "reference_id": ref_id}
            self._respond(status, body)

        if not ref_id.strip():
            return answer(400, "Reference ID cannot be empty")
        if not valid_reference_id(ref_id):
            return answer(400, "Reference ID contains invalid characters or is too long")
        with self.server.lock:
            if ref_id not in self.server.folders:
                return answer(404, f"Reference ID '{ref_id}' not found")
            self.server.folders.discard(ref_id)
            self.server.references.pop(ref_id, None)
        return answer(200, f"Reference voice '{ref_id}' deleted successfully")


_ACCEPT = "application/msgpack, application/json, multipart/form-data"


def _multipart(content_type: str, raw: bytes) -> dict[str, Any] | None:
    """Form fields of a multipart body: files as bytes, other fields as str."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + raw
    )
    if not message.is_multipart():
        return None
    form: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        data = part.get_payload(decode=True) or b""
        if not isinstance(data, bytes):  # a nested multipart: no field of this form
            continue
        if part.get_filename() is not None:
            form[name] = data
        else:
            form[name] = data.decode("utf-8", "replace")
    return form


_INVALID = object()


def _decodable(audio: bytes) -> bool:
    try:
        sf.info(io.BytesIO(audio))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return False
    return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], config: EmulatorConfig) -> None:
        super().__init__(address, _Handler)
        self.config = config
        self.stats = _Stats()
        self.lock = threading.Lock()
        # id -> (audio, transcript); audio None for the voices the config starts with
        self.references: dict[str, tuple[bytes | None, str]] = {
            i: (None, "") for i in config.reference_ids
        }
        self.folders: set[str] = set(config.reference_ids)  # references/<id>/ on disk
        self.received: collections.deque[dict[str, Any]] = collections.deque(maxlen=10_000)
        self.bad_answers: collections.deque[dict[str, Any]] = collections.deque(maxlen=10_000)
        self._rng = random.Random(config.seed)
        self._rng_lock = threading.Lock()
        self._workers: queue.Queue[int] = queue.Queue()
        for i in range(config.workers):
            self._workers.put(i)
        self._connections: set[socket.socket] = set()

    def process_request(self, request: Any, client_address: Any) -> None:
        self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self._connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        for conn in list(self._connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def draw_fault(self) -> str | None:
        f = self.config.faults
        with self._rng_lock:
            x = self._rng.random()
        for name, rate in (
            ("error", f.error_rate),
            ("reset", f.reset_rate),
            ("truncate", f.truncate_rate),
            ("busy", f.busy_rate),
            ("short", f.short_audio_rate),
            ("slow", f.slow_rate),
        ):
            if x < rate:
                with self.stats.lock:
                    self.stats.faults[name] += 1
                return name
            x -= rate
        return None

    def record(self, req: Any) -> None:
        """Keep what a valid /v1/tts request asked for (reference audio by its sha256)."""
        self.received.append(
            {
                "text": req.text,
                "reference_id": req.reference_id,
                "references": [
                    {"audio_sha256": hashlib.sha256(r.audio).hexdigest(), "text": r.text}
                    for r in req.references
                ],
                "seed": req.seed,
                "use_memory_cache": req.use_memory_cache,
                "max_new_tokens": req.max_new_tokens,
                "format": req.format,
            }
        )

    def note_bad(self, req: Any, mode: str) -> None:
        self.bad_answers.append({"text": req.text, "seed": req.seed, "mode": mode})
        with self.stats.lock:
            self.stats.bad[mode] += 1

    def load_voice(self, req: Any) -> str | object | None:
        """The voice the engine would speak in, or _INVALID where loading it raises.

        A reference_id wins over inline references. A valid id the server does not hold is
        spoken in a default voice (and leaves an empty folder behind, as the server does).
        Without any reference the voice comes from the seed."""
        if req.reference_id is not None:
            ref_id = req.reference_id
            if self.config.check_reference_ids and not valid_reference_id(ref_id):
                return _INVALID
            with self.lock:
                self.folders.add(ref_id)
                stored = self.references.get(ref_id)
            if stored is None:
                return f"seed:{req.seed}" if req.seed is not None else None
            if stored[0] is not None and not _decodable(stored[0]):
                return _INVALID
            return f"id:{ref_id}"
        if req.references:
            if not all(_decodable(r.audio) for r in req.references):
                return _INVALID
            return "ref:" + hashlib.sha256(b"".join(r.audio for r in req.references)).hexdigest()
        return f"seed:{req.seed}" if req.seed is not None else None

    def worker(self) -> _WorkerSlot:
        return _WorkerSlot(self._workers, self.stats)

    def tracked(self) -> _InFlight:
        return _InFlight(self.stats)

    def compute(self, audio_seconds: float) -> None:
        cost = self.config.service_time_s
        if cost is None:
            cost = self.config.rtf * audio_seconds
        if cost > 0:
            time.sleep(cost)
        with self.stats.lock:
            self.stats.busy_s += cost


class _WorkerSlot:
    """One serial worker, taken first come first served (Queue wakes waiters in order).
    The time it is held is the request's service time, counted in ``service_s``."""

    def __init__(self, workers: queue.Queue[int], stats: _Stats) -> None:
        self._workers = workers
        self._stats = stats

    def __enter__(self) -> None:
        self._id = self._workers.get()
        self._since = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        held = time.monotonic() - self._since
        self._workers.put(self._id)
        with self._stats.lock:
            self._stats.service_s += held
            # Wall-clock bounds of the work, comparable across emulator processes (a bench's
            # busy span over several servers).
            self._stats.first_service_at = min(
                self._stats.first_service_at or time.time() - held, time.time() - held
            )
            self._stats.last_service_at = time.time()


class _InFlight:
    def __init__(self, stats: _Stats) -> None:
        self._stats = stats
        self._counted = False

    def __enter__(self) -> _InFlight:
        with self._stats.lock:
            self._stats.in_flight += 1
            self._stats.max_in_flight = max(self._stats.max_in_flight, self._stats.in_flight)
        self._counted = True
        return self

    def done(self) -> None:
        """Stop counting the request (once, however often it is called)."""
        if self._counted:
            self._counted = False
            with self._stats.lock:
                self._stats.in_flight -= 1

    def __exit__(self, *exc: object) -> None:
        self.done()


class Emulator:
    """A running emulator on 127.0.0.1. ``with Emulator(EmulatorConfig()) as emu: emu.url``."""

    def __init__(
        self, config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ):
        self.config = config or EmulatorConfig()
        self._server = _Server((host, port), self.config)
        self.host, self.port = host, self._server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def stats(self) -> dict[str, Any]:
        return self._server.stats.snapshot()

    @property
    def received(self) -> list[dict[str, Any]]:
        """The valid /v1/tts requests so far (the last 10,000), reference audio as sha256."""
        return list(self._server.received)

    @property
    def bad_answers(self) -> list[dict[str, Any]]:
        """The answers made bad on purpose (``bad_answers``), in order: text, seed and mode."""
        return list(self._server.bad_answers)

    @property
    def reference_ids(self) -> list[str]:
        """The voices the server lists."""
        with self._server.lock:
            return sorted(self._server.references)

    def reset_stats(self) -> None:
        with self._server.stats.lock:
            self._server.stats.reset()

    def start(self) -> Emulator:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        """Stop like a killed server: the port closes and open connections drop."""
        if self._thread is not None:  # shutdown() waits for a serve_forever() that must exist
            self._server.shutdown()
            self._thread = None
        self._server.server_close()
        self._server.drop_connections()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
