"""Listening before publishing: is a chunk's answer the speech its text asks for?

A TTS server answers 200 when the model said the wrong thing: the end said again, the last part
swallowed, noise or babble instead of speech, a long tail of breath or noise. ``check`` looks at
one answer (samples, rate, the text sent, the voice's speaking rate learned so far) and says:

- ``pass``: speech as expected;
- ``trim``: speech as expected, with silence or noise at an edge clearly apart from the speech
  (a quiet gap between them), to cut before the chunk is cached or stitched;
- ``suspect``: synthesise again. The check that fired names it (the manifests' ``qa_check``):

  ``clipping``      share of samples at full scale
  ``dc_offset``     mean of the samples, in full scale
  ``babble``        share of the loud 46 ms frames that are voiced (periodic): speech is
                    mostly voiced, noise and babble are not
  ``noise``         median spectral flatness of the loud frames (1: white noise)
  ``lead_noise``    seconds of non-speech before the speech that run into it
  ``trail_noise``   ... after it
  ``rate_long``     speech duration / what the text predicts at the voice's rate (repetition)
  ``rate_short``    ... the same, too short (words or sentences skipped)

The speaking rate is learned in the run per voice and language (``SpeechRates``): the median
and MAD of log(duration / rough duration) over the accepted answers, where the rough duration
is ``fishflow.audio.expected_duration_s`` (14 Latin or 4.5 CJK characters per second, the rate
the pipeline's "far too short" and "wildly long" checks use). Until ``rate_warmup`` answers of a
voice have been measured, that rough rate is the prior, with those checks' bounds (under 0.4x
- 0.1 s, over 3x + 5 s): a voice may speak at half or twice the rough rate. Every answer whose
signal is speech teaches the rate, suspect for its length or not: the median and MAD shrug off
the few bad ones, and follow a voice that is slower than the rough rate all along.

Cost: the signal is looked at in 46 ms frames of every 4th sample (about 11 kHz, enough for a
voice's pitch and the shape of its spectrum); one FFT per frame gives the flatness and, through
the autocorrelation, the voicing: about 0.1 ms of CPU per audio second. No prefect, no I/O:
numpy and scipy only.
"""

from __future__ import annotations

import collections
import hashlib
import math
import threading
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.fft

from fishflow.audio import expected_duration_s
from fishflow.settings import QaSettings

Outcome = Literal["pass", "trim", "suspect"]

_FULL_SCALE = 32768.0
_ANALYSIS_RATE = 11_025  # Hz the frames are taken at (every 4th sample of 44.1 kHz)
_FRAME = 512  # samples per analysis frame at that rate: 46 ms, two periods of a 45 Hz voice
_FFT = 768  # zero-padded past the longest lag (184): the autocorrelation does not wrap
_PITCH_HZ = (60.0, 420.0)  # voices' fundamental
_FLAT_HZ = (100.0, 5000.0)  # band the flatness is measured over
_VOICED = 0.5  # normalised autocorrelation peak above which a frame is voiced
_LOUD_BELOW_PEAK_DB = 40.0  # a frame within this of the loudest one is "loud"
_FLOOR_DB = -60.0  # ... and above this absolute level (dBFS)
# A digit is said as a word or more ("350": "three hundred and fifty"): about 3.5 characters more
# each at the rough rate, else a price list reads as repetition.
_DIGIT_S = 0.25
# Bounds on a voice not yet learned: those of fishflow.audio.check_plausible (factor, seconds).
_PRIOR_SHORT = (0.4, 0.1)
_PRIOR_LONG = (3.0, 5.0)


@dataclass(frozen=True, slots=True)
class RateStats:
    """A voice's speaking rate so far: its duration per rough duration (median) and the robust
    spread of the log of it (1.4826 x MAD), over ``count`` accepted answers."""

    ratio: float = 1.0
    spread: float = 0.0
    count: int = 0


@dataclass(frozen=True, slots=True)
class Verdict:
    """What ``check`` found. ``start``/``end`` are the samples to keep (a trim); ``speech_s``
    the speech's duration and ``ratio`` that over the text's rough duration (what the voice's
    rate is learned from); ``severity`` how far past its bound the check went (0 when none:
    the best of several suspect answers has the lowest)."""

    outcome: Outcome
    check: str | None = None
    measure: float | None = None
    start: int = 0
    end: int | None = None
    speech_s: float = 0.0
    ratio: float | None = None
    severity: float = 0.0

    @property
    def suspect(self) -> bool:
        return self.outcome == "suspect"


