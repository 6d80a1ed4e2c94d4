"""report.html of a real run, read in a real browser: Debian's Chromium driven by Playwright.

`make test` installs Chromium (apt) when /usr/bin/chromium is missing; Playwright's own
browser download (`playwright install`) is never used.
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pandas as pd
import pytest
from playwright.sync_api import Browser, Dialog, Page, sync_playwright
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from fishflow.report import item_views, render, report_key
from fishflow.storage import S3Store
from fishflow.testing.emulator import Emulator
from tests.flows.helpers import CATALOG_ROWS, manifest, run

CHROMIUM = "/usr/bin/chromium"
HOSTILE = "<script>alert(1)</script>"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """An output folder served over HTTP on 127.0.0.1, as a person's web server would."""
    out = tmp_path / "out"
    out.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(out))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield out, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium under Playwright. Started after the run: Playwright's sync API keeps
    an event loop running in this thread, and the flow run needs one of its own."""
    assert Path(CHROMIUM).exists(), "no Chromium: run `make test` (it installs Debian's)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Opened:
    """A page with everything that went wrong in it recorded: console errors, uncaught
    exceptions, dialogs (an injected alert()), requests that failed."""

    def __init__(self, browser: Browser, url: str) -> None:
        self.problems: list[str] = []
        self.page: Page = browser.new_page()
        self.page.on(
            "console",
            lambda m: (
                self.problems.append(f"console {m.type}: {m.text}")
                if m.type in ("error", "warning")
                else None
            ),
        )
        self.page.on("pageerror", lambda exc: self.problems.append(f"exception: {exc}"))

        def on_dialog(dialog: Dialog) -> None:
            self.problems.append(f"dialog: {dialog.message}")
            dialog.dismiss()

        self.page.on("dialog", on_dialog)
        self.page.on("requestfailed", lambda r: self.problems.append(f"request failed: {r.url}"))
        self.page.goto(url)

    def visible_rows(self) -> list[dict[str, str]]:
        return self.page.eval_on_selector_all(
            "tr.item",
            "rows => rows.filter(r => r.offsetParent !== null).map(r => "
            "({status: r.dataset.status, id: r.dataset.id, qa: r.dataset.qa || '',"
            " text: r.innerText}))",
        )

    def until(self, selector: str, check: str, timeout_s: float = 15.0) -> None:
        """Wait until ``check`` (a JS function of the element) holds. Polled from here: the
        page's Content-Security-Policy forbids the eval that ``wait_for_function`` uses."""
        deadline = time.monotonic() + timeout_s
        while not self.page.eval_on_selector(selector, check):
            assert time.monotonic() < deadline, f"{selector}: {check} still false"
            self.page.wait_for_timeout(50)

    def play(self, item_id: str, seconds: float = 0.3) -> dict[str, float]:
        """Press the row's play button; return the audio's state once it has played a while."""
        row = f'tr.item[data-id="{item_id}"]'
        self.page.click(f"{row} button.play")
        self.until(f"{row} audio", f"a => a.currentTime > {seconds}")
        return self.page.eval_on_selector(
            f"{row} audio",
            "a => ({t: a.currentTime, d: a.duration, ready: a.readyState, paused: a.paused})",
        )


async def _artifacts(flow_run_id: str) -> dict[str | None, Any]:
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(flow_run_id)])
            )
        )
    return {a.key: a.data for a in found}


@pytest.fixture
def s3_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's S3 as a server on 127.0.0.1 (a browser can reach it), with a bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEFAKEFAKE0003")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret-never-logged-0003")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    boto3.client("s3").create_bucket(Bucket="review-bucket")
    try:
        yield "review-bucket"
    finally:
        server.stop()


