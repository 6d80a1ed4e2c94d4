"""report.html as a plain function of manifest rows, and written from a store (folder, S3)."""

from __future__ import annotations

import io
import logging
import os
import urllib.parse
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from fishflow.captions import Cue as CaptionCue
from fishflow.captions import webvtt
from fishflow.errors import StorageError
from fishflow.manifest import CHUNKS_SCHEMA, ERRORS_SCHEMA, ITEMS_SCHEMA
from fishflow.report import (
    STRIP_POINTS,
    Media,
    audio_levels,
    item_views,
    parse_webvtt,
    render,
    report_key,
    write_report,
)
from fishflow.storage import LocalStore, S3Store

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
HOSTILE = "<script>alert(1)</script>"
RATE = 44_100


def item(row: int, item_id: str | None, status: str = "ok", **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "run_id": "r1",
        "item_id": item_id,
        "source_row": row,
        "status": status,
        "created_at": T0,
        "language": "en",
        "chars": 40,
        "duration_s": 2.0 if status == "ok" else None,
        "loudness_lufs": -16.2 if status == "ok" else None,
        "audio_format": "wav" if status == "ok" else None,
        "audio_uri": f"/o/audio/{item_id}.wav" if status == "ok" else None,
    }
    return {**base, **kw}


def chunk(row: int, item_id: str, index: int, **kw: Any) -> dict[str, Any]:
    return {"run_id": "r1", "item_id": item_id, "source_row": row, "chunk_index": index,
            "start_char": 0, "end_char": 10, "utf8_bytes": 10, "chunk_key": f"k{row}-{index}",
            "server": "s", "attempts": 1, "latency_s": 0.1, "duration_s": 1.0, "reused": False,
            "status": "ok", **kw}  # fmt: skip


def error(row: int, item_id: str | None, message: str, **kw: Any) -> dict[str, Any]:
    return {"run_id": "r1", "item_id": item_id, "source_row": row, "chunk_index": None,
            "stage": "source", "error_type": "InputError", "error_message": message,
            "http_status": None, "retryable": False, "attempts": 1, "created_at": T0,
            **kw}  # fmt: skip


class Page(HTMLParser):
    """What a browser would build: elements with their attributes, and each row's text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.rows: list[dict[str, Any]] = []
        self._in_row = False
        self._scripts = 0
        self.script_text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "tr" and "item" in (dict(attrs).get("class") or ""):
            self.rows.append({"attrs": dict(attrs), "text": ""})
            self._in_row = True
        if tag == "script":
            self._scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._in_row = False

    def handle_data(self, data: str) -> None:
        if self._in_row:
            self.rows[-1]["text"] += data
        if self.lasttag == "script":
            self.script_text.append(data)


def audio_link(page: Page) -> str:
    """The address the row's player and download link use."""
    return next(a["href"] or "" for t, a in page.tags if t == "a" and a.get("class") == "file")


def test_a_hostile_id_message_and_caption_stay_text() -> None:
    views = item_views(
        [
            item(0, HOSTILE, audio_uri="/o/audio/x.wav"),
            item(1, '"><img src=x onerror=alert(2)>', status="failed", error="bad"),
        ],
        [chunk(0, HOSTILE, 0, qa_check="<b>rate</b>", qa_measure=2.5)],
        [error(1, '"><img src=x onerror=alert(2)>', "</script><script>alert(3)</script>")],
    )
    media = [
        Media(
            audio_href='../../audio/x.wav" onplay="alert(4)',
            cues=tuple(
                parse_webvtt(b"WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n&lt;/script&gt;&lt;!--\n")
            ),
        ),
        Media(),
    ]
    text = render(HOSTILE, views, media, generated_at=T0, source=HOSTILE)
    page = Page(text)

    scripts = [attrs for tag, attrs in page.tags if tag == "script"]
    assert len(scripts) == 2  # the cue data and the page's own script, nothing injected
    assert not [tag for tag, _ in page.tags if tag == "img"]
    assert not [(t, a) for t, a in page.tags for name in a if name.startswith("on")]
    assert page.rows[0]["text"].startswith(HOSTILE)  # shown as the text it is
    assert page.rows[0]["attrs"]["data-id"] == HOSTILE
    assert "</script><script>alert(3)</script>" in page.rows[1]["text"]
    assert audio_link(page) == '../../audio/x.wav" onplay="alert(4)'
    assert "<title>fishflow run &lt;script&gt;" in text
    # The caption reached the script data as JSON that cannot close the element.
    assert "\\u003c/script\\u003e\\u003c!--" in text


