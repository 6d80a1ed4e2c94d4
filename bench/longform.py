"""Long-form audio: a generated Markdown course and one very long item (`make bench`).

- A course of ``BENCH_LONGFORM_BYTES`` (1 MB) of Markdown in chapters of
  ``BENCH_LONGFORM_CHAPTER`` (50 kB) files, headings and paragraphs;
- one item of ``BENCH_LONGFORM_ITEM`` (200,000) characters;

each run by `fishflow run` in a child process, per format in ``BENCH_LONGFORM_FORMATS``
(wav,flac,mp3; mp3's course is ``BENCH_LONGFORM_MP3_BYTES``, 250 kB), against one zero-latency
emulator process. Reported: the child's peak RSS (goal
<= 500 MB), wall time against the server's ideal (the time its workers spent making audio),
and the child's CPU per second of audio produced, also net of a one-item run's CPU (start-up:
Prefect, imports). Of that, the chunk cache's share is counted in the run
(``bench.cache_cpu``): the raw spill of each chunk when it is made, reading chunks back, and
compressing them to FLAC once used. The goal (<= 0.6 ms, wav) is the last column, the client's
own work net of start-up and of the cache, which is reported beside it as mp3's encoder is
(see the README's "Measured").
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from bench.run import VENV_BIN, emulators, service_s, stats, urls

# A busy machine can take longer than Prefect's default 20 s to start the child's ephemeral API.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
COURSE_BYTES = int(os.environ.get("BENCH_LONGFORM_BYTES", "1000000"))
CHAPTER_BYTES = int(os.environ.get("BENCH_LONGFORM_CHAPTER", "50000"))
ITEM_CHARS = int(os.environ.get("BENCH_LONGFORM_ITEM", "200000"))
FORMATS = os.environ.get("BENCH_LONGFORM_FORMATS", "wav,flac,mp3").split(",")
# mp3's encoder costs ~11 ms per audio second here: the 1 MB course (~17 hours of audio) would
# take 12 minutes in mp3 alone, so its mp3 course is smaller (memory does not follow length).
MP3_COURSE_BYTES = int(os.environ.get("BENCH_LONGFORM_MP3_BYTES", "250000"))
WORKERS = 4  # the emulator's parallel workers; the ideal wall time is their busy time / 4

_PROSE = (
    "the model reads each sensor value and sends a short message to the cloud where a small "
    "function stores it for later analysis while the device keeps measuring light and soil"
)
_WORDS = _PROSE.split()


def _paragraph(seed: int) -> str:
    sentences = []
    for s in range(4):
        start = (seed * 7 + s * 5) % len(_WORDS)
        words = [_WORDS[(start + k) % len(_WORDS)] for k in range(9 + (seed + s) % 8)]
        sentences.append(f"Step {seed}.{s}: " + " ".join(words) + ".")
    return " ".join(sentences)


def course(folder: Path, total: int, chapter: int) -> Path:
    """Markdown lessons of about `chapter` bytes each, `total` bytes in all."""
    written, n, seed = 0, 0, 0
    while written < total:
        lines = [f"# Lesson {n + 1}: sensors and the cloud", ""]
        size = 0
        section = 0
        while size < min(chapter, total - written):
            if size // 5000 >= section:
                section += 1
                lines += [f"## Part {section}", ""]
            paragraph = _paragraph(seed)
            seed += 1
            lines += [paragraph, ""]
            size += len(paragraph) + 2
        path = folder / f"{n + 1:02d}-lesson" / "README.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines))
        written += size
        n += 1
    return folder


def long_item(path: Path, chars: int) -> Path:
    parts, size, seed = [], 0, 0
    while size < chars:
        parts.append(_paragraph(seed))
        size += len(parts[-1]) + 2
        seed += 1
    path.write_text(json.dumps({"id": "book", "text": "\n\n".join(parts)[:chars]}))
    return path


def run_child(source: Path, out: Path, servers: list[str], fmt: str) -> dict[str, float]:
    """`fishflow run` as a child (through bench.cache_cpu): wall time, peak RSS and CPU from
    its own rusage, and the chunk cache's share of that CPU."""
    report = out.with_name(out.name + "-cache-cpu.json")
    cmd = [
        str(VENV_BIN / "python"),
        "-m",
        "bench.cache_cpu",
        str(report),
        "run",
        str(source),
        "--out",
        str(out),
        "--quiet",
        "--force",
        "--audio-format",
        fmt,
        "--max-in-flight",
        "4",
        *(a for u in servers for a in ("--server", u)),
    ]
    started = time.monotonic()
    pid = os.spawnv(os.P_NOWAIT, cmd[0], cmd)
    _, status, usage = os.wait4(pid, 0)
    wall = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"fishflow run failed on {source}")
    audio_s = 0.0
    for items in out.glob("manifests/run=*/items.parquet"):
        audio_s += sum(d or 0 for d in pq.read_table(items, columns=["duration_s"])[0].to_pylist())
    cache = json.loads(report.read_text())
    return {
        "wall": wall,
        "rss_mb": usage.ru_maxrss / 1024,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "audio_s": audio_s,
        "cache_s": cache["spill_s"] + cache["read_s"] + cache["compress_s"],
        "compress_s": cache["compress_s"],
    }


