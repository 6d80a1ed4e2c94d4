"""How much of a real recording the chunk cache keeps: ``python -m bench.cache_ratio FILE ...``

The emulator's voice is a tone, which FLAC squeezes far better than speech, so the cache's
size goal (<= 0.5x the audio) is checked here on recordings you supply. Each file is taken as
Fish Speech would send it (mono, resampled to 44.1 kHz, 16-bit) and encoded by the cache's
own ``encode_chunk``; printed: its length, the FLAC bytes over the 16-bit samples, and the
encoder's CPU per audio second.
"""

from __future__ import annotations

import sys
import time
from math import gcd

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from fishflow.audio import Audio
from fishflow.chunk_cache import encode_chunk
from fishflow.fish_speech import SAMPLE_RATE


def as_fish_sends(path: str) -> Audio:
    samples, rate = sf.read(path, dtype="float64", always_2d=True)
    mono = samples.mean(axis=1)
    if rate != SAMPLE_RATE:
        g = gcd(rate, SAMPLE_RATE)
        mono = resample_poly(mono, SAMPLE_RATE // g, rate // g)
    return Audio((np.clip(mono, -1, 32767 / 32768) * 32768).astype(np.int16), SAMPLE_RATE)


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    print("| recording | audio s | cache / 16-bit audio | encode ms per audio s |")
    print("|---|---|---|---|")
    for path in paths:
        audio = as_fish_sends(path)
        started = time.process_time()
        data = encode_chunk(audio)
        cpu = time.process_time() - started
        ratio = len(data) / audio.samples.nbytes
        print(
            f"| {path} | {audio.duration_s:.1f} | {ratio:.3f} "
            f"| {cpu * 1000 / audio.duration_s:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
