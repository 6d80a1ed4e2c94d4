"""Decode, check, join and encode audio. Samples are mono int16 numpy arrays throughout."""

from __future__ import annotations

import hashlib
import io
import struct
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

import numpy as np
import soundfile as sf

from fishflow.errors import BadAudio, CutAtTokenCap
from fishflow.loudness import Level, limit
from fishflow.text import is_cjk

# Fish generates about 21.5 semantic tokens per second of audio.
TOKENS_PER_SECOND = 21.5

_ENCODING = {
    "wav": ("WAV", "PCM_16", "audio/wav"),
    "flac": ("FLAC", "PCM_16", "audio/flac"),
    "mp3": ("MP3", "MPEG_LAYER_III", "audio/mpeg"),
}


@dataclass(frozen=True, slots=True)
class Audio:
    samples: np.ndarray  # int16, mono
    sample_rate: int
    level: Level | None = None  # measured once, when first stitched (see fishflow.loudness)

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


def content_type(fmt: str) -> str:
    return _ENCODING[fmt][2]


# A RIFF or data size a streaming writer puts before it knows the length: it promises nothing.
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)


def wav_shortfall(data: bytes) -> str | None:
    """Why a RIFF/WAVE body holds less than its header promises (a body cut short, though its
    Content-Length matched), or None. Reads only the chunk headers."""
    riff_size = struct.unpack_from("<I", data, 4)[0]
    if riff_size not in _UNKNOWN_SIZES and 8 + riff_size > len(data):
        return f"its RIFF header promises {8 + riff_size} bytes, the body holds {len(data)}"
    pos = 12
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if chunk_id == b"data":
            held = len(data) - pos - 8
            if size not in _UNKNOWN_SIZES and size > held:
                return f"its header promises {size} bytes of samples, the body holds {held}"
            return None
        pos += 8 + size + (size & 1)  # chunks are padded to an even length
    return "it has no complete data chunk"


