"""Check the package's floors: every import of rlhfkit code goes down, and nothing loops.

    python scripts/layers.py            # the floors, the imports between them, any violation

Each folder of ``src/rlhfkit`` (and each top-level module) sits on the floor given in FLOORS.
An import, at the top of a module or inside a function, may go to a lower floor or stay in its
own folder; one that goes sideways (another folder of the same floor) or up is a violation.
The script also prints how many rlhfkit imports sit inside functions. Exit status 1 on any
violation or cycle.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "src" / "rlhfkit"

FLOORS = {
    0: ["config"],
    1: ["__init__", "options", "losses", "segments", "testing", "data", "stats", "memory"],
    2: ["rewards", "evaluate", "engines"],
    3: ["models", "feedback"],
    4: ["rollout", "tasks", "control"],
    5: ["train"],
    6: ["pipeline", "experiments", "cli"],
}
FLOOR_OF = {unit: floor for floor, units in FLOORS.items() for unit in units}


def unit_of(module: str) -> str:
    """``rlhfkit.train.pg`` -> ``train``; ``rlhfkit.losses`` -> ``losses``; ``rlhfkit`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported rlhfkit module, line, inside a function) for every import in a file."""
    tree = ast.parse(path.read_text())
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            inside.update(id(sub) for sub in ast.walk(node) if sub is not node)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                targets = [".".join(base + ([node.module] if node.module else []))]
            else:
                targets = [node.module or ""]
            if targets == ["rlhfkit"]:  # from rlhfkit import config: the module rlhfkit.config
                targets = [f"rlhfkit.{a.name}" if (ROOT / f"{a.name}.py").exists()
                           or (ROOT / a.name).is_dir() else "rlhfkit" for a in node.names]
        else:
            continue
        for target in targets:
            if target == "rlhfkit" or target.startswith("rlhfkit."):
                out.append((target, node.lineno, id(node) in inside))
    return out


def check() -> tuple[list[str], dict[tuple[str, str], list[str]], int]:
    """(violations, unit -> unit arrows with where they come from, imports inside functions)."""
    violations, arrows, hidden = [], defaultdict(list), 0
    for path in sorted(ROOT.rglob("*.py")):
        source = unit_of(module_name(path))
        if source not in FLOOR_OF:
            violations.append(f"{path.relative_to(ROOT.parent)}: not on any floor (add it to FLOORS)")
            continue
        for target, line, in_function in imports(path):
            hidden += in_function
            dest = unit_of(target)
            if dest == source:
                continue
            where = f"{path.relative_to(ROOT.parent)}:{line}"
            arrows[(source, dest)].append(where)
            if FLOOR_OF.get(dest, 99) >= FLOOR_OF[source]:
                violations.append(f"{where}: {source} (floor {FLOOR_OF[source]}) imports {target} "
                                  f"(floor {FLOOR_OF.get(dest, '?')})")
    return violations, arrows, hidden


def main() -> int:
    violations, arrows, hidden = check()
    for floor in sorted(FLOORS, reverse=True):
        for unit in FLOORS[floor]:
            below = sorted({d for (s, d) in arrows if s == unit})
            print(f"floor {floor}  {unit:12s} -> {', '.join(below) or '-'}")
    print(f"{hidden} rlhfkit imports inside functions")
    for v in violations:
        print("VIOLATION", v)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
