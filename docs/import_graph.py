"""The package's module graph for docs/architecture.md: one box per module, one arrow per import.

Reads every module of `herlev_fa` and `cli` (as `herlev_cli`) with `ast` (nothing is imported),
and prints a Mermaid flowchart whose arrows go from a module to each package module it imports,
at module level or inside a function. `tests/test_docs.py` checks that architecture.md holds
exactly this graph.

    python docs/import_graph.py            # print the Mermaid block
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"herlev_fa": ROOT / "herlev_fa", "herlev_cli": ROOT / "cli"}


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the two packages (package __init__ files included)."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def edges() -> list[tuple[str, str]]:
    """(importer, imported) for every import of one package module by another, sorted."""
    known = modules()
    out = set()
    for name, path in known.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import mod` imports a module when `pkg.mod` is one
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                           for a in node.names]
            for target in targets:
                while target and target not in known:  # `import herlev_fa.x.y` -> the deepest known module
                    target = target.rpartition(".")[0]
                if target and target != name and target not in ("herlev_fa", "herlev_cli"):
                    out.add((name, target))
    return sorted(out)


def mermaid() -> str:
    def box(name: str) -> str:
        return name.replace("herlev_fa.", "").replace("herlev_cli", "cli").replace(".", "/")

    lines = ["```mermaid", "flowchart LR"]
    lines += [f"  {box(a).replace('/', '_')}[{box(a)}] --> {box(b).replace('/', '_')}[{box(b)}]" for a, b in edges()]
    lines.append("```")
    return "\n".join(lines)


if __name__ == "__main__":
    print(mermaid())