def decode(data: bytes) -> Audio:
    """Decode a WAV/FLAC/MP3 body into mono int16 samples. A WAV body shorter than its header
    says is refused (BadAudio), never decoded as far as it goes."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        if short := wav_shortfall(data):
            raise BadAudio(f"WAV body cut short ({len(data)} bytes): {short}")
        # The stdlib reads 16-bit PCM WAV (what Fish sends) ten times faster than libsndfile's
        # open; anything else in a RIFF container goes to soundfile below.
        # The samples are a view of the body from where the header leaves the reader (the
        # data chunk's start): no copy of a 1-2 MB chunk.
        try:
            body = io.BytesIO(data)
            with wave.open(body) as wav:
                if wav.getsampwidth() == 2 and wav.getnchannels() == 1:
                    count = min(wav.getnframes(), (len(data) - body.tell()) // 2)
                    samples = np.frombuffer(data, dtype="<i2", count=count, offset=body.tell())
                    return Audio(samples, wav.getframerate())
        except (wave.Error, EOFError):
            pass
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise BadAudio(f"response is not decodable audio ({len(data)} bytes): {exc}") from exc
    mono = samples.mean(axis=1).astype(np.int16) if samples.shape[1] > 1 else samples[:, 0]
    return Audio(mono, rate)


def expected_duration_s(text: str) -> float:
    """A rough speaking time: ~14 Latin characters or ~4.5 CJK characters per second."""
    # Counted in C where it can be (every response is checked with this): a character-by-
    # character loop in Python was most of check_plausible's time.
    visible = len("".join(text.split()))
    cjk = 0 if text.isascii() else sum(1 for ch in text if is_cjk(ch))
    return cjk / 4.5 + (visible - cjk) / 14.0


def check_plausible(audio: Audio, text: str, *, sample_rate: int, max_new_tokens: int) -> None:
    """Raise BadAudio for what the server reports as success but is broken: wrong rate,
    near-silence, speech far shorter than the text needs, or cut at the token cap."""
    if audio.sample_rate != sample_rate:
        raise BadAudio(f"sample rate {audio.sample_rate} Hz, expected {sample_rate} Hz")
    expected = expected_duration_s(text)
    duration = audio.duration_s
    if duration < 0.4 * expected - 0.1:
        raise BadAudio(
            f"audio lasts {duration:.2f} s, far below the ~{expected:.1f} s its text needs"
        )
    cap = max_new_tokens / TOKENS_PER_SECOND
    if max_new_tokens > 0 and duration >= 0.98 * cap:
        if expected >= 0.3 * cap:  # the text did not fit one generation: split it, not resend
            raise CutAtTokenCap(
                f"audio stops at the {cap:.0f} s token cap (max_new_tokens={max_new_tokens})"
            )
        # A short text that ran to the cap is babble, which a new sampling may not repeat.
        raise BadAudio(f"audio runs to the {cap:.0f} s token cap for a text of ~{expected:.1f} s")
    if duration > 3 * expected + 5:
        raise BadAudio(
            f"audio lasts {duration:.2f} s, far beyond the ~{expected:.1f} s its text needs"
        )
    sample = audio.samples[::16].astype(np.float32)  # every 16th sample is plenty for a level
    if len(sample) and np.sqrt(np.mean(sample**2)) < 30:
        raise BadAudio("audio is near-silent")


def stitch(parts: list[Audio], *, pause_ms: int | Sequence[int], fade_ms: int) -> Audio:
    """Join chunk audio with a pause and fades at each join (Fish decodes chunks apart, so raw
    joins click). ``pause_ms``: one length for every join, or one per join (``len(parts) - 1``,
    see ``Chunk.boundary``)."""
    if not parts:
        raise ValueError("nothing to stitch")
    pauses = [pause_ms] * (len(parts) - 1) if isinstance(pause_ms, int) else list(pause_ms)
    if len(pauses) != len(parts) - 1:
        raise ValueError(f"{len(pauses)} pauses for {len(parts) - 1} joins")
    if len(parts) == 1:
        return parts[0]  # no join, nothing to fade
    rate = parts[0].sample_rate
    fade = int(rate * fade_ms / 1000)
    pieces: list[np.ndarray] = []
    for i, part in enumerate(parts):
        x = part.samples.astype(np.float32)
        n = min(fade, len(x) // 2)
        if n:
            ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
            if i > 0:
                x[:n] *= ramp
            if i < len(parts) - 1:
                x[-n:] *= ramp[::-1]
        if i:
            pieces.append(np.zeros(int(rate * pauses[i - 1] / 1000), dtype=np.float32))
        pieces.append(x)
    joined = np.concatenate(pieces)
    return Audio(np.clip(joined, -32768, 32767).astype(np.int16), rate)


def encode(audio: Audio, fmt: str) -> bytes:
    """Encode to wav (stdlib: a header and the samples), flac or mp3 (libsndfile)."""
    buf = io.BytesIO()
    if fmt == "wav":
        with wave.open(buf, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(audio.sample_rate)
            wav.writeframes(audio.samples.astype("<i2", copy=False).tobytes())
        return buf.getvalue()
    container, subtype, _ = _ENCODING[fmt]
    sf.write(buf, audio.samples, audio.sample_rate, format=container, subtype=subtype)
    return buf.getvalue()


class AudioWriter:
    """An item's audio file, written chunk by chunk as the chunks come in, in order.

    Each chunk gets its gain (loudness), the peak ceiling, a fade at each join (Fish decodes
    chunks apart, so raw joins click) and the pause before it, then goes straight to the
    encoder: memory holds one chunk, whatever the item's length. wav goes through the stdlib
    (a header and the samples: the fastest path for short items), flac and mp3 through
    libsndfile, which encodes both incrementally. ``target`` is a path or a binary file object.
    """

    def __init__(
        self, target: str | IO[bytes], fmt: str, sample_rate: int, *, fade_ms: int
    ) -> None:
        self.format = fmt
        self.sample_rate = sample_rate
        self.frames = 0
        self._fade = int(sample_rate * fade_ms / 1000)
        self._wav: wave.Wave_write | None = None
        self._sf: sf.SoundFile | None = None
        if fmt == "wav":
            self._wav = wave.open(target, "wb")  # noqa: SIM115 (closed in close())
            self._wav.setnchannels(1)
            self._wav.setsampwidth(2)
            self._wav.setframerate(sample_rate)
        else:
            container, subtype, _ = _ENCODING[fmt]
            self._sf = sf.SoundFile(target, "w", sample_rate, 1, format=container, subtype=subtype)

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate

    def _write(self, samples: np.ndarray) -> None:
        if self._wav is not None:
            self._wav.writeframesraw(samples.astype("<i2", copy=False).data)
        else:
            assert self._sf is not None
            self._sf.write(samples)
        self.frames += len(samples)

    def add(
        self,
        samples: np.ndarray,
        *,
        pause_before_ms: int = 0,
        gain_db: float = 0.0,
        ceiling: float | None = None,
        fade_in: bool = False,
        fade_out: bool = False,
    ) -> float:
        """Append one chunk (int16) after ``pause_before_ms`` of silence; returns where the
        chunk starts in the file, in seconds."""
        if pause_before_ms:
            self._write(np.zeros(int(self.sample_rate * pause_before_ms / 1000), np.int16))
        start = self.duration_s
        n = min(self._fade, len(samples) // 2) if (fade_in or fade_out) else 0
        if not n and not gain_db and ceiling is None:
            self._write(samples)  # nothing to change: no float round trip
            return start
        x = samples.astype(np.float32)  # int16 scale throughout: no extra passes to rescale
        if gain_db:
            x *= np.float32(10 ** (gain_db / 20))
        if n:
            ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
            if fade_in:
                x[:n] *= ramp
            if fade_out:
                x[-n:] *= ramp[::-1]
        if ceiling is not None:
            x = limit(x, ceiling * 32768, self.sample_rate)
        np.clip(x, -32768, 32767, out=x)
        self._write(x.astype(np.int16))
        return start

    def close(self) -> None:
        if self._wav is not None:
            self._wav.close()
        if self._sf is not None:
            self._sf.close()


def file_sha256(path: str) -> tuple[str, int]:
    """sha256 and size of a file, read in 1 MB blocks (never whole into memory)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size
