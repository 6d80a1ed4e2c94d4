"""Real words from espeak-ng, for the emulator and tests: speech rather than a tone.

espeak-ng's library and voice data come from PyPI's ``espeakng-loader`` (``fishflow[speech]``),
called through ctypes in its synchronous mode: a callback receives 22,050 Hz samples, doubled
here to the 44,100 Hz Fish Speech servers send. The library keeps global state, so calls are
serialised by a lock. A formant synthesiser's voice is not a neural one, but it has what the
answer check looks at: voiced and unvoiced sounds, pauses, a speaking rate.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from typing import Any

import numpy as np
from scipy.signal import resample_poly

from fishflow.errors import ConfigError

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_RATE, _ESPEAK_PITCH = 1, 3  # espeak_PARAMETER
_CHARS_AUTO = 0
_LOCK = threading.Lock()
_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)
# espeak-ng voice names for the languages fishflow detects; others are read as English.
_VOICES = {"zh": "cmn", "ja": "ja", "ko": "ko", "de": "de", "fr": "fr", "es": "es", "en": "en"}


class _Engine:
    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:
            raise ConfigError(
                "speech needs espeak-ng: pip install 'fishflow[speech]' (espeakng-loader)"
            ) from exc
        self.lib: Any = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path().encode()
        self.rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
        if self.rate <= 0:
            raise ConfigError("espeak-ng did not start (its voice data is missing?)")
        self.pieces: list[np.ndarray] = []

        def receive(wav: Any, count: int, events: Any) -> int:
            if count > 0:
                self.pieces.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
            return 0

        self._callback = _CALLBACK(receive)  # kept: the library holds only a pointer to it
        self.lib.espeak_SetSynthCallback(self._callback)
        self.voice: str | None = None

    def say(self, text: str, voice: str, pitch: int) -> np.ndarray:
        if voice != self.voice:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                self.lib.espeak_SetVoiceByName(b"en")
            self.voice = voice
        self.lib.espeak_SetParameter(_ESPEAK_PITCH, pitch, 0)
        self.pieces = []
        data = text.encode()
        self.lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _CHARS_AUTO, None, None)
        self.lib.espeak_Synchronize()
        return np.concatenate(self.pieces) if self.pieces else np.zeros(0, np.int16)


@functools.cache
def _engine() -> _Engine:
    return _Engine()


def available() -> bool:
    """Whether espeak-ng can be loaded here."""
    try:
        _engine()
    except (ConfigError, OSError):
        return False
    return True


def speak(text: str, *, language: str = "en", pitch: int = 50, rate: int = 44_100) -> np.ndarray:
    """``text`` said by espeak-ng: mono int16 samples at ``rate`` Hz (44,100 or its 22,050).
    ``pitch`` 0-100 tells voices apart."""
    voice = _VOICES.get(language.split("-")[0].lower(), "en")
    with _LOCK:
        engine = _engine()
        samples = engine.say(text, voice, max(0, min(100, pitch)))
        native = engine.rate
    if rate == native or not len(samples):
        return samples
    resampled = resample_poly(samples.astype(np.float32), rate, native)
    return np.clip(resampled, -32768, 32767).astype(np.int16)
