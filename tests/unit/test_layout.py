"""What the layout promises (README, "Layout"), read off the code's imports: the core has no
Prefect in it, and nothing but the command line and the demo uses the emulator."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "fishflow"
# Prefect's side: the flows and tasks (linked into the package), and the command line, which
# starts flows and talks to Prefect's API.
PREFECT_SIDE = {"flows", "tasks", "cli"}
EMULATOR_USERS = {"cli", "demo.py", "testing"}


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def core_files(excluded: set[str]) -> list[Path]:
    return [
        p for p in sorted(PACKAGE.rglob("*.py")) if p.relative_to(PACKAGE).parts[0] not in excluded
    ]


def test_the_core_imports_no_prefect() -> None:
    files = core_files(PREFECT_SIDE)
    assert len(files) > 40  # the walk found the core
    found = {
        str(p.relative_to(PACKAGE)): sorted(n for n in imports(p) if n.split(".")[0] == "prefect")
        for p in files
    }
    assert {f: n for f, n in found.items() if n} == {}


def test_only_the_command_line_and_the_demo_use_the_emulator() -> None:
    found = {
        str(p.relative_to(PACKAGE))
        for p in core_files(EMULATOR_USERS)
        if any(n.startswith("fishflow.testing") for n in imports(p))
    }
    assert found == set()


def test_the_checks_see_an_import_where_there_is_one(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def f():\n    from prefect.states import Failed\n    import fishflow.testing\n"
    )
    assert imports(sample) == {"prefect.states", "fishflow.testing"}
