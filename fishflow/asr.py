"""Listening with a speech recognizer: what an answer says, against what was asked for.

The signal checks (``fishflow.qa``) hear babble, noise, repetition and skipping by their
shape; a recognizer hears the words. Each chunk's answer is transcribed and compared with the
text that was sent by character error rate (CER), after both are normalised the same way:
case folded, punctuation and spacing dropped, and numbers said in words on both sides (the
model was sent words; a recognizer may write digits).

Recognizers plug in behind one small interface, ``Recognizer.transcribe``. ``fishflow[asr]``
brings faster-whisper: CTranslate2's Whisper on the CPU in int8, the model by name (``tiny``,
``base``...: downloaded once by faster-whisper from the Hugging Face hub into its cache) or by
local path (a converted model folder, for machines without that network). Chosen by
``recognizer(spec)``: ``faster-whisper:NAME``, ``faster-whisper:/path/to/model``, or
``python:MODULE:NAME`` for a recognizer of your own (another engine, a service).

(PocketSphinx, whose wheel carries an English model, was tried as a recognizer needing no
download: on espeak-ng's speech it scored CER 0.52-0.77 on correct answers and 0.60-0.89 on
wrong ones, too close to tell them apart.)
"""

from __future__ import annotations

import functools
import importlib
import unicodedata
from typing import Protocol

import numpy as np
from scipy.signal import resample_poly

from fishflow.errors import ConfigError
from fishflow.numbers import number_spans
from fishflow.qa import Verdict


class Recognizer(Protocol):
    name: str

    def transcribe(self, samples: np.ndarray, rate: int, language: str) -> str:
        """The words in mono int16 ``samples`` at ``rate`` Hz, said in ``language``."""
        ...


def _to_16k_float(samples: np.ndarray, rate: int) -> np.ndarray:
    audio = samples.astype(np.float32) / 32768.0
    if rate != 16_000:
        g = np.gcd(16_000, rate)
        audio = resample_poly(audio, 16_000 // g, rate // g).astype(np.float32)
    return audio


class FasterWhisper:
    """faster-whisper (CTranslate2 Whisper) on the CPU, int8."""

    def __init__(self, model: str, *, threads: int = 1) -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise ConfigError("faster-whisper: pip install 'fishflow[asr]'") from exc
        self.name = f"faster-whisper:{model}"
        try:
            self._model = WhisperModel(
                model, device="cpu", compute_type="int8", cpu_threads=threads
            )
        except Exception as exc:  # a model name without a network, a bad path
            raise ConfigError(f"faster-whisper cannot load model {model!r}: {exc}") from None

    def transcribe(self, samples: np.ndarray, rate: int, language: str) -> str:
        segments, _ = self._model.transcribe(
            _to_16k_float(samples, rate),
            language=language.split("-")[0] or None,
            beam_size=1,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        return " ".join(s.text.strip() for s in segments)


@functools.cache
def recognizer(spec: str) -> Recognizer:
    """The recognizer a setting names: ``faster-whisper:MODEL``, or ``python:MODULE:NAME`` for
    one of your own (a class or factory taking no arguments that returns a ``Recognizer``)."""
    kind, _, model = spec.partition(":")
    if kind == "faster-whisper" and model:
        return FasterWhisper(model)
    if kind == "python" and ":" in model:
        module, _, name = model.partition(":")
        try:
            made: Recognizer = getattr(importlib.import_module(module), name)()
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"recognizer {spec!r}: {exc}") from None
        return made
    raise ConfigError(
        f"unknown recognizer {spec!r}: use faster-whisper:MODEL (a name such as tiny, or a "
        "local model folder) or python:MODULE:NAME"
    )


def comparable(text: str, language: str) -> str:
    """Text reduced to what a recognizer can get right: numbers in words, letters and digits
    only, case folded (spaces too are dropped: recognizers split words differently)."""
    out, at = [], 0
    for span in number_spans(text, language):
        out += [text[at : span.start], span.spoken]
        at = span.end
    out.append(text[at:])
    said = unicodedata.normalize("NFKC", "".join(out)).casefold()
    return "".join(ch for ch in said if ch.isalnum())


def character_error_rate(sent: str, heard: str, language: str) -> float:
    """Edits (insertions, deletions, substitutions) from what was sent to what was heard, per
    character sent, after both are made ``comparable``; 0.0 for nothing to compare."""
    from rapidfuzz.distance import Levenshtein

    reference, hypothesis = comparable(sent, language), comparable(heard, language)
    if not reference:
        return 0.0 if not hypothesis else 1.0
    return Levenshtein.distance(reference, hypothesis) / len(reference)


def heard(samples: np.ndarray, rate: int, text: str, language: str, spec: str) -> float:
    """The character error rate of what ``spec``'s recognizer hears in an answer for
    ``text``. Blocking (the recognizer's CPU work): call it from a worker thread."""
    return character_error_rate(
        text, recognizer(spec).transcribe(samples, rate, language), language
    )


def asr_verdict(cer: float, max_cer: float, passed: Verdict) -> Verdict:
    """``passed`` (a verdict of the signal checks) made suspect when the recognizer heard
    something else than was sent; its severity is how far past the bound it went."""
    if cer <= max_cer:
        return passed
    return Verdict("suspect", "asr", round(cer, 4), severity=max(1.0, cer / max_cer))
