"""Recognizers plugged in behind ``fishflow.asr.Recognizer`` (``python:MODULE:NAME``) for the
tests. No speech model can be loaded here (faster-whisper's come from a hub this machine does
not reach), so these stand in for one: they test the plumbing around a recognizer, not the
hearing."""

from __future__ import annotations

import numpy as np

KETTLE = "the kettle boils water quickly"


class HearsTheKettle:
    """Hears the kettle sentence in every answer (what a good answer to it would give)."""

    name = "hears-the-kettle"

    def transcribe(self, samples: np.ndarray, rate: int, language: str) -> str:
        return KETTLE


class Deaf:
    """Hears nothing at all: every answer is suspect."""

    name = "deaf"

    def transcribe(self, samples: np.ndarray, rate: int, language: str) -> str:
        return ""
