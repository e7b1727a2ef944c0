#!/usr/bin/env python3
"""Fail on import cycles inside a package, counting the lazy imports inside functions.

Usage: scripts/check_imports.py [PACKAGE_DIR]   (default: the repository's heron/)

Every ``.py`` file under PACKAGE_DIR is a module (``a/b/__init__.py`` is ``a.b``). An edge
A -> B is any import of B in A's source, at any depth: module level, inside functions and
classes, in ``try`` blocks, and ``importlib.import_module("...")`` with a literal name.
Imports are resolved as follows:

- ``import a.b.c`` imports ``a.b.c``; ``from a.b import c`` imports ``a.b.c`` when that is a
  module, else the package ``a.b`` (its ``__init__``); relative imports resolve against A's
  package. A name that matches no file goes to its longest prefix that does.
- The parent packages that Python initialises on the way (``a`` and ``a.b`` for ``a.b.c``)
  are not edges: every module of the package would otherwise sit in a cycle with a root
  ``__init__`` that re-exports anything, and those parents are always initialised first.
- Imports under ``if TYPE_CHECKING:`` are left out: they never run, and annotations under
  ``from __future__ import annotations`` are never evaluated at import time.
- A module importing itself is not a cycle.

Each strongly connected component of more than one module is a cycle. The script prints each
one with a shortest loop through it and where every import of that loop is (``lazy`` marks an
import inside a function), and exits 1 if there is any.

Dependencies also point down: the modules below the front doors (``LOWER``: the engine core,
its process loops, the scheduler, the KV cache, the runner, attention, kernels, layers, models
and the loader) must not reach the store, the server or the CLI (``FRONT``), directly or
through anything they import. A model name is resolved to files at the front doors; what
runs below them takes a resolved path. Each such reach is printed with its import chain, and
also exits 1.
"""

from __future__ import annotations

import ast
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Site:
    """Where module ``source`` imports module ``target``."""

    source: str
    target: str
    path: Path
    line: int
    lazy: bool


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under ``package_dir``."""
    root = package_dir.parent
    modules: dict[str, Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if "__pycache__" in parts:
            continue
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


class _Collector(ast.NodeVisitor):
    """Collects (dotted name, line, lazy) for every import a module's source makes."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.depth = 0  # function nesting
        self.found: list[tuple[str, str | None, int, bool]] = []  # (base, member, line, lazy)
        self.dynamic = False  # import_module with a computed name
        self.strings: list[tuple[str, int]] = []

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((alias.name, None, node.lineno, self.depth > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parts = self.package.split(".") if self.package else []
            if node.level - 1 > len(parts):
                return  # beyond the top of the tree: Python would refuse it
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join([*parts, base] if base else parts)
        for alias in node.names:
            member = None if alias.name == "*" else alias.name
            self.found.append((base, member, node.lineno, self.depth > 0))

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if (
            name == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and not node.args[0].value.startswith(".")
        ):
            self.found.append((node.args[0].value, None, node.lineno, self.depth > 0))
        elif name == "import_module":
            self.dynamic = True
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str):
            self.strings.append((node.value, node.lineno))


def import_sites(modules: dict[str, Path]) -> list[Site]:
    """Every import from one module of the tree to another (self-imports left out), one per
    statement and target."""
    sites: dict[tuple[str, str, int], Site] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        collector = _Collector(module, path.name == "__init__.py")
        collector.visit(tree)
        found = collector.found
        if collector.dynamic:
            found += [(text, None, line, True) for text, line in collector.strings]
        for base, member, line, lazy in found:
            target = None
            if member is not None and f"{base}.{member}" in modules:
                target = f"{base}.{member}"
            elif base in modules:
                target = base
            if target is not None and target != module:
                sites.setdefault((module, target, line), Site(module, target, path, line, lazy))
    return list(sites.values())


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components in no particular order, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def shortest_loop(start: str, graph: dict[str, set[str]], members: set[str]) -> list[str]:
    """The shortest path start -> ... -> start inside ``members`` (as a list of modules, the
    start repeated at the end)."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node] & members):
            if child == start:
                path = [start]
                while node != start:
                    path.append(node)
                    node = previous[node]
                return [start, *reversed(path[1:]), start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    return [start]


def find_cycles(package_dir: Path) -> tuple[int, list[tuple[list[str], list[Site]]]]:
    """(number of modules, [(component, the import sites of one shortest loop through it)])."""
    modules = module_names(package_dir)
    sites = import_sites(modules)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for site in sites:
        graph[site.source].add(site.target)
    cycles = []
    for component in sorted(strongly_connected(graph)):
        if len(component) < 2:
            continue
        loop = shortest_loop(component[0], graph, set(component))
        loop_sites = [
            s
            for a, b in zip(loop, loop[1:], strict=False)
            for s in sites
            if s.source == a and s.target == b
        ]
        cycles.append((component, loop_sites))
    return len(modules), cycles


# Relative to the package checked (``PACKAGE.engine.core`` ...), prefixes of module names.
LOWER = (
    "engine.core",
    "engine.embedding_core",
    "engine.protocol",
    "scheduler",
    "kvcache",
    "runner",
    "attention",
    "kernels",
    "layers",
    "models",
    "loader",
)
FRONT = ("store", "server", "cli")


def _under(module: str, package: str, prefixes: tuple[str, ...]) -> bool:
    return any(
        module == f"{package}.{p}" or module.startswith(f"{package}.{p}.") for p in prefixes
    )


def layer_violations(package_dir: Path) -> list[list[str]]:
    """Import chains from a ``LOWER`` module to a ``FRONT`` one (the shortest per pair of
    lower module and first front module reached)."""
    package = package_dir.name
    modules = module_names(package_dir)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for site in import_sites(modules):
        graph[site.source].add(site.target)
    chains = []
    for start in sorted(m for m in modules if _under(m, package, LOWER)):
        parent: dict[str, str | None] = {start: None}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            if _under(node, package, FRONT):
                chain = [node]
                while (prev := parent[chain[-1]]) is not None:
                    chain.append(prev)
                chains.append(chain[::-1])
                continue  # do not walk on through the front module
            for nxt in sorted(graph[node]):
                if nxt not in parent:
                    parent[nxt] = node
                    queue.append(nxt)
    return chains


def main(argv: list[str]) -> int:
    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    package_dir = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent / "heron"
    if not (package_dir / "__init__.py").is_file():
        print(f"{package_dir} is not a package (no __init__.py)", file=sys.stderr)
        return 2
    num_modules, cycles = find_cycles(package_dir)
    root = package_dir.parent
    for component, loop_sites in cycles:
        print(f"import cycle among {len(component)} modules: {', '.join(component)}")
        for s in loop_sites:
            where = f"{s.path.relative_to(root)}:{s.line}"
            print(f"  {s.source} -> {s.target}  ({where}{', lazy' if s.lazy else ''})")
    violations = layer_violations(package_dir)
    for chain in violations:
        print(f"{chain[0]} reaches {chain[-1]}: {' -> '.join(chain)}")
    if cycles or violations:
        print(
            f"{len(cycles)} import cycle(s), {len(violations)} upward import(s) in "
            f"{package_dir.name}",
            file=sys.stderr,
        )
        return 1
    print(
        f"no import cycles among {num_modules} modules of {package_dir.name}, "
        "and no upward imports"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
