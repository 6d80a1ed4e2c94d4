"""report.html: one page on which a person reviews a run, written beside its manifests.

The page is one self-contained file (inline CSS and script, no network, a Content-Security-
Policy that forbids any): a row per item with a play button (the published audio, by a path
relative to the page in a folder, by a presigned URL in S3), its captions shown in time,
duration, loudness, the QA verdict with its check, measure and attempts, the failures with
their stage and reason, and a strip drawing the item's level over time with its chunks marked.
Buttons filter to what needs a look (marked, failed). Thousands of rows stay usable: a row is
a few hundred bytes of markup, an audio element is made only when its row is played, rows past
the first 200 wait in inert ``<template>`` groups until asked for or matched by a filter (10,000
rows: 1.7 s to open here, against 10 s laid out at once), and the browser skips laying out
rows off screen (``content-visibility``).

Ids, texts and error messages are untrusted: they reach the page only through ``html.escape``
(markup and attributes) or JSON escaped for a script element (``_script_json``).

``render`` is pure (manifest rows in, HTML out); ``write_report`` reads a finished run's
manifests, captions and (within a budget) audio from its store and writes the page.
"""

from __future__ import annotations

import contextlib
import html
import io
import json
import logging
import math
import re
import secrets
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from fishflow.manifest import run_prefix
from fishflow.record import read_run_record
from fishflow.storage import Store, read_parquet

logger = logging.getLogger("fishflow.report")

REPORT_NAME = "report.html"
# The level strip: this many bars per item, whatever its length (a row's markup stays small).
STRIP_POINTS = 96
STRIP_FLOOR_DB = -50.0  # bars start at this level (dBFS): quieter is drawn as silence
# Reading audio for the strip costs a download per item from S3 and a decode everywhere: items
# longer than this get the chunk marks only, and once this much audio has been read in a run,
# the rest do too (items marked by QA go first).
STRIP_MAX_ITEM_S = 600.0
STRIP_BUDGET_S = 3600.0
MAX_CHUNK_TICKS = 120  # more chunk boundaries than this in one strip would be a grey smear


@dataclass(frozen=True, slots=True)
class Cue:
    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True, slots=True)
class ChunkMark:
    """A chunk as the strip draws it: where it lies in the item and whether QA flagged it."""

    index: int
    duration_s: float
    failed: bool
    qa_check: str | None
    qa_measure: float | None
    qa_attempts: int | None


@dataclass(frozen=True, slots=True)
class Failure:
    stage: str
    error_type: str
    message: str
    retryable: bool
    chunk_index: int | None
    http_status: int | None


@dataclass(frozen=True, slots=True)
class ItemView:
    """One row of the page, from the manifests (QA columns are optional: older manifests and
    runs without the checks have none)."""

    source_row: int
    item_id: str | None
    status: str  # ok | skipped | failed | removed
    language: str | None = None
    chars: int | None = None
    duration_s: float | None = None
    loudness_lufs: float | None = None
    audio_format: str | None = None
    audio_uri: str | None = None
    captions_uri: str | None = None
    qa: str | None = None  # pass | marked | None (not checked)
    qa_check: str | None = None
    qa_measure: float | None = None
    qa_attempts: int | None = None
    failures: tuple[Failure, ...] = ()
    chunks: tuple[ChunkMark, ...] = ()

    @property
    def marked(self) -> bool:
        return self.qa == "marked"

    @property
    def playable(self) -> bool:
        return self.status in ("ok", "skipped") and bool(self.audio_uri)


@dataclass(frozen=True, slots=True)
class Media:
    """What the page needs from the store for one item: addresses, cues, the level strip."""

    audio_href: str | None = None
    cues: tuple[Cue, ...] = ()
    levels: tuple[float, ...] | None = None  # dBFS per strip point


# -- from manifests ----------------------------------------------------------------------------