def test_a_run_report_plays_shows_captions_in_time_and_filters_what_needs_review(
    tmp_path: Path, emulator: Emulator, served: tuple[Path, str], s3_server: str
) -> None:
    out, base = served
    rows = [*CATALOG_ROWS, {"id": HOSTILE, "language": "en", "text": "A hostile id. Two."}]
    source = tmp_path / "catalog.csv"
    pd.DataFrame(rows).to_csv(source, index=False)
    summary = run(source, out, [emulator.url])
    run_id = summary.run_id
    page_path = out / "manifests" / f"run={run_id}" / "report.html"
    assert summary.report == str(page_path) and page_path.exists()

    # The summary artifact in Prefect links the page.
    record = json.loads((page_path.parent / "run.json").read_text())
    summary_md = str(asyncio.run(_artifacts(record["flow_run_id"]))["fishflow-run"])
    assert f"({page_path.as_uri()})" in summary_md

    items = manifest(out, "items", run_id)
    failed = set(items[items.status == "failed"]["source_row"])
    marked = (
        set(items[items.qa == "marked"]["source_row"]) if "qa" in items.columns else set()
    )  # the QA step's column, when the run has it
    assert len(failed) == 3

    # The same catalog into S3: the page is opened by its presigned link, the audio too.
    s3_run = run(source, f"s3://{s3_server}/tts", [emulator.url])
    assert s3_run.run_id is not None
    s3_store = S3Store(f"s3://{s3_server}/tts")
    assert s3_run.report == s3_store.uri(report_key(s3_run.run_id))
    s3_page = s3_store.link(report_key(s3_run.run_id))
    assert "X-Amz-Signature=" in s3_page

    with chromium() as browser:
        web = Opened(browser, f"{base}/manifests/run={run_id}/report.html")
        everything = web.visible_rows()
        assert len(everything) == len(items)
        # The hostile id is text on the page; no alert() ran (a dialog would be a problem).
        assert any(r["text"].startswith(HOSTILE) for r in everything)

        # The long item plays over HTTP, its duration as the manifest says, its captions in time.
        duration = items.set_index("item_id").loc["en-long", "duration_s"]
        state = web.play("en-long")
        assert state["d"] == pytest.approx(duration, abs=0.05)
        assert state["ready"] >= 2 and not state["paused"]
        long_row = 'tr.item[data-id="en-long"]'
        assert web.page.inner_text(f"{long_row} .cue") == (
            "Sentence number 0 of the long lesson explains one more idea in detail."
        )  # the cue of the moment, from the item's .vtt
        web.page.screenshot(path=str(tmp_path / "report-all.png"), full_page=True)

        web.page.click('nav button[data-filter="failed"]')
        shown = web.visible_rows()
        assert {r["status"] for r in shown} == {"failed"} and len(shown) == len(failed)
        errors = manifest(out, "errors", run_id)
        for row in shown:  # each with its reason from the errors manifest
            assert any(m in row["text"] for m in errors["error_message"])
        web.page.screenshot(path=str(tmp_path / "report-failed.png"), full_page=True)

        web.page.click('nav button[data-filter="marked"]')
        assert len(web.visible_rows()) == len(marked)
        assert web.page.is_visible("#none") == (not marked)
        web.page.click('nav button[data-filter="review"]')
        assert len(web.visible_rows()) == len(failed | marked)

        # Opened from the disk (the link the CLI and the artifact give): plays as well, and a
        # sentence picked in the captions is where the player goes, its cue shown. (Seeking
        # needs Range requests, which Python's http.server does not answer; S3 does.)
        local = Opened(browser, page_path.as_uri())
        local.play("en-long")
        local.page.click(f"{long_row} .transcript summary")
        local.page.click(f"{long_row} .transcript span >> nth=5")
        local.until(f"{long_row} .cue", "e => e.textContent.startsWith('Sentence number 5 ')")
        assert local.page.eval_on_selector(f"{long_row} audio", "a => a.currentTime") > 5 * 4
        now = local.page.inner_text(f"{long_row} .transcript .now")
        assert now.startswith("Sentence number 5 ")
        local.page.screenshot(path=str(tmp_path / "report-file.png"))

        # At scale: rows past the first wait in groups; filters still find every match.
        big = scaled_page(browser, tmp_path)
        assert len(big.visible_rows()) == 2 and big.page.inner_text("#more span") == "9"
        big.page.click('nav button[data-filter="failed"]')
        assert [r["id"] for r in big.visible_rows()] == ["item-01", "item-07"]
        big.page.click('nav button[data-filter="all"]')
        big.page.fill("#q", "ITEM-1")
        big.until("#q", "q => document.querySelectorAll('tr.item:not(.nomatch)').length === 1")
        assert [r["id"] for r in big.visible_rows()] == ["item-10"]
        big.page.fill("#q", "")
        big.until("#q", "q => document.querySelectorAll('tr.item.nomatch').length === 0")
        big.page.click('nav button[data-filter="marked"]')
        assert [(r["id"], r["qa"]) for r in big.visible_rows()] == [("item-09", "marked")]
        assert "speech_rate = 2.4" in big.visible_rows()[0]["text"]
        big.page.click('nav button[data-filter="review"]')
        assert [r["id"] for r in big.visible_rows()] == ["item-01", "item-07", "item-09"]
        big.page.click('nav button[data-filter="all"]')
        # Rows a filter took out of their groups rejoin them in order.
        while big.page.is_visible("#more"):
            big.page.click("#more button")
        assert [r["id"] for r in big.visible_rows()] == [f"item-{i:02d}" for i in range(11)]

        from_s3 = Opened(browser, s3_page)
        assert len(from_s3.visible_rows()) == len(items)
        state = from_s3.play("de-1", seconds=0.2)
        assert state["d"] == pytest.approx(
            items.set_index("item_id").loc["de-1", "duration_s"], abs=0.05
        )
        assert web.problems == [] and local.problems == [] and big.problems == []
        assert from_s3.problems == []


def scaled_page(browser: Browser, tmp_path: Path) -> Opened:
    """A page of 11 items laid out 2 at first, then in groups of 3 (a big run's page, small)."""
    rows: list[dict[str, Any]] = []
    for i in range(11):
        failed = i in (1, 7)
        rows.append({
            "item_id": f"item-{i:02d}", "source_row": i, "status": "failed" if failed else "ok",
            "duration_s": None if failed else 1.0, "error": "boom" if failed else None,
            "qa": "marked" if i == 9 else None, "qa_check": "speech_rate" if i == 9 else None,
            "qa_measure": 2.4 if i == 9 else None, "qa_attempts": 3 if i == 9 else None,
        })  # fmt: skip
    text = render(
        "scaled", item_views(rows), generated_at=datetime.now(UTC), first_rows=2, group_rows=3
    )
    path = tmp_path / "scaled.html"
    path.write_text(text)
    return Opened(browser, path.as_uri())
