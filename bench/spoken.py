"""CPU of turning text into what is said (Markdown, inline code, numbers, lexicon), per audio
second, against the same text with numbers left as written: the spoken-text step must cost
nothing next to the client's ~1 ms per audio second (README "Measured").

    .venv/bin/python -m bench.spoken
"""

from __future__ import annotations

import time
from pathlib import Path

from fishflow.items import Item, validate_row
from fishflow.run import run_spec
from fishflow.settings import RunSettings
from fishflow.sources import SourceRow

ROOT = Path(__file__).parents[1]
S_PER_CHAR = 0.065  # the emulator's English rate, roughly


def main() -> None:
    texts = [p.read_text() for p in sorted((ROOT / "examples").rglob("*.md"))]
    text = ("\n\n".join(texts) * 40)[:200_000]
    lexicon = str(ROOT / "examples" / "book" / "lexicon.csv")
    for normalize in ("off", "on"):
        spec = run_spec(RunSettings(normalize=normalize, lexicon=lexicon))
        row = SourceRow(row=0, item_id="book.md", text=text, text_format="markdown")
        best = float("inf")
        for _ in range(3):
            start = time.process_time()
            item = validate_row(row, spec, {})
            best = min(best, time.process_time() - start)
        assert isinstance(item, Item)
        audio_s = len(item.text) * S_PER_CHAR
        print(
            f"normalize {normalize:3}: {best:.2f} s CPU for {len(text):,} characters "
            f"({len(item.chunks):,} chunks, ~{audio_s / 3600:.1f} h of audio): "
            f"{best * 1000 / audio_s:.3f} ms per audio second"
        )


if __name__ == "__main__":
    main()
