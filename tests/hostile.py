"""A hostile "Fish Speech server" on 127.0.0.1: real sockets, answers no real server gives.

It answers ``/v1/health`` like a server (so a run's preflight passes) and every ``/v1/tts`` in
one of these ways:

- ``endless``: 200 audio/wav, a WAV header then samples without end (up to ``endless_bytes``),
  or with another ``status`` an error body without end;
- ``trickle``: 200 with a Content-Length, then one byte every ``trickle_s`` seconds;
- ``short_wav``: a WAV whose header promises three times the samples the body holds, with a
  Content-Length matching the body;
- ``echo``: 500 whose body echoes the request's Authorization header wrapped in ANSI escapes.

``sent`` counts the body bytes the server got into its socket before the client went away.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import struct
import threading
from typing import Any, Literal

import numpy as np

from fishflow.audio import Audio, encode
from fishflow.testing.emulator import speech_duration_s, synth_samples

Mode = Literal["endless", "trickle", "short_wav", "echo"]


def speech_wav(text: str) -> bytes:
    """A plausible WAV for `text`, as the emulator makes it."""
    return encode(Audio(synth_samples(text, speech_duration_s(text), None), 44_100), "wav")


def cut_wav(data: bytes, keep: float) -> bytes:
    """`data` (a WAV) with only `keep` of its samples, its header left as it was."""
    return data[: 44 + int((len(data) - 44) * keep) // 2 * 2]


class HostileServer:
    def __init__(
        self,
        mode: Mode,
        *,
        endless_bytes: int = 1 << 30,
        trickle_s: float = 0.2,
        status: int = 200,
    ) -> None:
        self.mode = mode
        self.status = status
        self.endless_bytes = endless_bytes
        self.trickle_s = trickle_s
        self.sent = 0
        self.tts_requests = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                body = b'{"status": "ok"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                if self.path.startswith("/v1/health"):
                    return self.do_GET()
                with server._lock:
                    server.tts_requests += 1
                # The client hanging up mid-answer is what a bounded client does.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    getattr(server, "_" + server.mode)(self)
                self.close_connection = True

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def _count(self, n: int) -> None:
        with self._lock:
            self.sent += n

    # -- the answers --------------------------------------------------------------------------
    def _endless(self, h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(self.status)
        h.send_header("Content-Type", "audio/wav")
        h.send_header("Connection", "close")  # no length: the body ends when the socket does
        h.end_headers()
        header = b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt "
        header += struct.pack("<IHHIIHH", 16, 1, 1, 44_100, 88_200, 2, 16)
        header += b"data" + struct.pack("<I", 0xFFFFFFFF)
        h.wfile.write(header)
        block = (np.sin(np.arange(32_768) / 7.0) * 8000).astype("<i2").tobytes()
        sent = 0
        while sent < self.endless_bytes and not self._stop.is_set():
            h.wfile.write(block)
            sent += len(block)
            self._count(len(block))

    def _trickle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "audio/wav")
        h.send_header("Content-Length", "100000")
        h.end_headers()
        for _ in range(100_000):
            if self._stop.wait(self.trickle_s):
                return
            h.wfile.write(b"\0")
            h.wfile.flush()
            self._count(1)

    def _short_wav(self, h: http.server.BaseHTTPRequestHandler) -> None:
        body = cut_wav(speech_wav("Hello there, this is a test sentence."), 1 / 3)
        h.send_response(200)
        h.send_header("Content-Type", "audio/wav")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
        self._count(len(body))

    def _echo(self, h: http.server.BaseHTTPRequestHandler) -> None:
        auth = h.headers.get("Authorization", "")
        message = (
            f"\x1b[31mbad request\x1b[0m, you sent Authorization: {auth}\x1b]0;pwned\x07\x1b[2J"
        )
        body = json.dumps({"statusCode": 500, "message": message}).encode()
        h.send_response(500)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
        self._count(len(body))

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