def test_marked_and_failed_rows_carry_their_reasons_and_filters_count_them() -> None:
    views = item_views(
        [
            item(0, "good", qa="pass", qa_check=None, qa_measure=None, qa_attempts=1),
            item(1, "repeats", qa="marked", qa_check="speech_rate", qa_measure=2.31, qa_attempts=3),
            item(2, "too-long", status="failed", error="synthesis failed"),
            item(3, None, status="failed", error="no id"),
            item(-1, "gone", status="removed", duration_s=1.0),
        ],
        [
            chunk(0, "good", 0),
            chunk(1, "repeats", 0),
            chunk(1, "repeats", 1, qa_check="speech_rate", qa_measure=2.31, qa_attempts=3),
        ],
        [
            error(
                2,
                "too-long",
                "server said 500 three times",
                stage="synthesis",
                error_type="ServerError",
                http_status=500,
                retryable=True,
                chunk_index=4,
            ),
            error(3, None, "the row has no id"),
        ],
    )
    page = Page(render("r1", views, generated_at=T0))
    rows = {r["attrs"].get("data-id"): r for r in page.rows}

    assert [r["attrs"]["data-status"] for r in page.rows] == [
        "ok", "ok", "failed", "failed", "removed"
    ]  # fmt: skip
    assert [r["attrs"].get("data-id") for r in page.rows if r["attrs"].get("data-qa")] == [
        "repeats"
    ]
    marked = rows["repeats"]["text"]
    assert "marked" in marked and "speech_rate = 2.31" in marked and "3 attempts" in marked
    failed = rows["too-long"]["text"]
    assert "synthesis · chunk 4 · HTTP 500" in failed
    assert "server said 500 three times" in failed and "a retry may help" in failed
    assert "(no id, row 3)" in rows[""]["text"] and "the row has no id" in rows[""]["text"]
    # The flagged chunk is drawn in the strip, its check named in the tooltip.
    assert "chunk 1: speech_rate = 2.31, 3 attempts" in marked
    filters = {a["data-filter"]: a for t, a in page.tags if t == "button" and "data-filter" in a}
    assert set(filters) == {"all", "review", "marked", "failed"}
    nav = render("r1", views, generated_at=T0)
    assert "Marked (1)</button>" in nav and "Failed (2)</button>" in nav
    assert "Needs review (3)</button>" in nav


def test_manifests_without_qa_columns_give_a_page_without_marks() -> None:
    views = item_views([item(0, "a"), item(1, "b")])
    text = render("r1", views, generated_at=T0)
    page = Page(text)
    assert not [r for r in page.rows if r["attrs"].get("data-qa")]
    assert all("not checked" in r["text"] for r in page.rows)
    assert "Marked (0)</button>" in text


def test_webvtt_cues_read_back_as_fishflow_writes_them() -> None:
    data = webvtt([
        CaptionCue(0.0, 1.25, ("Fish & chips <3",)),
        CaptionCue(1.25, 3723.5, ("Two lines", "of text.")),
    ])  # fmt: skip
    cues = parse_webvtt(data)
    assert [(c.start_s, c.end_s, c.text) for c in cues] == [
        (0.0, 1.25, "Fish & chips <3"),
        (1.25, 3723.5, "Two lines of text."),
    ]


def wav(seconds_loud: float, seconds_quiet: float) -> bytes:
    t = np.arange(int(seconds_loud * RATE)) / RATE
    loud = 0.5 * np.sin(2 * np.pi * 220 * t)
    samples = np.concatenate([loud, np.zeros(int(seconds_quiet * RATE))]).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, samples, RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_levels_follow_the_audio() -> None:
    levels = audio_levels(wav(1.0, 1.0))
    assert len(levels) == STRIP_POINTS
    half = STRIP_POINTS // 2
    # A sine of amplitude 0.5 has an RMS of 0.354: -9 dBFS; silence is at the floor.
    assert all(abs(x + 9.0) < 0.3 for x in levels[: half - 1])
    assert all(x <= -100 for x in levels[half + 1 :])


Rows = list[dict[str, Any]]


def write_run(store: LocalStore | S3Store, items: Rows, chunks: Rows, errors: Rows) -> None:
    """Final manifests as a run leaves them, with the QA columns another step may add."""
    for name, rows, schema in (
        ("items", items, ITEMS_SCHEMA),
        ("chunks", chunks, CHUNKS_SCHEMA),
        ("errors", errors, ERRORS_SCHEMA),
    ):
        extra = sorted({k for r in rows for k in r} - set(schema.names))
        for key in extra:  # qa (string), qa_check, qa_measure, qa_attempts
            kind = {"qa_measure": pa.float64(), "qa_attempts": pa.int32()}.get(key, pa.string())
            schema = schema.append(pa.field(key, kind))
        table = pa.Table.from_pylist([{**dict.fromkeys(schema.names), **r} for r in rows],
                                     schema=schema)  # fmt: skip
        buf = io.BytesIO()
        pq.write_table(table, buf)
        store.put(f"manifests/run=r1/{name}.parquet", buf.getvalue(), "x", {})


