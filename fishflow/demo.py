"""`make demo`: the bundled emulator plus the sample catalog, end to end, no GPU and no cloud."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq

from fishflow.cli import main as cli_main
from fishflow.testing.emulator import Emulator, EmulatorConfig

ROOT = Path(__file__).resolve().parent.parent
CATALOG = ROOT / "examples" / "catalog.csv"
OUT = Path.cwd() / "demo-output"


def main() -> int:
    # rtf 0.05: the emulator spends 50 ms of "GPU" per second of audio, like a fast server;
    # and it answers some requests badly, as a model does, for the answer check to catch.
    with Emulator(EmulatorConfig(workers=1, rtf=0.05, bad_answers=0.15, seed=6)) as emulator:
        print(f"demo: Fish Speech emulator on {emulator.url}; catalog {CATALOG}")
        code = cli_main(["run", str(CATALOG), "--out", str(OUT), "--server", emulator.url])
        bad = emulator.bad_answers
    if code not in (0, 2):
        return code
    if bad:
        items = pq.read_table(
            max(OUT.glob("manifests/run=*/items.parquet"), key=lambda p: p.stat().st_mtime),
            columns=["qa", "qa_attempts"],
        ).to_pylist()
        again = sum((r["qa_attempts"] or 0) > 1 for r in items)
        marked = sum(r["qa"] == "marked" for r in items)
        modes = ", ".join(sorted({b["mode"] for b in bad}))
        print(
            f"\ndemo: the emulator answered {len(bad)} request(s) badly on purpose ({modes});\n"
            f"      the answer check had {again} item(s) made again with another seed, "
            f"{marked} published marked\n      (qa, qa_check, qa_attempts in items.parquet)"
        )
    print(
        f"\ndemo: audio in {OUT / 'audio'}, manifests in {OUT / 'manifests'}\n"
        "demo: the catalog holds two bad rows on purpose (blank text, duplicate id): they are\n"
        "      'failed' in items.parquet with their reason in errors.parquet. Read them with:\n"
        f'      .venv/bin/python -c "import pandas as pd, glob; '
        f"print(pd.read_parquet(sorted(glob.glob('{OUT}/manifests/run=*/items.parquet'))[-1]))\""
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
