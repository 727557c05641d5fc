"""The package's import graph, every import counted (module level and inside functions, TYPE_CHECKING blocks
excepted), and its cycles.

    python tools/import_graph.py            # print each module's imports and any cycle; exit 1 on a cycle
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "perfmodel"


def _module(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def graph() -> dict[str, set[str]]:
    mods = {_module(p): p for p in PKG.rglob("*.py")}
    out: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text())
        skip = set()
        for node in ast.walk(tree):  # `if TYPE_CHECKING:` blocks are annotations, not imports at run time
            if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
                skip.update(id(n) for n in ast.walk(node))
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(tree):
            if id(node) in skip or not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            base = package.split(".")
            base = base[: len(base) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            # `from . import x` imports the submodule x (the package itself is already loaded)
            wanted = [target + "." + a.name for a in node.names] if not node.module else [target]
            for t in wanted:
                if t in out and t != mod:
                    out[mod].add(t)
    return out


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), the package roots left out (`perfmodel` and
    `perfmodel.calibration` re-export their parts, which import nothing back from them)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    roots = {"perfmodel"}

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v] - roots:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(g):
        if v not in index and v not in roots:
            visit(v)
    return out


def main() -> int:
    g = graph()
    for m in sorted(g):
        print(f"{m}: {', '.join(sorted(x.removeprefix('perfmodel.') for x in g[m])) or '-'}")
    found = cycles(g)
    for c in found:
        print("cycle:", " <-> ".join(c))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
