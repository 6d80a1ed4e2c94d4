"""A Fish Speech server emulator: the protocol of ../shared/fish-speech-api.md, without a GPU.

What it reproduces, because clients must cope with it:
- ``POST /v1/tts`` with msgpack or JSON bodies (415 for any other media type), strict fields
  answered with a pydantic-style 422 array, unknown fields ignored, malformed JSON -> 400,
  malformed msgpack -> 500, empty text -> 500, unknown ``reference_id`` -> 200 (default voice);
- chunked 200 responses with no Content-Length, mono 44.1 kHz 16-bit WAV (or MP3), audio cut at
  ``max_new_tokens`` (about 21.5 tokens per second);
- ``--workers N`` serial workers, first in first out; ``/v1/health`` waits for a free worker,
  as the real server's blocked event loop does;
- ``--api-key``: every route needs the Bearer key, else 401 with ``WWW-Authenticate``;
- the ``POST /generate {"text", "language"}`` -> WAV dialect of some packaged images.

Audio is deterministic (a tone derived from the text) and lasts about as long as the text takes
to speak. Generating takes ``rtf`` seconds per audio second (or a fixed ``service_time_s``).
Fault knobs inject 500s, connection resets, truncated bodies, 429s with Retry-After, audio cut
short and extra latency. ``GET /_emulator/stats`` reports requests per text and the most requests
ever in flight at once, so tests count rather than time.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import queue
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import numpy as np
import ormsgpack
import soundfile as sf

SAMPLE_RATE = 44_100
TOKENS_PER_SECOND = 21.5
_FORMATS = ("wav", "pcm", "mp3", "opus")


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
    reference_ids: tuple[str, ...] = ()  # voices /v1/references/list reports
    fail_status: int | None = None  # answer every /v1/tts with this status (402: no credit)
    tier_limit: int | None = None  # like the Fish Audio cloud: 429 beyond N requests in flight
    seed: int = 0
    level_db: float | None = None  # peak level of the voice, dBFS (None: -10.5, the default)
    faults: Faults = field(default_factory=Faults)


def speech_duration_s(text: str) -> float:
    """How long the emulated voice takes: 0.065 s per Latin character, 0.21 s per CJK one."""
    seconds = 0.0
    for ch in text:
        if ch.isspace():
            seconds += 0.03
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


def wav_bytes(samples: np.ndarray, fmt: str = "wav") -> bytes:
    buf = io.BytesIO()
    if fmt == "mp3":
        sf.write(buf, samples, SAMPLE_RATE, format="MP3", subtype="MPEG_LAYER_III")
    else:
        sf.write(buf, samples, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


class _Validation(Exception):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors


def _err(kind: str, name: str, msg: str, value: Any) -> dict[str, Any]:
    shown = value if isinstance(value, str | int | float | bool | None) else repr(value)[:50]
    return {"type": kind, "loc": ["body", name], "msg": msg, "input": shown}


def validate_tts(body: Any) -> dict[str, Any]:
    """Check a ServeTTSRequest the way the server's pydantic model does (strict fields)."""
    if not isinstance(body, dict):
        raise _Validation([_err("model_type", "", "Input should be an object", body)])
    errors: list[dict[str, Any]] = []
    req: dict[str, Any] = {
        "chunk_length": 200,
        "format": "wav",
        "references": [],
        "reference_id": None,
        "seed": None,
        "use_memory_cache": "off",
        "normalize": True,
        "streaming": False,
        "max_new_tokens": 1024,
        "top_p": 0.8,
        "repetition_penalty": 1.1,
        "temperature": 0.8,
    }
    if "text" not in body:
        errors.append(_err("missing", "text", "Field required", None))
    elif not isinstance(body["text"], str):
        errors.append(_err("string_type", "text", "Input should be a valid string", body["text"]))
    req["text"] = body.get("text")

    def number(name: str, lo: float, hi: float) -> None:
        if name not in body:
            return
        v = body[name]
        if isinstance(v, bool) or not isinstance(v, int | float):
            errors.append(_err("float_type", name, "Input should be a valid number", v))
        elif not lo <= v <= hi:
            errors.append(
                _err(
                    "less_than_equal" if v > hi else "greater_than_equal",
                    name,
                    f"Input should be between {lo} and {hi}",
                    v,
                )
            )
        else:
            req[name] = float(v)

    def integer(name: str, nullable: bool = False) -> None:
        if name not in body:
            return
        v = body[name]
        if v is None and nullable:
            req[name] = None
        elif isinstance(v, bool) or not isinstance(v, int):
            errors.append(_err("int_type", name, "Input should be a valid integer", v))
        else:
            req[name] = v

    number("top_p", 0.1, 1.0)
    number("temperature", 0.1, 1.0)
    number("repetition_penalty", 0.9, 2.0)
    integer("max_new_tokens")
    integer("chunk_length")  # declared 100..300 but not enforced
    integer("seed", nullable=True)
    if "format" in body:
        if body["format"] not in _FORMATS:
            errors.append(
                _err("enum", "format", f"Input should be {', '.join(_FORMATS)}", body["format"])
            )
        else:
            req["format"] = body["format"]
    if "use_memory_cache" in body:
        if body["use_memory_cache"] not in ("on", "off"):
            errors.append(
                _err(
                    "enum",
                    "use_memory_cache",
                    "Input should be 'on' or 'off'",
                    body["use_memory_cache"],
                )
            )
        else:
            req["use_memory_cache"] = body["use_memory_cache"]
    for name in ("normalize", "streaming"):
        if name in body:
            if not isinstance(body[name], bool):
                errors.append(
                    _err("bool_type", name, "Input should be a valid boolean", body[name])
                )
            else:
                req[name] = body[name]
    if "reference_id" in body:
        if body["reference_id"] is not None and not isinstance(body["reference_id"], str):
            errors.append(
                _err(
                    "string_type",
                    "reference_id",
                    "Input should be a valid string",
                    body["reference_id"],
                )
            )
        else:
            req["reference_id"] = body["reference_id"]
    if "references" in body:
        refs = body["references"]
        if not isinstance(refs, list) or not all(
            isinstance(r, dict)
            and isinstance(r.get("text"), str)
            and isinstance(r.get("audio"), bytes | str)
            for r in refs
        ):
            errors.append(_err("list_type", "references", "Input should be a valid list", refs))
        else:
            req["references"] = refs
    if errors:
        raise _Validation(errors)
    return req


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
        key = self.server.config.api_key
        if key is None or self.headers.get("Authorization") == f"Bearer {key}":
            return True
        self._error(401, "Invalid or missing API key", {"WWW-Authenticate": "Bearer"})
        return False

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
        if method not in self._ROUTES[path]:
            self._body()
            self._send(405, b"", headers={"Allow": ", ".join(self._ROUTES[path])})
            return
        if path.startswith("/_emulator/"):
            self._body()
            if path == "/_emulator/reset":
                with self.server.stats.lock:
                    self.server.stats.reset()
            self._send(200, json.dumps(self.server.stats.snapshot()).encode(), "application/json")
            return
        if not self._authorized():
            self._body()
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

    def _health(self) -> None:
        self._body()
        with self.server.worker():  # a busy worker blocks the event loop, and health with it
            pass
        self._send(200, b'{"status":"ok"}', "application/json")

    def _parse(self, raw: bytes) -> Any:
        ctype = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if ctype == "application/json":
            try:
                return json.loads(raw)
            except ValueError:
                self._error(400, "Invalid JSON body")
        elif ctype == "application/msgpack":
            try:
                return ormsgpack.unpackb(raw)
            except (ormsgpack.MsgpackDecodeError, ValueError):
                self._error(500, "Internal Server Error")
        else:
            self._error(415, f"Unsupported content type: {ctype or 'none'}")
        return _INVALID

    def _tts(self) -> None:
        srv = self.server
        raw = self._body()
        with srv.stats.lock:
            srv.stats.requests += 1  # every request, valid or not
        body = self._parse(raw)
        if body is _INVALID:
            return
        try:
            req = validate_tts(body)
        except _Validation as exc:
            self._send(422, json.dumps(exc.errors).encode(), "application/json")
            return
        text: str = req["text"]
        if srv.config.max_text_length is not None and len(text) > srv.config.max_text_length:
            self._error(400, f"Text is too long, max length is {srv.config.max_text_length}")
            return
        if req["streaming"] and req["format"] != "wav":
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
            seconds = 0.0 if not text.strip() else speech_duration_s(text)
            seconds = min(seconds, req["max_new_tokens"] / TOKENS_PER_SECOND)
            if fault == "short":
                seconds /= 5
            if fault == "slow":
                time.sleep(srv.config.faults.slow_s)
            srv.compute(seconds)
            if not text.strip():
                self._error(500, "No audio generated, please check the input text.")
                return
            if fault == "error" or req["format"] in ("pcm", "opus"):
                self._error(500, "Failed to generate speech")
                return
            voice = req["reference_id"] or (
                str(len(req["references"])) if req["references"] else None
            )
            samples = synth_samples(text, seconds, voice)
            if srv.config.level_db is not None:  # a quiet or loud server, for loudness tests
                gain = 10 ** (srv.config.level_db / 20) / 0.3
                samples = np.clip(samples * gain, -32768, 32767).astype(np.int16)
            if req["streaming"]:
                data, ctype = samples.tobytes(), "audio/wav"
            else:
                data = wav_bytes(samples, req["format"])
                ctype = "audio/mpeg" if req["format"] == "mp3" else "audio/wav"
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

    def _ref_add(self) -> None:
        self._body()  # multipart parsing is beyond what fishflow needs; accept and record nothing
        self._error(501, "references/add is not emulated")

    def _ref_list(self) -> None:
        self._body()
        ids = sorted(self.server.references)
        if "format=json" in self.path or "json" in (self.headers.get("Accept") or ""):
            self._send(200, json.dumps({"reference_ids": ids}).encode(), "application/json")
        else:
            self._send(200, ormsgpack.packb({"reference_ids": ids}), "application/msgpack")

    def _ref_delete(self) -> None:
        try:
            ref = json.loads(self._body() or b"{}").get("reference_id")
        except ValueError:
            self._error(400, "Invalid JSON body")
            return
        if ref not in self.server.references:
            self._error(404, f"Reference {ref!r} not found")
            return
        self.server.references.discard(ref)
        self._send(200, b'{"success":true}', "application/json")


_INVALID = object()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], config: EmulatorConfig) -> None:
        super().__init__(address, _Handler)
        self.config = config
        self.stats = _Stats()
        self.references: set[str] = set(config.reference_ids)
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