def item_views(
    items: Iterable[dict[str, Any]],
    chunks: Iterable[dict[str, Any]] = (),
    errors: Iterable[dict[str, Any]] = (),
) -> list[ItemView]:
    """Rows of the page from manifest rows (dicts, as ``Table.to_pylist`` gives them), in
    source order with removed items last. Chunks and errors join on ``source_row``."""
    by_row: dict[int, list[ChunkMark]] = {}
    for c in chunks:
        by_row.setdefault(c["source_row"], []).append(
            ChunkMark(
                index=c["chunk_index"],
                duration_s=float(c.get("duration_s") or 0.0),
                failed=c.get("status") == "failed",
                qa_check=c.get("qa_check"),
                qa_measure=c.get("qa_measure"),
                qa_attempts=c.get("qa_attempts"),
            )
        )
    failures: dict[int, list[Failure]] = {}
    for e in errors:
        failures.setdefault(e["source_row"], []).append(
            Failure(
                stage=e["stage"],
                error_type=e["error_type"],
                message=e["error_message"],
                retryable=bool(e["retryable"]),
                chunk_index=e.get("chunk_index"),
                http_status=e.get("http_status"),
            )
        )
    views = []
    for r in items:
        row = r["source_row"]
        removed = r["status"] == "removed"  # source_row -1: matches no chunk or error
        errs = failures.get(row, []) if not removed else []
        if r["status"] == "failed" and not errs and r.get("error"):
            errs = [Failure("item", "error", r["error"], False, None, None)]
        views.append(
            ItemView(
                source_row=row,
                item_id=r.get("item_id"),
                status=r["status"],
                language=r.get("language"),
                chars=r.get("chars"),
                duration_s=r.get("duration_s"),
                loudness_lufs=r.get("loudness_lufs"),
                audio_format=r.get("audio_format"),
                audio_uri=r.get("audio_uri"),
                captions_uri=r.get("captions_uri"),
                qa=r.get("qa"),
                qa_check=r.get("qa_check"),
                qa_measure=r.get("qa_measure"),
                qa_attempts=r.get("qa_attempts"),
                failures=tuple(errs),
                chunks=tuple(sorted(by_row.get(row, []), key=lambda c: c.index))
                if not removed
                else (),
            )
        )
    views.sort(key=lambda v: (v.status == "removed", v.source_row))
    return views


_CUE_TIME = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{2})[.,](\d{3})")
_TAG = re.compile(r"<[^>]*>")


def _seconds(stamp: str) -> float | None:
    m = _CUE_TIME.fullmatch(stamp.strip().split(" ", 1)[0])
    if m is None:
        return None
    h, mi, s, ms = (int(g) if g else 0 for g in m.groups())
    return h * 3600 + mi * 60 + s + ms / 1000


def parse_webvtt(data: bytes) -> list[Cue]:
    """The cues of a WebVTT file as plain text (tags dropped, entities read)."""
    cues = []
    for block in re.split(r"\r?\n\s*\r?\n", data.decode("utf-8", "replace")):
        lines = block.strip("\r\n").splitlines()
        for i, line in enumerate(lines):
            if "-->" not in line:
                continue
            start, _, end = line.partition("-->")
            s, e = _seconds(start), _seconds(end)
            if s is not None and e is not None:
                text = " ".join(html.unescape(_TAG.sub("", t)).strip() for t in lines[i + 1 :])
                cues.append(Cue(s, e, text.strip()))
            break
    return cues


def level_db(samples: np.ndarray) -> float:
    """RMS level of samples in dBFS (floored at -120: digital silence)."""
    if samples.size == 0:
        return -120.0
    rms = math.sqrt(float(np.mean(np.square(samples, dtype=np.float64))))
    return round(20 * math.log10(max(rms, 1e-6)), 1)


def audio_levels(data: bytes, points: int = STRIP_POINTS) -> tuple[float, ...]:
    """``level_db`` of ``points`` equal stretches of an audio file (WAV, FLAC or MP3), read a
    stretch at a time."""
    import soundfile as sf

    with sf.SoundFile(io.BytesIO(data)) as f:
        edges = np.linspace(0, f.frames, points + 1).astype(np.int64)
        return tuple(
            level_db(f.read(int(n), dtype="float32", always_2d=True)) for n in np.diff(edges)
        )