def main() -> int:
    rows: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="fishflow-longform-") as tmp,
        emulators(1, 0.0, workers=WORKERS) as procs,
    ):
        tmpd = Path(tmp)
        servers = urls(procs)
        one = tmpd / "one.jsonl"
        one.write_text(json.dumps({"id": "one", "text": "One short sentence to start."}))
        courses = {
            size: course(tmpd / f"course-{size}", size, CHAPTER_BYTES)
            for size in {COURSE_BYTES, min(COURSE_BYTES, MP3_COURSE_BYTES)}
        }
        book = long_item(tmpd / "book.jsonl", ITEM_CHARS)
        for fmt in FORMATS:
            first = run_child(one, tmpd / f"one-{fmt}", servers, fmt)
            startup = first["cpu_s"]
            rows.append(
                f"| {fmt} | one item of one sentence (start-up) | {first['audio_s']:,.0f} "
                f"| {first['rss_mb']:.0f} | {first['wall']:.1f} | | | | | | | |"
            )
            size = min(COURSE_BYTES, MP3_COURSE_BYTES) if fmt == "mp3" else COURSE_BYTES
            cases = {
                f"course {size // 1000} kB, {CHAPTER_BYTES // 1000} kB chapters": courses[size],
                f"one item of {ITEM_CHARS:,} characters": book,
            }
            for name, source in cases.items():
                for u in servers:
                    stats(u, reset=True)
                out = tmpd / f"out-{fmt}"
                result = run_child(source, out, servers, fmt)
                ideal = service_s(servers) / (len(servers) * WORKERS)
                ms = 1000 / max(result["audio_s"], 1e-9)  # per second of audio
                net = (result["cpu_s"] - startup) * ms
                rows.append(
                    f"| {fmt} | {name} | {result['audio_s']:,.0f} | {result['rss_mb']:.0f} "
                    f"| {result['wall']:.1f} | {ideal:.1f} | {result['wall'] / ideal:.2f} "
                    f"| {result['cpu_s'] * ms:.3f} | {net:.3f} | {result['cache_s'] * ms:.3f} "
                    f"| {result['compress_s'] * ms:.3f} | {net - result['cache_s'] * ms:.3f} |"
                )
                print(rows[-1], file=sys.stderr, flush=True)
                for path in sorted(out.rglob("*"), reverse=True):  # gigabytes of wav: free them
                    if path.is_file():
                        path.unlink()
    print(
        "| format | case | audio s | peak RSS MB | wall s | ideal s | wall/ideal "
        "| client CPU ms per audio s | net of start-up | of which the chunk cache "
        "| of that, compressing | net of start-up and the cache |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
