from __future__ import annotations

import asyncio
import glob
import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import soundfile as sf

from fishflow.flows.refresh_catalog_audio import refresh_catalog_audio
from fishflow.record import RunSummary
from fishflow.settings import RunSettings
from fishflow.tasks.prefect_run import run_result

CATALOG_ROWS = [
    {"id": "en-1", "language": "en", "text": "A stoneware mug. Dishwasher safe, 350 ml."},
    {
        "id": "en-long",
        "language": "en",
        "text": " ".join(
            f"Sentence number {i} of the long lesson explains one more idea in detail."
            for i in range(12)
        ),
    },
    {"id": "zh-1", "language": "zh", "text": "这款绿茶产自杭州。“香气清高！”每罐250克。"},
    {
        "id": "ja-1",
        "language": "ja",
        "text": "この包丁は職人が仕上げています。「よく切れる」と評判です。",
    },
    {
        "id": "de-1",
        "language": "de",
        "text": "Ein Stuhl aus Eiche, z. B. für das Esszimmer. Er kostet 249,90 Euro.",
    },
    {"id": "blank", "language": "en", "text": "   "},
    {"id": "en-1", "language": "en", "text": "Duplicate id."},
    {"id": "", "language": "en", "text": "No id at all."},
]


def run(source: str | Path, out: str | Path, servers: list[str], **kwargs: Any) -> RunSummary:
    settings = kwargs.pop("settings", None) or RunSettings(**kwargs.pop("settings_kw", {}))

    async def call() -> RunSummary:
        state = await refresh_catalog_audio(
            source=str(source),
            out=str(out),
            servers=servers,
            settings=settings,
            return_state=True,
            **kwargs,
        )
        return await run_result(state)

    return asyncio.run(call())


def spoken(text: str, language: str = "en") -> str:
    """What the server is sent for plain ``text`` (numbers said in words), as a run makes it."""
    from fishflow.spoken import SpeechOptions, speak_blocks
    from fishflow.text import blocks_text, plain_blocks

    return blocks_text(speak_blocks(plain_blocks(text), language, SpeechOptions()))


def manifest(out: str | Path, name: str, run_id: str | None) -> pd.DataFrame:
    """A run's manifest; ``run_id`` is a summary's, None only when a run had nothing to do."""
    assert run_id is not None, "the run wrote no manifests"
    return pd.read_parquet(f"{out}/manifests/run={run_id}/{name}.parquet")


def as_text(cell: object) -> str:
    """A manifest cell that holds text (pandas-stubs type any cell as any scalar)."""
    assert isinstance(cell, str), repr(cell)
    return cell


def latest_run(out: str | Path) -> str:
    """The run whose manifests were written last."""
    newest = max(
        glob.glob(f"{out}/manifests/run=*/items.parquet"), key=lambda p: Path(p).stat().st_mtime_ns
    )
    return newest.rsplit("run=", 1)[1].split("/", 1)[0]


def decode(data: bytes) -> tuple[int, float, int]:
    """(sample rate, duration in seconds, channels) of an audio file's bytes."""
    info = sf.info(io.BytesIO(data))
    return info.samplerate, info.frames / info.samplerate, info.channels


@contextmanager
def flow_run_messages() -> Iterator[list[str]]:
    """What flow runs log while the block runs: their own logger, which Prefect sends to its
    API, whatever earlier CLI calls in the session did to the console's handlers."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect()
    run_logger = logging.getLogger("prefect.flow_runs")
    run_logger.addHandler(handler)
    try:
        yield messages
    finally:
        run_logger.removeHandler(handler)