# -- rendering -------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _script_json(value: object) -> str:
    """JSON that cannot end its <script> element or open a comment in it."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _number(x: float | None) -> str:
    return "–" if x is None else f"{x:.3g}"


def _qa_cell(v: ItemView) -> str:
    if v.qa is None and v.qa_check is None:
        return '<span class="dim">not checked</span>' if v.playable else ""
    verdict = v.qa or "–"
    parts = [f'<span class="qa-{_e(verdict)}">{_e(verdict)}</span>']
    if v.qa_check:
        parts.append(f"{_e(v.qa_check)} = {_e(_number(v.qa_measure))}")
    if v.qa_attempts is not None:
        parts.append(f"{int(v.qa_attempts)} attempt{'s' if v.qa_attempts != 1 else ''}")
    return "<br>".join(parts)


def _failures(v: ItemView) -> str:
    if not v.failures:
        return ""
    rows = []
    for f in v.failures:
        where = [f.stage]
        if f.chunk_index is not None:
            where.append(f"chunk {f.chunk_index}")
        if f.http_status is not None:
            where.append(f"HTTP {f.http_status}")
        retry = "a retry may help" if f.retryable else "a retry will not help"
        rows.append(
            f"<li><b>{_e(' · '.join(where))}</b> {_e(f.error_type)}: {_e(f.message)} "
            f'<span class="dim">({retry})</span></li>'
        )
    return f'<ul class="why">{"".join(rows)}</ul>'


def _strip(v: ItemView, media: Media) -> str:
    """An inline SVG, STRIP_POINTS wide: level bars mirrored about the middle, chunk
    boundaries as ticks, chunks flagged by QA or failed as a red wash with a tooltip."""
    chunks = v.chunks
    if not media.levels and not chunks:
        return ""
    w, mid = STRIP_POINTS, 16
    parts = []
    total = sum(c.duration_s for c in chunks)
    if chunks and total > 0:
        # Pauses between chunks are not in the manifest: chunks are laid out by their share of
        # the chunks' audio, which is within a pause of where they are heard.
        x = 0.0
        ticks = []
        for i, c in enumerate(chunks):
            width = w * c.duration_s / total
            if c.failed or c.qa_check:
                what = c.qa_check or "failed"
                tip = f"chunk {c.index}: {what}"
                if c.qa_measure is not None:
                    tip += f" = {_number(c.qa_measure)}"
                if c.qa_attempts is not None:
                    tip += f", {c.qa_attempts} attempts"
                parts.append(
                    f'<rect class="flag" x="{x:.1f}" y="0" width="{max(width, 0.6):.1f}" '
                    f'height="32"><title>{_e(tip)}</title></rect>'
                )
            if i and len(chunks) <= MAX_CHUNK_TICKS:
                ticks.append(f"M{x:.1f} 0v3M{x:.1f} 29v3")
            x += width
        if ticks:
            parts.append(f'<path class="tick" d="{"".join(ticks)}"/>')
    if media.levels:
        bars = []
        for i, db in enumerate(media.levels):
            h = round(max(0.0, (db - STRIP_FLOOR_DB) / -STRIP_FLOOR_DB) * (mid - 2), 1)
            if h > 0:
                bars.append(f"M{i + 0.5:g} {mid - h:g}v{2 * h:g}")
        parts.append(f'<path class="lvl" d="{"".join(bars)}"/>')
    parts.append('<line class="cur" x1="-1" x2="-1" y1="0" y2="32"/>')
    return (
        f'<svg class="strip" viewBox="0 0 {w} 32" preserveAspectRatio="none" '
        f'aria-label="level over time">{"".join(parts)}</svg>'
    )


def _row(i: int, v: ItemView, media: Media) -> str:
    name = (
        _e(v.item_id)
        if v.item_id is not None
        else f'<span class="dim">(no id, row {v.source_row})</span>'
    )
    status = f'<span class="st st-{_e(v.status)}">{_e(v.status)}</span>'
    if v.marked:
        status += ' <span class="st st-marked">marked</span>'
    player = ""
    if v.playable and media.audio_href:
        player = (
            '<button class="play" '
            f'data-dur="{v.duration_s or 0:.3f}">▶ play</button>'
            '<div class="cue" aria-live="polite"></div>'
        )
    facts = [
        _clock(v.duration_s) if v.duration_s is not None else "",
        f"{v.loudness_lufs:.1f} LUFS" if v.loudness_lufs is not None else "",
    ]
    details = [
        x
        for x in (
            v.language,
            f"{v.chars} chars" if v.chars is not None else None,
            f"{len(v.chunks)} chunk{'s' if len(v.chunks) != 1 else ''}" if v.chunks else None,
            f"row {v.source_row}" if v.source_row >= 0 else None,
        )
        if x
    ]
    # The one copy of the audio's address (a presigned URL is ~600 bytes): the player's too.
    link = (
        f'<a class="file" href="{_e(media.audio_href)}">{_e(v.audio_format or "audio")}</a>'
        if media.audio_href
        else ""
    )
    attrs = f'data-i="{i}" data-status="{_e(v.status)}"'
    if v.marked:
        attrs += ' data-qa="marked"'
    return (
        f'<tr class="item" {attrs} data-id="{_e(v.item_id or "")}">'
        f'<td class="id">{name}<div class="dim">{_e(" · ".join(details))}</div></td>'
        f"<td>{status}</td>"
        f'<td class="num">{"<br>".join(_e(f) for f in facts if f)}</td>'
        f"<td>{_qa_cell(v)}</td>"
        f'<td class="media">{player}{_strip(v, media)}{_failures(v)}'
        f'<div class="links">{link}</div></td>'
        "</tr>"
    )


_CSS = """
:root{color-scheme:light;--fg:#1d2330;--dim:#6b7280;--line:#e5e7eb;--bad:#b42318;
--warn:#b54708;--ok:#067647;--acc:#2e5aac}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
margin:0;background:#f8f9fb}
header{padding:16px 24px;background:#fff;border-bottom:1px solid var(--line)}
h1{font-size:18px;margin:0 0 4px}
.meta{color:var(--dim);font-size:13px}
.counts{margin-top:8px;display:flex;gap:16px;flex-wrap:wrap}
.counts b{font-size:16px}
nav{position:sticky;top:0;z-index:2;display:flex;gap:8px;align-items:center;padding:10px 24px;
background:#fff;border-bottom:1px solid var(--line)}
nav button{font:inherit;padding:4px 12px;border:1px solid var(--line);border-radius:16px;
background:#fff;cursor:pointer}
nav button[aria-pressed=true]{background:var(--acc);border-color:var(--acc);color:#fff}
nav input{font:inherit;margin-left:auto;padding:4px 10px;border:1px solid var(--line);
border-radius:6px;width:220px}
main{padding:0 24px 40px}
table{width:100%;border-collapse:collapse;background:#fff;table-layout:fixed}
th{text-align:left;font-weight:600;color:var(--dim);font-size:12px;padding:8px;
border-bottom:1px solid var(--line)}
td{padding:8px;border-bottom:1px solid var(--line);vertical-align:top;overflow-wrap:anywhere}
tr.item{content-visibility:auto;contain-intrinsic-size:auto 64px}
th:nth-child(1){width:24%}th:nth-child(2){width:10%}th:nth-child(3){width:9%}
th:nth-child(4){width:15%}
.id{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}
.num{font-variant-numeric:tabular-nums;white-space:nowrap}
.dim{color:var(--dim);font-family:system-ui,sans-serif;font-size:12px}
.st{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;
background:#eef2f6}
.st-ok{color:var(--ok);background:#ecfdf3}.st-skipped{color:var(--dim)}
.st-failed{color:var(--bad);background:#fef3f2}.st-marked{color:var(--warn);background:#fffaeb}
.st-removed{color:var(--dim);text-decoration:line-through}
.qa-marked{color:var(--warn);font-weight:600}.qa-pass{color:var(--ok)}
.play{font:inherit;padding:2px 10px;border:1px solid var(--line);border-radius:6px;
background:#fff;cursor:pointer}
audio{width:100%;height:32px}
.cue{min-height:1.45em;margin:2px 0;font-size:15px}.play+.cue{display:none}
.strip{display:block;width:100%;height:32px;margin:4px 0;background:#f2f4f7;border-radius:3px;
cursor:pointer}
.strip .lvl{stroke:#5b7bb8;stroke-width:.7}
.strip .tick{stroke:#98a2b3;stroke-width:.25}
.strip .flag{fill:#f04438;fill-opacity:.28}
.strip .cur{stroke:var(--bad);stroke-width:.5}
.why{margin:4px 0;padding-left:18px;color:var(--bad)}
.links{font-size:12px}.links a{color:var(--acc);margin-right:8px}
.transcript{font-size:13px;max-height:12em;overflow:auto}
.transcript span{cursor:pointer}.transcript .now{background:#fff3b0}
#none{padding:24px;color:var(--dim);text-align:center}
tr.item.nomatch{display:none}
#more{padding:16px;text-align:center}
#more button{font:inherit;padding:4px 14px;border:1px solid var(--line);border-radius:16px;
background:#fff;cursor:pointer}
"""

# Plain script, no library: filters, one player at a time, the current cue, the strip cursor.
_JS = """
(function(){
var cues=JSON.parse(document.getElementById('cues').textContent);
var none=document.getElementById('none'),more=document.getElementById('more'),query='';
// Rows past the first few wait in <template> groups: parsed, never laid out, until scrolled
// for (the button below the table) or matched by a filter. A group's rows load where it
// stands, in order.
function wanted(r){
  var f=document.body.dataset.filter;
  if(query&&r.dataset.id.toLowerCase().indexOf(query)<0)return false;
  if(f==='failed')return r.dataset.status==='failed';
  if(f==='marked')return r.dataset.qa==='marked';
  if(f==='review')return r.dataset.status==='failed'||r.dataset.qa==='marked';
  return true;
}
function filtered(){return query!==''||document.body.dataset.filter!=='all';}
function waiting(){return Array.prototype.slice.call(document.querySelectorAll('template.rows'));}
function pulled(t){return document.querySelectorAll('tr.pulled[data-g="'+t.dataset.g+'"]');}
function firstAfter(rows,i){
  for(var k=0;k<rows.length;k++){if(Number(rows[k].dataset.i)>i)return rows[k];}
  return null;
}
// A filter takes only the rows it wants out of a group, in order, just before the group.
function pull(t){
  Array.prototype.forEach.call(t.content.querySelectorAll('tr.item'),function(r){
    if(!wanted(r))return;
    r.classList.add('pulled');r.dataset.g=t.dataset.g;
    t.parentNode.insertBefore(r,firstAfter(pulled(t),Number(r.dataset.i))||t);
  });
}
// A group asked for joins the rows pulled from it earlier, in order.
function load(t){
  var frag=t.content;
  Array.prototype.forEach.call(pulled(t),function(p){
    p.classList.remove('pulled');
    frag.insertBefore(p,firstAfter(frag.querySelectorAll('tr.item'),Number(p.dataset.i)));
  });
  t.replaceWith(frag);
}
function update(){
  if(filtered())waiting().forEach(pull);
  var any=false;
  document.querySelectorAll('tr.item').forEach(function(r){
    var ok=wanted(r);r.classList.toggle('nomatch',!ok);any=any||ok;});
  none.hidden=any;
  var left=filtered()?0:Number(more.dataset.total)-document.querySelectorAll('tr.item').length;
  more.hidden=left<=0;
  more.querySelector('span').textContent=String(left);
}
function next(){var t=document.querySelector('template.rows');if(t){load(t);update();}}
more.querySelector('button').addEventListener('click',next);
document.querySelectorAll('nav button').forEach(function(b){
  b.addEventListener('click',function(){
    document.body.dataset.filter=b.dataset.filter;
    document.querySelectorAll('nav button').forEach(function(o){
      o.setAttribute('aria-pressed',String(o===b));});
    update();
  });
});
var typing=0;
document.getElementById('q').addEventListener('input',function(ev){
  clearTimeout(typing);
  typing=setTimeout(function(){query=ev.target.value.trim().toLowerCase();update();},150);
});
function transcript(row,audio,list){
  var box=document.createElement('details');box.className='transcript';
  var sum=document.createElement('summary');sum.textContent='captions';box.appendChild(sum);
  list.forEach(function(c,k){
    var s=document.createElement('span');s.textContent=c[2]+' ';s.dataset.k=k;
    s.addEventListener('click',function(){audio.currentTime=c[0];audio.play();});
    box.appendChild(s);
  });
  row.querySelector('.cue').after(box);
  return box;
}
function attach(btn){
  var row=btn.closest('tr'),list=cues[row.dataset.i]||[];
  var audio=document.createElement('audio');
  audio.controls=true;audio.preload='metadata';audio.src=row.querySelector('a.file').href;
  btn.replaceWith(audio);
  var line=row.querySelector('.cue'),cur=row.querySelector('.strip .cur');
  var box=list.length?transcript(row,audio,list):null,last=-1;
  audio.addEventListener('timeupdate',function(){
    var t=audio.currentTime,k=-1;
    for(var j=0;j<list.length;j++){if(list[j][0]<=t&&t<list[j][1]){k=j;break;}}
    if(k!==last){
      line.textContent=k>=0?list[k][2]:'';
      if(box){
        var old=box.querySelector('.now');if(old)old.classList.remove('now');
        if(k>=0)box.querySelector('[data-k="'+k+'"]').classList.add('now');
      }
      last=k;
    }
    var d=audio.duration||parseFloat(btn.dataset.dur)||0;
    if(cur&&d){var x=(t/d*%(w)d).toFixed(2);cur.setAttribute('x1',x);cur.setAttribute('x2',x);}
  });
  return audio;
}
document.addEventListener('click',function(ev){
  var btn=ev.target.closest('button.play');
  if(btn){attach(btn).play();return;}
  var strip=ev.target.closest('svg.strip');
  if(!strip)return;
  var row=strip.closest('tr'),audio=row.querySelector('audio');
  var b=row.querySelector('button.play');
  if(!audio&&b)audio=attach(b);
  if(!audio)return;
  var box=strip.getBoundingClientRect(),frac=(ev.clientX-box.left)/box.width;
  var d=audio.duration||parseFloat(row.querySelector('[data-dur]')?
    row.querySelector('[data-dur]').dataset.dur:'0')||0;
  function go(){audio.currentTime=frac*(audio.duration||d);audio.play();}
  if(audio.readyState>=1)go();else audio.addEventListener('loadedmetadata',go,{once:true});
});
document.addEventListener('play',function(ev){
  document.querySelectorAll('audio').forEach(function(a){if(a!==ev.target)a.pause();});
},true);
update();
})();
""".replace("%(w)d", str(STRIP_POINTS))


def render(
    run_id: str,
    views: Sequence[ItemView],
    media: Sequence[Media] | None = None,
    *,
    generated_at: datetime,
    source: str | None = None,
    out: str | None = None,
    first_rows: int = 200,
    group_rows: int = 500,
) -> str:
    """The page for a run: ``views`` from ``item_views``, ``media[i]`` for ``views[i]``.
    The first ``first_rows`` rows are laid out at once, the others in groups of
    ``group_rows`` when the reader asks for more or a filter matches one of them."""
    media = media if media is not None else [Media() for _ in views]
    nonce = secrets.token_urlsafe(12)
    counts = {s: sum(v.status == s for v in views) for s in ("ok", "skipped", "failed", "removed")}
    marked = sum(v.marked for v in views)
    audio_s = sum(v.duration_s or 0.0 for v in views if v.status == "ok")
    review = sum(v.marked or v.status == "failed" for v in views)
    items = len(views) - counts["removed"]
    meta = [f"written {generated_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"]
    if source:
        meta.append(f"source {source}")
    if out:
        meta.append(f"output {out}")
    count_html = "".join(
        f'<span><b class="{cls}">{n}</b> {label}</span>'
        for n, label, cls in (
            (items, "items", ""),
            (counts["ok"], "ok", ""),
            (counts["skipped"], "skipped", ""),
            (counts["failed"], "failed", "qa-marked" if counts["failed"] else ""),
            (marked, "marked by QA", "qa-marked" if marked else ""),
            (counts["removed"], "removed", ""),
        )
        if n or label in ("items", "failed", "marked by QA")
    )
    count_html += f"<span><b>{_e(_clock(audio_s))}</b> of new audio</span>"
    buttons = "".join(
        f'<button data-filter="{f}" aria-pressed="{str(f == "all").lower()}">{label} ({n})</button>'
        for f, label, n in (
            ("all", "All", len(views)),
            ("review", "Needs review", review),
            ("marked", "Marked", marked),
            ("failed", "Failed", counts["failed"]),
        )
    )
    cue_data = {
        str(i): [[c.start_s, c.end_s, c.text] for c in m.cues]
        for i, m in enumerate(media)
        if m.cues
    }
    rows = [_row(i, v, m) for i, (v, m) in enumerate(zip(views, media, strict=True))]
    # A browser lays out a few hundred rows at once; the rest wait, parsed but inert,
    # until asked for (a button) or matched by a filter.
    body = "".join(rows[:first_rows]) + "".join(
        f'<template class="rows" data-g="{k}">{"".join(rows[k : k + group_rows])}</template>'
        for k in range(first_rows, len(rows), group_rows)
    )
    # No network at all: audio and captions from the output, everything else inline.
    csp = (
        "default-src 'none'; "
        f"script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "media-src * data: blob: file:; img-src data:"
    )
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(csp)}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>fishflow run {_e(run_id)}</title>"
        f'<style nonce="{nonce}">{_CSS}</style></head>'
        '<body data-filter="all">'
        f"<header><h1>fishflow run {_e(run_id)}</h1>"
        f'<div class="meta">{" · ".join(_e(m) for m in meta)}</div>'
        f'<div class="counts">{count_html}</div></header>'
        f'<nav aria-label="filter">{buttons}'
        '<input id="q" type="search" placeholder="filter by id" aria-label="filter by id"></nav>'
        "<main><table><thead><tr><th>item</th><th>status</th><th>length · loudness</th>"
        "<th>QA</th><th>listen · why it failed</th></tr></thead>"
        f"<tbody>{body}</tbody></table>"
        '<div id="none" hidden>No items match.</div>'
        f'<div id="more" data-total="{len(rows)}" hidden><button>show more rows</button> '
        "(<span></span> not shown yet)</div></main>"
        f'<script type="application/json" id="cues">{_script_json(cue_data)}</script>'
        f'<script nonce="{nonce}">{_JS}</script>'
        "</body></html>\n"
    )


# -- from a store ------------------------------------------------------------------------------


def report_key(run_id: str) -> str:
    return f"{run_prefix(run_id)}/{REPORT_NAME}"


def _read_table(store: Store, key: str) -> list[dict[str, Any]]:
    try:
        table = read_parquet(store, key)
    except FileNotFoundError:
        return []
    return table.to_pylist()


def _media(store: Store, page: str, v: ItemView, with_levels: bool) -> Media:
    """Addresses, cues and (if asked) the level strip of one item; what cannot be read is left
    out, never fatal: the page is a view of the run, not part of its result."""
    audio_key = store.key_of(v.audio_uri) if v.playable and v.audio_uri else None
    captions_key = store.key_of(v.captions_uri) if v.captions_uri and audio_key else None
    audio_href = store.link(audio_key, page=page) if audio_key else None
    cues: tuple[Cue, ...] = ()
    if captions_key:
        try:
            cues = tuple(parse_webvtt(store.get(captions_key)))
        except Exception as exc:
            logger.debug("report: captions of %r not read: %s", v.item_id, exc)
    strip = None
    if with_levels and audio_key:
        try:
            strip = audio_levels(store.get(audio_key))
        except Exception as exc:
            logger.debug("report: audio of %r not read: %s", v.item_id, exc)
    return Media(audio_href, cues, strip)


def write_report(store: Store, run_id: str, *, now: datetime | None = None) -> str:
    """Write ``manifests/run=<run_id>/report.html`` from the run's final manifests; returns its
    URI. Reads each item's captions and, within ``STRIP_BUDGET_S`` of audio, its audio."""
    prefix = run_prefix(run_id)
    views = item_views(
        _read_table(store, f"{prefix}/items.parquet"),
        _read_table(store, f"{prefix}/chunks.parquet"),
        _read_table(store, f"{prefix}/errors.parquet"),
    )
    page = report_key(run_id)
    # Which items get a level strip: marked ones first, then in row order, up to the budget.
    budget, wanted = STRIP_BUDGET_S, set()
    order = sorted(range(len(views)), key=lambda i: not views[i].marked)
    for i in order:
        d = views[i].duration_s or 0.0
        if views[i].playable and 0 < d <= STRIP_MAX_ITEM_S and d <= budget:
            wanted.add(i)
            budget -= d
    # Reads wait on S3 (or the disk): a few at once, as many as the store writes at once.
    with ThreadPoolExecutor(
        max(4, store.write_threads), thread_name_prefix="fishflow-report"
    ) as pool:
        media = list(
            pool.map(lambda i: _media(store, page, views[i], i in wanted), range(len(views)))
        )
    source: str | None = None
    with contextlib.suppress(Exception):  # a page without the source named is still the page
        source = read_run_record(store, run_id).source
    text = render(
        run_id,
        views,
        media,
        generated_at=now or datetime.now(UTC),
        source=source,
        out=store.root,
    )
    return store.put(page, text.encode(), "text/html; charset=utf-8", {})
