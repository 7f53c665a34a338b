"""tests/ mirrors the package: one folder per csra_posthoc subpackage, and test modules share code
only through tests/helpers.py (and conftest fixtures), never by importing each other."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
PACKAGE = TESTS.parent / "csra_posthoc"
SHARED = {"tests.helpers", "tests.dist_scenarios"}  # modules a test may import; neither holds tests


def test_every_test_folder_is_a_subpackage_of_csra_posthoc() -> None:
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert folders <= subpackages, sorted(folders - subpackages)
    assert all(
        (TESTS / name / "__init__.py").is_file() for name in folders
    )  # unique module names: tests.<stage>.test_x


def imported_test_modules(path: Path) -> list[str]:
    """The modules under tests/ that ``path`` imports."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("tests.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "tests":
            found += [f"tests.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("tests."):
            found.append(node.module)
    return found


def test_test_modules_import_only_the_shared_helpers() -> None:
    offenders = {
        str(p.relative_to(TESTS)): sorted(set(imported_test_modules(p)) - SHARED) for p in sorted(TESTS.rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}
