"""Reading a 1,000,000-row PostgreSQL table through the source, without synthesis.

Makes a fresh database (random name, dropped at the end), loads the rows with COPY, then reads
the table with ``read_source`` as a run does (server-side cursor, batches of 1,000 rows, in
order of the id column) and reports the wall time (goal: <= 60 s) and the process's RSS
sampled every second (goal: flat). PostgreSQL comes from BENCH_PG_URL (default: the local
server, user postgres); without one, the bench says so and skips.
"""

from __future__ import annotations

import os
import secrets
import sys
import threading
import time

from fishflow.sources import Columns, read_source

ROWS = int(os.environ.get("BENCH_SQL_ROWS", "1000000"))
ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BATCH = 1000


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def load(url: str) -> float:
    """Create and fill the table; returns seconds taken."""
    import psycopg

    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE products (id text, text text, language text)")
        with conn.cursor().copy("COPY products (id, text, language) FROM STDIN") as copy:
            for i in range(ROWS):
                copy.write_row(
                    (
                        f"sku-{i:07d}",
                        f"Product {i}: a stoneware mug in glaze number {i % 97}, dishwasher "
                        f"safe, holds {250 + i % 300} ml. Made by hand; each one differs a "
                        "little in colour and shape.",
                        "en",
                    )
                )
        conn.execute("ALTER TABLE products ADD PRIMARY KEY (id)")
        conn.execute("ANALYZE products")
    return time.monotonic() - started


def main() -> int:
    import psycopg

    name = f"fishflow_bench_{secrets.token_hex(4)}"
    admin = ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        print(f"sqlread: skipped, no PostgreSQL at {admin.split('@')[-1]}: {exc}".splitlines()[0])
        return 0
    db_url = admin.rsplit("/", 1)[0] + "/" + name
    try:
        load_s = load(db_url)
        samples: list[tuple[float, float]] = []
        done = threading.Event()
        started = time.monotonic()

        def sample() -> None:
            while not done.wait(1.0):
                samples.append((time.monotonic() - started, rss_mb()))

        sampler = threading.Thread(target=sample, daemon=True)
        rss_before = rss_mb()
        sampler.start()
        rows = chars = 0
        for batch in read_source(db_url, Columns(), BATCH, table="products"):
            rows += len(batch)
            chars += sum(len(r.text or "") for r in batch)
        wall = time.monotonic() - started
        done.set()
        sampler.join()
        trace = [mb for _, mb in samples] or [rss_mb()]
        settled = trace[len(trace) // 10 :] or trace  # after the first tenth of the read
        print(f"| load {ROWS:,} rows with COPY (+ primary key) | {load_s:.1f} s |")
        print(
            f"| read {rows:,} rows ({chars / 1e6:.0f} M chars) through the source | "
            f"**{wall:.1f} s** ({rows / wall:,.0f} rows/s; goal <= 60 s) |"
        )
        print(
            f"| RSS while reading (sampled each second) | before {rss_before:.0f} MB, "
            f"min {min(settled):.0f}, max {max(trace):.0f} MB, "
            f"spread after the first tenth {max(settled) - min(settled):.1f} MB |"
        )
        print("RSS trace (s, MB): " + ", ".join(f"{t:.0f}:{mb:.0f}" for t, mb in samples))
        if rows != ROWS:
            print(f"sqlread: read {rows} rows, expected {ROWS}", file=sys.stderr)
            return 1
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
