"""Decode, check, join and encode audio. Samples are mono int16 numpy arrays throughout."""

from __future__ import annotations

import io
import wave
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from fishflow.errors import BadAudio
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

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


def content_type(fmt: str) -> str:
    return _ENCODING[fmt][2]


def decode(data: bytes) -> Audio:
    """Decode a WAV/FLAC/MP3 body into mono int16 samples."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        # The stdlib reads 16-bit PCM WAV (what Fish sends) ten times faster than libsndfile's
        # open; anything else in a RIFF container goes to soundfile below.
        try:
            with wave.open(io.BytesIO(data)) as wav:
                if wav.getsampwidth() == 2 and wav.getnchannels() == 1:
                    frames = wav.readframes(wav.getnframes())
                    return Audio(np.frombuffer(frames, dtype="<i2"), wav.getframerate())
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
    cjk = sum(1 for ch in text if is_cjk(ch))
    other = sum(1 for ch in text if not ch.isspace()) - cjk
    return cjk / 4.5 + other / 14.0


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
    if duration >= 0.98 * cap:  # cut mid-text, or babbled until the cap: either way broken
        raise BadAudio(
            f"audio stops at the {cap:.0f} s token cap (max_new_tokens={max_new_tokens})"
        )
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
