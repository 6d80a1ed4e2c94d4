"""What the defaults cost per item: ``python -m bench.publish_cost``.

One-chunk items of ``BENCH_PUBLISH_SECONDS`` (2.6) seconds of the emulator's voice, published
one at a time in this thread by ``ItemPublisher`` alone (no server, no Prefect) to a local
folder, ``BENCH_PUBLISH_ITEMS`` (400) per setting: with the defaults (loudness, captions and
chapters on), without loudness, without captions and chapters, and without either. Printed:
client CPU per item.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from fishflow.audio import Audio
from fishflow.chunking import Chunk
from fishflow.fish_speech import SAMPLE_RATE
from fishflow.publish import ItemPublisher
from fishflow.settings import AudioSettings, CaptionSettings
from fishflow.storage import LocalStore
from fishflow.testing.emulator import synth_samples

SECONDS = float(os.environ.get("BENCH_PUBLISH_SECONDS", "2.6"))
ITEMS = int(os.environ.get("BENCH_PUBLISH_ITEMS", "400"))
TEXT = "A short product description, read once."


def cpu_ms_per_item(folder: str, *, loudness: str, captions: str) -> float:
    store = LocalStore(folder)
    audio = Audio(synth_samples(TEXT, SECONDS, None), SAMPLE_RATE)
    chunk = Chunk(0, TEXT, 0, len(TEXT), boundary="sentence")
    started = time.process_time()
    for i in range(ITEMS):
        publisher = ItemPublisher(
            store=store,
            key=f"audio/item-{i}.wav",
            audio=AudioSettings(loudness=loudness),  # type: ignore[arg-type]
            captions=CaptionSettings(captions=captions, chapters=captions),  # type: ignore[arg-type]
            language="en",
            chunk_count=1,
            sample_rate=SAMPLE_RATE,
        )
        publisher.add(chunk, audio)
    return (time.process_time() - started) * 1000 / ITEMS


def main() -> int:
    print(f"| {SECONDS} s one-chunk items, wav | client CPU ms per item |")
    print("|---|---|")
    for name, loudness, captions in (
        ("defaults (loudness, captions, chapters)", "on", "on"),
        ("--loudness off", "off", "on"),
        ("--captions off --chapters off", "on", "off"),
        ("all three off", "off", "off"),
    ):
        with tempfile.TemporaryDirectory(prefix="fishflow-publish-") as folder:
            cpu_ms_per_item(folder, loudness=loudness, captions=captions)  # warm-up
        with tempfile.TemporaryDirectory(prefix="fishflow-publish-") as folder:
            print(
                f"| {name} | {cpu_ms_per_item(folder, loudness=loudness, captions=captions):.2f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
