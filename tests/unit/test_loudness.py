from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
from scipy.signal import butter, resample_poly, sosfiltfilt

from fishflow.audio import Audio
from fishflow.chunking import Chunk
from fishflow.loudness import integrated_loudness, measure
from fishflow.publish import ItemPublisher
from fishflow.settings import AudioSettings, CaptionSettings
from fishflow.storage import LocalStore
from fishflow.testing.emulator import synth_samples

RATE = 44_100


def _signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    envelope = np.repeat(rng.uniform(0, 1, 90) ** 3, RATE // 10)  # speech-like bursts and gaps
    return {
        "noise": (rng.standard_normal(RATE * 7) * 2000).astype(np.int16),
        "emulator voice": synth_samples("A sentence the emulator speaks.", 5.3, None),
        "bursts": (rng.standard_normal(len(envelope)) * envelope * 8000).astype(np.int16),
    }


def _below_8_khz(samples: np.ndarray) -> np.ndarray:
    """Where speech has its energy: white noise cut above 8 kHz."""
    return sosfiltfilt(butter(8, 8000, fs=RATE, output="sos"), samples).astype(np.int16)


@pytest.mark.parametrize(
    ("name", "tolerance_lu"),
    [
        # pyloudnorm's own filter design reads ~0.05 LU below the BS.1770 one used here, and
        # filtering every second sample adds up to ~0.06 on speech-band audio; white noise is
        # the worst case, as loud at 20 kHz as at 1 kHz (see fishflow.loudness).
        ("emulator voice", 0.15),
        ("noise below 8 kHz", 0.15),
        ("bursts below 8 kHz", 0.15),
        ("noise", 0.25),
        ("bursts", 0.25),
    ],
)
def test_chunk_loudness_matches_pyloudnorm(name: str, tolerance_lu: float) -> None:
    signals = _signals()
    signals |= {f"{k} below 8 kHz": _below_8_khz(signals[k]) for k in ("noise", "bursts")}
    samples = signals[name]
    reference = pyloudnorm.Meter(RATE).integrated_loudness(samples / 32768.0)
    assert abs(integrated_loudness(measure(samples, RATE).segments) - reference) < tolerance_lu


def _chunk(i: int, text: str = "Words of one chunk.") -> Chunk:
    return Chunk(i, text, 0, len(text), boundary="sentence")


def _publish(tmp_path: Path, parts: list[np.ndarray], fmt: str = "wav", **audio: object):
    settings = AudioSettings(format=fmt, **audio)  # type: ignore[arg-type]
    publisher = ItemPublisher(
        store=LocalStore(str(tmp_path)),
        key=f"audio/item.{fmt}",
        audio=settings,
        captions=CaptionSettings(captions="off", chapters="off"),
        language="en",
        chunk_count=len(parts),
        sample_rate=RATE,
    )
    published = None
    for i, samples in enumerate(parts):
        _, published = publisher.add(_chunk(i), Audio(samples, RATE))
    assert published is not None
    data, _ = sf.read(tmp_path / f"audio/item.{fmt}", dtype="float64")
    return published, data


def _at_peak(samples: np.ndarray, peak_db: float) -> np.ndarray:
    scaled = samples / np.abs(samples).max() * 32767 * 10 ** (peak_db / 20)
    return scaled.astype(np.int16)


def test_quiet_normal_and_loud_chunks_are_evened_and_the_item_lands_on_target(
    tmp_path: Path,
) -> None:
    voice = _signals()["emulator voice"]
    parts = [_at_peak(voice, level) for level in (-30, -10, -20, -3)]
    published, data = _publish(tmp_path, parts)
    meter = pyloudnorm.Meter(RATE)
    item = meter.integrated_loudness(data)
    assert abs(item - -16) <= 1.0
    # The manifest's value, from per-chunk bookkeeping, agrees with a meter on the file.
    assert published.loudness_lufs is not None and abs(published.loudness_lufs - item) < 0.5
    # Chunk by chunk (sentence pauses between them), every chunk is within 1 LU of the others.
    step = len(voice) + int(RATE * AudioSettings().pause_sentence_ms / 1000)
    levels = [meter.integrated_loudness(data[i * step : i * step + len(voice)]) for i in range(4)]
    assert max(levels) - min(levels) < 1.0


def test_loud_peaky_audio_is_held_under_the_true_peak_ceiling(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    quiet = rng.standard_normal(RATE * 4) * 300
    quiet[::4410] = 30000  # sparse clicks: far louder peaks than loudness
    published, data = _publish(tmp_path, [quiet.astype(np.int16)])
    oversampled = resample_poly(data, 4, 1)
    true_peak_db = 20 * math.log10(np.abs(oversampled).max())
    assert true_peak_db <= -1.0
    assert published.loudness_lufs is not None and abs(published.loudness_lufs + 16) <= 1.0


def test_loudness_off_leaves_levels_alone_and_records_no_value(tmp_path: Path) -> None:
    voice = _at_peak(_signals()["emulator voice"], -30)
    published, data = _publish(tmp_path, [voice], loudness="off")
    assert published.loudness_lufs is None
    assert np.array_equal((data * 32768).astype(np.int16), voice)


@pytest.mark.parametrize("fmt", ["flac", "mp3"])
def test_other_formats_are_normalised_alike(tmp_path: Path, fmt: str) -> None:
    voice = _at_peak(_signals()["emulator voice"], -25)
    published, data = _publish(tmp_path, [voice, voice], fmt=fmt)
    assert abs(pyloudnorm.Meter(RATE).integrated_loudness(data) + 16) <= 1.0
    assert published.bytes == len((tmp_path / f"audio/item.{fmt}").read_bytes())
    assert sf.info(io.BytesIO((tmp_path / f"audio/item.{fmt}").read_bytes())).samplerate == RATE


def test_below_32_khz_every_sample_is_filtered() -> None:
    """At 16 or 24 kHz speech reaches a quarter of the rate (fricatives at 5-7 kHz): nothing is
    left out there. (pyloudnorm's own filter design strays further from BS.1770's at these
    rates: ~0.12 LU.)"""
    rng = np.random.default_rng(5)
    for rate in (16_000, 24_000):
        noise = rng.standard_normal(rate * 5) * 2000
        band = sosfiltfilt(butter(8, [5000, 7000], btype="band", fs=rate, output="sos"), noise)
        for signal in (noise, band):
            samples = signal.astype(np.int16)
            reference = pyloudnorm.Meter(rate).integrated_loudness(samples / 32768.0)
            measured = integrated_loudness(measure(samples, rate).segments)
            assert abs(measured - reference) < 0.25, rate
