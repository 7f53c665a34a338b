"""The package's import structure (benchmarks/import_graph.py): no import cycle, counting
function-local and ``TYPE_CHECKING`` imports; a short top level; function-local imports of the
package's own modules only in the CLI (so ``--help`` stays fast) or of the heavy modules below."""

from __future__ import annotations

import subprocess
import sys

import pytest

from benchmarks.import_graph import PACKAGE, graph, imports, loaded_with, main, top_level_modules

ROOT = PACKAGE.parent

# Function-local imports allowed outside cli/: heavy modules a light one imports lazily, each with why.
LAZY_ALLOWED = {
    # The dataset registry is read by the CLI at import (--dataset choices, --help); each loader
    # imports torch, PIL or pycocotools and is imported when its dataset is loaded.
    "csra_posthoc.data.voc",
    "csra_posthoc.data.coco",
    "csra_posthoc.data.wider",
    "csra_posthoc.data.imagenet",
    "csra_posthoc.data.folder",
    "csra_posthoc.data.csv_labels",
    # data/__init__ (imported with the registry) subsamples with torch only when max_images is given.
    "csra_posthoc.data.subset",
    # numba (about 0.4 s) is imported when a sweep scores size / clutter splits, not by every sweep.
    "csra_posthoc.evaluation.split_kernel",
}
# Of those, the ones kept off a heavy module's common path rather than off the CLI's import: their
# importer may be heavy itself.
OFF_THE_COMMON_PATH = {"csra_posthoc.evaluation.split_kernel"}


def test_no_import_cycles() -> None:
    from benchmarks.import_graph import cycles

    assert cycles(graph()) == []


def test_cycles_are_found_through_function_local_and_type_checking_imports(tmp_path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")
    (pkg / "c.py").write_text("from .b import f\n")
    from benchmarks.import_graph import cycles

    assert cycles(graph(pkg)) == [["pkg.a", "pkg.b"]]
    kinds = {(i.importer, i.target): (i.local, i.type_only) for i in imports(pkg)}
    assert kinds == {
        ("pkg.a", "pkg.b"): (False, True),
        ("pkg.b", "pkg.a"): (True, False),
        ("pkg.c", "pkg.b"): (False, False),
    }
    assert main([str(pkg)]) == 1


def test_a_package_init_run_on_import_closes_a_cycle(tmp_path) -> None:
    """Importing pkg.models.base first runs pkg/models/__init__, which imports the factory: an edge too."""
    pkg = tmp_path / "pkg"
    (pkg / "models").mkdir(parents=True)
    (pkg / "heads").mkdir()
    for init in (pkg, pkg / "heads"):
        (init / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("from .factory import load\n")
    (pkg / "models" / "base.py").write_text("class Base: ...\n")
    (pkg / "models" / "factory.py").write_text("from .base import Base\nfrom ..heads.head_file import read\n")
    (pkg / "heads" / "head_file.py").write_text("from ..models.base import Base\n")
    from benchmarks.import_graph import cycles

    assert cycles(graph(pkg)) == [["pkg.heads.head_file", "pkg.models", "pkg.models.factory"]]


@pytest.mark.slow
def test_head_file_imports_first() -> None:
    """The cycle above, for real: heads.head_file imported before anything else (a README block did) failed
    with 'partially initialized module' while it imported models.base, whose package imports the factory."""
    run = subprocess.run(
        [sys.executable, "-c", "import csra_posthoc.heads.head_file"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr


def test_at_most_twelve_modules_at_the_top_level() -> None:
    found = top_level_modules()
    assert found == sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(found) <= 12, found


def test_function_local_imports_only_in_the_cli_or_of_heavy_modules() -> None:
    hidden = [
        f"{i.importer}:{i.line} -> {i.target}"
        for i in imports()
        if i.local and not i.importer.startswith("csra_posthoc.cli") and i.target not in LAZY_ALLOWED
    ]
    assert hidden == []


def test_lazy_allowed_modules_are_heavy_and_their_importers_light() -> None:
    """Each allow-list entry earns its place: importing the CLI does not load it, and the module is used lazily."""
    cli_loads = loaded_with("csra_posthoc.cli.app")
    assert not LAZY_ALLOWED & cli_loads
    lazily_imported = {i.target for i in imports() if i.local and not i.importer.startswith("csra_posthoc.cli")}
    assert lazily_imported == LAZY_ALLOWED
    light = LAZY_ALLOWED - OFF_THE_COMMON_PATH
    assert {i.importer for i in imports() if i.local and i.target in light} <= cli_loads


def test_every_public_name_resolves() -> None:
    """``cp.<name>`` for each name of ``__all__`` (the package move left ClassStatistics pointing at a missing module)."""
    import importlib

    cp = importlib.import_module("csra_posthoc")
    missing = []
    for name in cp.__all__:
        try:
            getattr(cp, name)
        except (AttributeError, ImportError) as exc:
            missing.append(f"{name}: {exc}")
    assert missing == []
