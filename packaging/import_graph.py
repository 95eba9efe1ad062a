#!/usr/bin/env python3
"""Print the import graph of cesard/ from the source (every import, TYPE_CHECKING and
function-level ones included) and check it: no cycle, and nothing but cesard.main
imports cesard.supervisor.

    python3 packaging/import_graph.py            # module: what it imports, then the checks
    python3 packaging/import_graph.py --dot      # Graphviz
    python3 packaging/import_graph.py --check    # only the checks (exit 1 if one fails)
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "cesard"


def module_name(path: Path, pkg: Path) -> str:
    parts = path.relative_to(pkg.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def graph(pkg: Path = PKG) -> dict[str, set[str]]:
    """cesard module → the cesard modules it imports (subpackages included)."""
    files = sorted(pkg.rglob("*.py"))
    mods = {module_name(p, pkg) for p in files} - {"cesard"}
    out: dict[str, set[str]] = {}
    for p in files:
        name = module_name(p, pkg)
        if name == "cesard":
            continue
        deps: set[str] = set()
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom) and node.module:
                if node.module in mods:
                    deps.add(node.module)
                deps |= {f"{node.module}.{a.name}" for a in node.names} & mods
        out[name] = deps - {name}
    return out


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(10000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def problems(g: dict[str, set[str]]) -> list[str]:
    out = [f"import cycle: {' -> '.join(c)}" for c in cycles(g)]
    out += [f"{m} imports cesard.supervisor (only cesard.main may)"
            for m, deps in sorted(g.items())
            if "cesard.supervisor" in deps and m != "cesard.main"]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dot", action="store_true")
    p.add_argument("--check", action="store_true")
    a = p.parse_args()
    g = graph()
    if a.dot:
        print("digraph cesard {")
        for m, deps in sorted(g.items()):
            for d in sorted(deps):
                print(f'  "{m[7:]}" -> "{d[7:]}";')
        print("}")
        return 0
    if not a.check:
        for m, deps in sorted(g.items()):
            print(f"{m[7:]}: {' '.join(sorted(d[7:] for d in deps)) or '-'}")
        print()
    bad = problems(g)
    for line in bad:
        print(line)
    if not bad:
        print(f"{len(g)} modules: no import cycle; only main imports supervisor")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
