"""What a source row is, whatever reads it (files and objects in ``sources``, SQL tables in
``database``): the columns it is read from, the row, and the check that those columns exist."""

from __future__ import annotations

from dataclasses import dataclass

from fishflow.errors import SourceError


@dataclass(frozen=True, slots=True)
class Columns:
    id: str = "id"
    text: str = "text"
    language: str = "language"  # optional in the source
    voice: str = "reference_id"  # optional in the source
    reference_audio: str = "reference_audio"  # optional: a recording (path or s3:// URI)
    reference_text: str = "reference_text"  # optional: what is said in it


@dataclass(frozen=True, slots=True)
class SourceRow:
    row: int  # 0-based position in the source, the row's identity when its id is unusable
    item_id: str | None
    text: str | None
    language: str | None = None
    voice: str | None = None
    problem: str | None = None
    reference_audio: str | None = None
    reference_text: str | None = None
    # "markdown" for .md/.markdown files, "plain" for .txt; None for table rows (the run's
    # text_format decides). Markdown is read into speech when the item is validated.
    text_format: str | None = None


def check_columns(found: list[str], cols: Columns, where: str) -> None:
    missing = [c for c in (cols.id, cols.text) if c not in found]
    if missing:
        raise SourceError(
            f"{where}: no column {', '.join(map(repr, missing))}; columns are {found} "
            "(choose others with --id-column / --text-column)"
        )
