"""Import graph of csra_posthoc: modules, edges, cycles, and which imports sit inside functions.

Every import counts: module level, inside ``if TYPE_CHECKING:``, and inside functions, so a cycle
hidden behind a function-local import is still a cycle. ``python -m benchmarks.import_graph``
prints the figures (one per line, as the benchmark harness reads them) and each cycle, and exits 1
if there is one; tests/test_structure.py asserts on the same functions.
"""

from __future__ import annotations

import argparse
import ast
import functools
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "csra_posthoc"


@dataclass(frozen=True)
class Import:
    """One import statement's edge: ``importer`` imports ``target`` at ``line``; ``local`` when the
    statement sits inside a function, ``type_only`` when under ``if TYPE_CHECKING:`` (never run)."""

    importer: str
    target: str
    line: int
    local: bool
    type_only: bool = False


def module_name(root: Path, path: Path) -> str:
    """Dotted name of ``path`` (a .py file under ``root``); a package's ``__init__`` is the package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _import_nodes(tree: ast.Module) -> list[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
    """Every import statement with (inside a function or lambda, under ``if TYPE_CHECKING:``), in one pass."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool, bool]] = []

    def visit(node: ast.AST, local: bool, typing_only: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append((node, local, typing_only))
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            local = True
        if isinstance(node, ast.If) and ast.unparse(node.test) in {"TYPE_CHECKING", "typing.TYPE_CHECKING"}:
            for stmt in node.body:
                visit(stmt, local, True)
            for stmt in node.orelse:
                visit(stmt, local, typing_only)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, local, typing_only)

    visit(tree, False, False)
    return found


def imports(root: Path = PACKAGE) -> list[Import]:
    """Every import of one of the package's modules by another, resolved to the deepest module that exists."""
    return list(_imports(root.resolve()))


@functools.cache
def _imports(root: Path) -> tuple[Import, ...]:
    """:func:`imports`, parsed once per folder and process (the checks below ask several times)."""
    mods = {module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    found: list[Import] = []
    for name, path in mods.items():
        pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node, local, typing_only in _import_nodes(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = pkg.split(".")
                    base = base[: len(base) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in mods]
                targets = subs if len(subs) == len(node.names) else [mod, *subs]
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.append(Import(name, target, node.lineno, local, typing_only))
                    # importing a.b.c first runs a.b's __init__ (unless the importer is inside a.b:
                    # then it has run already), and what that __init__ imports can close a cycle
                    parent = target.rpartition(".")[0]
                    while parent and parent in mods and not (name == parent or name.startswith(parent + ".")):
                        found.append(Import(name, parent, node.lineno, local, typing_only))
                        parent = parent.rpartition(".")[0]
    return tuple(found)


def graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports (all imports, wherever they sit)."""
    g: dict[str, set[str]] = {module_name(root, p): set() for p in root.rglob("*.py")}
    for imp in imports(root):
        g[imp.importer].add(imp.target)
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10000))
    try:
        for v in sorted(g):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return out


def loaded_with(module: str, root: Path = PACKAGE) -> set[str]:
    """The package modules importing ``module`` runs: its module-level imports and its packages'
    ``__init__``, transitively (function-local and ``TYPE_CHECKING`` imports are not run on import)."""
    runs: dict[str, set[str]] = {}
    for imp in imports(root):
        if not imp.local and not imp.type_only:
            runs.setdefault(imp.importer, set()).add(imp.target)
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(runs.get(name, ()))
            if "." in name:
                todo.append(name.rpartition(".")[0])  # the package's __init__ runs first
    return seen


def top_level_modules(root: Path = PACKAGE) -> list[str]:
    """The .py files directly in the package folder (``__init__`` and ``__main__`` included)."""
    return sorted(p.name for p in root.glob("*.py"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.import_graph", description=__doc__.splitlines()[0])
    p.add_argument("root", nargs="?", type=Path, default=PACKAGE, help="package folder (default: csra_posthoc)")
    p.add_argument("--quick", action="store_true", help="accepted for the benchmark harness; the count is the same")
    args = p.parse_args(argv)
    found = imports(args.root)
    g = graph(args.root)
    groups = cycles(g)
    print(f"modules: {len(g)}")
    print(f"modules at the top level: {len(top_level_modules(args.root))}")
    print(f"import edges: {sum(map(len, g.values()))}")
    print(f"function-local imports: {sum(imp.local for imp in found)}")
    print(f"import cycles: {len(groups)}")
    for group in groups:
        print("  cycle: " + " <-> ".join(group))
    return 1 if groups else 0


if __name__ == "__main__":
    sys.exit(main())
