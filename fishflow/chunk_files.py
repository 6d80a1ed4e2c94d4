"""What a chunk cache folder holds, so that ``fishflow gc`` deletes only what fishflow wrote.

A chunk cache (``<out>/.fishflow/chunks``, a ``--chunk-cache DIR``, an S3 output's
``.fishflow/chunks/``) holds chunk audio as ``<key[:2]>/<key>.<rate>.flac`` (or ``.s16``, raw,
until used), ``key`` being a ``chunking.chunk_key`` (32 hex digits), and the temporary files
those are written through. A folder fishflow made for one carries ``MARKER``: gc refuses a
folder without it (a ``--chunk-cache`` pointed at the wrong place must not lose its files) and
leaves any file not named in this layout.
"""

from __future__ import annotations

import contextlib
import os
import re

MARKER = ".fishflow-chunk-cache"
_MARKER_TEXT = (
    "This folder is a fishflow chunk cache: `fishflow gc` deletes chunk audio files here\n"
    "(<2 hex>/<32 hex>.<rate>.flac|s16) that no manifest references, and nothing else.\n"
)
_CHUNK_FILE = re.compile(r"([0-9a-f]{2})/(\1[0-9a-f]{30})\.[0-9]{3,6}\.(?:flac|s16)")
# Left by a write that was cut short (ChunkCache._write: tempfile.mkstemp's 8 characters).
_TEMP_FILE = re.compile(r"[0-9a-f]{2}/\.tmp-[a-z0-9_]{8}")


def chunk_file_key(relative: str) -> str | None:
    """The chunk key of a file at `relative` (below the cache folder, '/'-separated) when it is
    chunk audio in fishflow's layout; "" for one of fishflow's temporary files; else None."""
    if match := _CHUNK_FILE.fullmatch(relative):
        return match.group(2)
    return "" if _TEMP_FILE.fullmatch(relative) else None


def is_marked(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, MARKER))


def mark(directory: str) -> None:
    with open(os.path.join(directory, MARKER), "w", encoding="utf-8") as fh:
        fh.write(_MARKER_TEXT)


def open_chunk_folder(directory: str) -> None:
    """Make a chunk cache folder. One fishflow creates, or finds empty, gets the marker; a
    folder that already holds files without it (a cache of an earlier version, or a folder that
    is not a cache) is used as it is, and left for ``fishflow gc --adopt`` to judge."""
    created = False
    with contextlib.suppress(FileExistsError):
        os.makedirs(directory)
        created = True
    if created or (not is_marked(directory) and not os.listdir(directory)):
        mark(directory)
