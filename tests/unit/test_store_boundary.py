"""Only fishflow/storage.py knows what is behind a location: everything else asks a ``Store``
(``remote``, ``open``, ``read_parquet``) or storage's URI functions (``is_remote_uri``,
``read_uri_bytes``, ``UriReader``). A scheme spelled anywhere else is a check that breaks the
protocol, as ``root.startswith("s3://")`` once did in eight modules."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import fishflow

PACKAGE = Path(fishflow.__file__).resolve().parent
REPO = PACKAGE.parent
STORAGE = PACKAGE / "storage.py"
# A string that begins with a storage scheme, whole ("s3") or as a prefix ("s3://", f"s3://{b}"):
# prose that mentions one ("output folder or s3://bucket/prefix") is not a check.
SCHEME = re.compile(r"s3$|(s3|s3a|gs|az|abfss?|file):")


def scheme_literals(source: str) -> list[tuple[int, str]]:
    """(line, text) of each string literal in `source` that starts with a storage scheme."""
    return [
        (node.lineno, node.value)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and SCHEME.match(node.value)
    ]


def test_the_check_finds_scheme_tests_and_built_uris_but_not_prose() -> None:
    source = (
        "def f(uri, b, k):\n"
        '    """Read a path or an s3:// URI."""\n'
        '    if uri.startswith("s3://"):\n'
        '        return f"s3://{b}/{k}"\n'
        '    return urlparse(uri).scheme == "s3" or uri.startswith(("file:", "gs://"))\n'
        'METAVAR, NAME = "FILE", "s3-bucket"\n'
    )
    assert [line for line, _ in scheme_literals(source)] == [3, 4, 5, 5, 5]


def test_no_module_but_storage_checks_a_scheme() -> None:
    modules = sorted(
        {
            p.resolve()
            for folder in (PACKAGE, REPO / "tasks", REPO / "flows")
            for p in folder.rglob("*.py")
        }
    )
    assert len(modules) > 40 and STORAGE in modules  # the whole package, its flows and tasks
    found = {
        f"{path.relative_to(REPO)}:{line}: {text!r}"
        for path in modules
        if path != STORAGE
        for line, text in scheme_literals(path.read_text(encoding="utf-8"))
    }
    assert not found, "ask fishflow.storage instead:\n" + "\n".join(sorted(found))