def publish_item(store: LocalStore | S3Store, name: str) -> tuple[str, str]:
    audio = store.put(f"audio/{name}.wav", wav(1.0, 1.0), "audio/wav", {})
    vtt = webvtt([CaptionCue(0.0, 1.0, ("Hello there.",)), CaptionCue(1.0, 2.0, ("Bye.",))])
    captions = store.put(f"audio/{name}.vtt", vtt, "text/vtt", {})
    return audio, captions


def test_a_folder_output_gets_a_page_whose_links_reach_the_audio(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "out"))
    audio, captions = publish_item(store, "les son/ü 1")
    write_run(
        store,
        [
            item(0, "lesson 1", audio_uri=audio, captions_uri=captions, qa="marked",
                 qa_check="noise", qa_measure=0.61, qa_attempts=3),
            item(1, "broken", status="failed", error="x"),
        ],
        [chunk(0, "lesson 1", 0, qa_check="noise", qa_measure=0.61, qa_attempts=3)],
        [error(1, "broken", "the text is empty")],
    )  # fmt: skip
    uri = write_report(store, "r1", now=T0)

    assert uri == store.uri(report_key("r1")) == str(tmp_path / "out/manifests/run=r1/report.html")
    text = Path(uri).read_text()
    page = Page(text)
    src = audio_link(page)
    assert not src.startswith(("/", "file:"))  # relative: the folder may move
    assert Path(os.path.dirname(uri), urllib.parse.unquote(src)).resolve() == Path(audio)
    assert '"0":[[0.0,1.0,"Hello there."],[1.0,2.0,"Bye."]]' in text
    assert 'class="lvl"' in text and 'class="flag"' in text  # level strip read from the audio
    assert [r["attrs"]["data-status"] for r in page.rows] == ["ok", "failed"]
    assert "the text is empty" in page.rows[1]["text"]


def test_an_s3_output_gets_a_page_with_presigned_links(bucket: str) -> None:
    store = S3Store(f"s3://{bucket}/catalog")
    audio, captions = publish_item(store, "a")
    write_run(store, [item(0, "a", audio_uri=audio, captions_uri=captions)], [chunk(0, "a", 0)], [])
    uri = write_report(store, "r1", now=T0)

    assert uri == f"s3://{bucket}/catalog/manifests/run=r1/report.html"
    head = store.client.head_object(Bucket=bucket, Key="catalog/manifests/run=r1/report.html")
    assert head["ContentType"] == "text/html; charset=utf-8"
    page = Page(store.get(report_key("r1")).decode())
    parts = urllib.parse.urlsplit(audio_link(page))
    assert parts.scheme == "https" and parts.path.endswith("catalog/audio/a.wav")
    assert "X-Amz-Signature=" in parts.query and "X-Amz-Expires=604800" in parts.query
    assert "Hello there." in "".join(page.script_text)


def test_the_prefect_summary_links_the_page() -> None:
    from fishflow.record import RunSummary
    from fishflow.tasks.reporting import summary_markdown

    link = "https://audio-bucket.s3.amazonaws.com/m/report.html?X-Amz-Signature=abc"
    text = summary_markdown(
        RunSummary(run_id="r1", ok=1, report="s3://b/m/report.html", report_link=link)
    )
    assert f"({link})" in text
    assert "report.html" not in summary_markdown(RunSummary(run_id="r1"))


def test_the_prefect_summary_never_carries_a_presigned_link(bucket: str) -> None:
    """A presigned link holds the signer's access key id (and a session token with temporary
    credentials): the artifact links the S3 console instead."""
    import logging

    from fishflow.run import write_report as write_for_run

    store = S3Store(f"s3://{bucket}/catalog")
    write_run(store, [item(0, "a")], [], [])
    uri, address = write_for_run(store, "r1", logging.getLogger("t"))
    assert uri == f"s3://{bucket}/catalog/manifests/run=r1/report.html"
    assert address is not None and address.startswith("https://s3.console.aws.amazon.com/")
    assert "X-Amz" not in address


def test_a_page_that_cannot_be_written_does_not_fail_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from fishflow.run import write_report as write_for_run

    class Full(LocalStore):  # the disk filled up after the manifests were written
        def put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> str:
            if key.endswith(".html"):
                raise StorageError(f"cannot write {key}: No space left on device", fatal=True)
            return super().put(key, data, content_type, metadata)

    store = Full(str(tmp_path))
    write_run(store, [item(0, "a")], [], [])
    logger = logging.getLogger("test.report")
    assert write_for_run(store, "r1", logger) == (None, None)
    assert "report.html not written" in caplog.text and "No space left" in caplog.text
    # And where it can be written, the run gets its URI and a link a browser opens.
    uri, link = write_for_run(LocalStore(str(tmp_path)), "r1", logger)
    assert uri is not None and link == Path(uri).as_uri()
