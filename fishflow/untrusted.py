"""What servers and sources say is data: bounds on what is read, and words made safe to show.

A Fish Speech server (or anything answering at its URL) is not trusted with the pipeline's
memory, its time, its secrets or its terminal:

- ``audio_body_cap``: the most bytes a TTS answer may have, from the text and the token cap;
  ``ERROR_BODY_CAP`` and ``JSON_BODY_CAP`` for error bodies and voice lists. The client reads
  bodies as a stream and stops at the cap (``fishflow.fish_speech``).
- ``server_words``: an error body's text, cut, stripped of control characters (terminal escapes
  included) and of the API key and any ``Bearer`` token, before it reaches an exception (and so
  logs, manifests, artifacts).
- ``printable``: user- or server-supplied text (item ids, chunk text, error lines) with control
  characters shown as escapes (``\\x1b``), for printing to a terminal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from fishflow.audio import TOKENS_PER_SECOND, expected_duration_s

__all__ = [
    "ERROR_BODY_CAP",
    "JSON_BODY_CAP",
    "WORDS_CHARS",
    "audio_body_cap",
    "printable",
    "server_words",
]

# 44.1 kHz 16-bit mono WAV, what Fish sends (docs/fish-speech-api.md, "Responses and errors").
WAV_BYTES_PER_S = 44_100 * 2
# Room over the longest plausible audio: another rate, stereo, a large header or extra chunks.
_MARGIN = 2.0
_HEADER_SLACK = 64 * 1024
# Error bodies are a JSON object or a 422 list of field errors: a few hundred bytes from a real
# server. Only their first words are kept, so more is never read.
ERROR_BODY_CAP = 8 * 1024
# /v1/references/* answers: a list of voice ids, a message.
JSON_BODY_CAP = 1 << 20
# How much of a server's words an error message keeps.
WORDS_CHARS = 300


def audio_body_cap(text: str, max_new_tokens: int) -> int:
    """The most bytes a TTS answer for `text` may have before the client stops reading.

    Audio longer than ``3 x expected + 5`` seconds is refused as implausible anyway
    (``check_plausible``) and a generation cannot outrun ``max_new_tokens`` (about 21.5 tokens
    per second; 0 means no cap), so twice the shorter of the two, as 44.1 kHz 16-bit WAV, with
    room for a header, is more than any answer worth keeping.
    """
    longest_s = 3 * expected_duration_s(text) + 5
    if max_new_tokens > 0:
        longest_s = min(longest_s, max_new_tokens / TOKENS_PER_SECOND)
    return int(_MARGIN * longest_s * WAV_BYTES_PER_S) + _HEADER_SLACK


# ESC sequences (CSI with its parameters, OSC/DCS/APC/PM/SOS strings up to their terminator,
# two-byte escapes) go whole: stripping only the ESC would leave "[31m" behind.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?"  # CSI
    r"|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC, DCS, SOS, PM, APC
    r"|\x1b[ -~]?"  # two-byte escapes, a lone ESC
    r"|\x9b[0-?]*[ -/]*[@-~]?"  # 8-bit CSI
)
# C0 and C1 controls, DEL, and the bidirectional overrides that reorder what a terminal shows.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_BREAKS = re.compile("[\t\n\r\x0b\x0c]")
_BEARER = re.compile(r"(?i)\b(bearer)(\s+|%20|\+)[^\s\"',;\\}\]]+")
_SPACES = re.compile(r"\s+")
# A cut body may end with the start of a secret: this much of one is withheld too.
_SECRET_PREFIX = 6


def server_words(text: str, *, secrets: Iterable[str | None] = (), limit: int = WORDS_CHARS) -> str:
    """`text` from a server, safe to keep: no control characters or terminal escapes, no
    secret (each of `secrets`, and any ``Bearer`` token) and at most `limit` characters."""
    text = _ESCAPES.sub("", text)
    # Line breaks part words; any other control is dropped, so one cannot split a secret.
    text = _CONTROLS.sub("", _BREAKS.sub(" ", text))
    text = _BEARER.sub(r"\1 ***", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
            # What a body cut at its cap (or this cut) left of a secret at its end.
            for n in range(len(secret) - 1, _SECRET_PREFIX - 1, -1):
                if text.endswith(secret[:n]):
                    text = text[:-n] + "***"
                    break
    text = _SPACES.sub(" ", text).strip()
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return text


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` for a terminal: control characters (ESC, CR, newlines, bidi overrides) shown as
    escapes (``\\x1b``, ``\\u202e``), everything else as it is."""
    return _CONTROLS.sub(_escape, text)