@dataclass(frozen=True, slots=True)
class Checked:
    """How the answer kept for a chunk fared: ``answers`` tried for it (1: the first passed),
    and the check the kept one failed with its measure (None: it passed)."""

    answers: int = 1
    check: str | None = None
    measure: float | None = None

    @property
    def marked(self) -> bool:
        return self.check is not None


def retry_seed(base: int | None, what: str, attempt: int) -> int:
    """The seed of answer ``attempt`` (1, 2, ...) after a suspect one: a pure function of the
    first answer's seed, the text (or item id) and the attempt, so that a re-run asks for the
    same answers in the same order (and a deterministic server gives the same audio)."""
    digest = hashlib.sha256(f"qa\0{base}\0{what}\0{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF


class SpeechRates:
    """Speaking rates learned in a run, per (voice, language): the last ``window`` answers of
    each that were speech, as log(duration / rough duration). Batches run in threads of their
    own (Prefect's task runner) and share one: a lock keeps the windows whole."""

    def __init__(self, window: int = 256) -> None:
        self._window = window
        self._lock = threading.Lock()
        self._logs: dict[tuple[str, str], collections.deque[float]] = {}
        self._stats: dict[tuple[str, str], RateStats] = {}

    def expected(self, voice: str, language: str) -> RateStats:
        return self._stats.get((voice, language), RateStats())

    def add(self, voice: str, language: str, ratio: float) -> None:
        if not ratio > 0 or not math.isfinite(ratio):
            return
        key = (voice, language)
        with self._lock:
            logs = self._logs.setdefault(key, collections.deque(maxlen=self._window))
            logs.append(math.log(ratio))
            values = np.fromiter(logs, dtype=np.float64, count=len(logs))
        median = float(np.median(values))
        mad = float(np.median(np.abs(values - median)))
        self._stats[key] = RateStats(math.exp(median), 1.4826 * mad, len(values))


def _frame_measures(
    samples: np.ndarray, rate: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Per 46 ms frame: whether it is loud, its voicing (autocorrelation peak in the pitch
    range, 0..1) and spectral flatness (0..1), both 0 for a quiet frame (not looked at: the
    pauses cost nothing); and the frames' length in seconds."""
    step = max(1, round(rate / _ANALYSIS_RATE))
    fs = rate / step
    y = samples[::step].astype(np.float32)
    count = len(y) // _FRAME
    voicing = np.zeros(count, dtype=np.float32)
    flatness = np.zeros(count, dtype=np.float32)
    if count == 0:
        return np.zeros(0, dtype=bool), voicing, flatness, _FRAME / fs
    frames = y[: count * _FRAME].reshape(count, _FRAME)
    power = np.einsum("ij,ij->i", frames, frames) / _FRAME
    level = 10 * np.log10(power / _FULL_SCALE**2 + 1e-12)
    loud = level > max(float(level.max()) - _LOUD_BELOW_PEAK_DB, _FLOOR_DB)
    # scipy's FFT keeps float32 (numpy's computes in float64): a seventh of the time.
    spectrum = scipy.fft.rfft(frames[loud], n=_FFT, axis=1)
    psd = spectrum.real**2 + spectrum.imag**2
    # Autocorrelation by Wiener-Khinchin, unbiased (each lag over the samples it has), peak in
    # the pitch range over lag 0.
    ac = scipy.fft.irfft(psd, n=_FFT, axis=1)
    lo, hi = int(fs / _PITCH_HZ[1]), int(fs / _PITCH_HZ[0]) + 1
    lags = np.arange(lo, hi)
    unbiased = ac[:, lo:hi] * (_FRAME / (_FRAME - lags))
    voicing[loud] = unbiased.max(axis=1) / np.maximum(ac[:, 0], 1e-9)
    b0, b1 = int(_FLAT_HZ[0] * _FFT / fs), int(_FLAT_HZ[1] * _FFT / fs)
    band = psd[:, b0:b1] + 1e-9
    flatness[loud] = np.exp(np.mean(np.log(band), axis=1)) / np.mean(band, axis=1)
    return loud, voicing, flatness, _FRAME / fs


def _suspect(
    check: str, measure: float, bound: float, *, above: bool, ratio: float | None = None
) -> Verdict:
    """A suspect verdict; severity is the measure's distance past its bound, relative."""
    if above:
        severity = measure / bound if bound > 0 else 1.0 + measure
    else:
        severity = bound / measure if measure > 0 else 100.0
    return Verdict("suspect", check, round(measure, 4), ratio=ratio, severity=max(1.0, severity))


def check(
    samples: np.ndarray,
    rate: int,
    text: str,
    expected: RateStats,
    settings: QaSettings,
) -> Verdict:
    """Check one answer: mono int16 ``samples`` at ``rate`` Hz for ``text``, spoken by a voice
    whose rate so far is ``expected``. Pure: the same arguments give the same verdict."""
    n = len(samples)
    if n == 0:
        return _suspect("rate_short", 0.0, 1.0, above=False)
    step = max(1, round(rate / _ANALYSIS_RATE))
    sub = samples[::step]
    clipped = float(np.count_nonzero((sub >= 32_700) | (sub <= -32_700))) / len(sub)
    if clipped > settings.max_clipped:
        return _suspect("clipping", clipped, settings.max_clipped, above=True)
    dc = abs(float(sub.mean(dtype=np.float64))) / _FULL_SCALE
    if dc > settings.max_dc:
        return _suspect("dc_offset", dc, settings.max_dc, above=True)

    # Under 46 ms there are no frames: nothing to judge but its length (below).
    loud, voicing, flatness, frame_s = _frame_measures(samples, rate)
    voiced = loud & (voicing > _VOICED)
    if loud.any():
        share = float(np.count_nonzero(voiced)) / float(np.count_nonzero(loud))
        if share < settings.min_voiced:
            return _suspect("babble", share, settings.min_voiced, above=False)
        flat = float(np.median(flatness[loud]))
        if flat > settings.max_flatness:
            return _suspect("noise", flat, settings.max_flatness, above=True)

    # The speech: from the first voiced frame to the last, with the loud frames next to them
    # (consonants and their release: unvoiced but speech) up to `consonant_s` each side.
    start_s, end_s = 0.0, n / rate
    verdict_start, verdict_end = 0, n
    trimmed = False
    if voiced.any():
        idx = np.flatnonzero(voiced)
        first, last = int(idx[0]), int(idx[-1])
        reach = max(1, round(settings.consonant_s / frame_s))
        while first > 0 and loud[first - 1] and idx[0] - first < reach:
            first -= 1
        while last < len(loud) - 1 and loud[last + 1] and last - idx[-1] < reach:
            last += 1
        speech_from, speech_to = first * frame_s, (last + 1) * frame_s
        pad, gap = settings.edge_pad_s, settings.edge_gap_s
        gap_frames = max(1, round(gap / frame_s))
        lead, tail = speech_from, end_s - speech_to
        if lead > settings.max_edge_s:
            before = loud[:first]
            # Clearly apart: quiet for `gap` right before the speech (or quiet throughout).
            if not before[-gap_frames:].any():
                verdict_start = int(max(0.0, speech_from - pad) * rate)
                trimmed = True
            else:
                return _suspect("lead_noise", lead, settings.max_edge_s, above=True)
        if tail > settings.max_edge_s:
            after = loud[last + 1 :]
            if not after[:gap_frames].any():
                verdict_end = min(n, int((speech_to + pad) * rate))
                trimmed = True
            else:
                return _suspect("trail_noise", tail, settings.max_edge_s, above=True)
        start_s, end_s = speech_from, min(end_s, speech_to)

    speech_s = max(0.0, end_s - start_s)
    digits = sum(text.count(d) for d in "0123456789")  # in C: ten scans beat a Python loop
    rough = expected_duration_s(text) + _DIGIT_S * digits
    ratio = speech_s / rough if rough > 0 else None
    if rough > 0:
        predicted = rough * expected.ratio
        if expected.count >= settings.rate_warmup:
            spread = settings.rate_spread * expected.spread
            hi = math.exp(max(math.log(settings.rate_long), spread))
            lo = math.exp(-max(-math.log(settings.rate_short), spread))
            slack_long = slack_short = settings.rate_slack_s
        else:  # the rough rate, with the rough checks' bounds
            (lo, slack_short), (hi, slack_long) = _PRIOR_SHORT, _PRIOR_LONG
        measure = speech_s / predicted
        if speech_s > predicted * hi + slack_long:
            bound = hi + slack_long / predicted
            return _suspect("rate_long", measure, bound, above=True, ratio=ratio)
        if speech_s < predicted * lo - slack_short:
            bound = max(1e-3, lo - slack_short / predicted)
            return _suspect("rate_short", measure, bound, above=False, ratio=ratio)
    return Verdict(
        "trim" if trimmed else "pass",
        start=verdict_start,
        end=verdict_end,
        speech_s=speech_s,
        ratio=ratio,
    )
