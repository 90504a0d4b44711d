"""The package is layered: every import (function-level ones included) points down this list,
and no module imports its way back to itself. A new subpackage must be placed in LAYERS."""

from __future__ import annotations

import ast
from pathlib import Path

import segblocks

ROOT = Path(segblocks.__file__).resolve().parent

#: lowest first; a subpackage may import only those before it
LAYERS = [
    "version",
    "errors",
    "data",
    "blocks",
    "policies",
    "models",
    "deploy",
    "measuring",
    "evaluation",
    "training",
    "demo",
    "cli",
    "__main__",
]


def _module(path: Path) -> str:
    parts = ["segblocks", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """module -> the segblocks modules / packages it imports."""
    out = {}
    for path in ROOT.rglob("*.py"):
        mod = _module(path)
        pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        targets = set()
        tree = ast.parse(path.read_text())
        type_only = {  # ``if TYPE_CHECKING:`` imports are annotations, not dependencies
            id(n)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and ast.unparse(block.test).endswith("TYPE_CHECKING")
            for n in ast.walk(block)
        }
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    name = ".".join(base + ([node.module] if node.module else []))
                    # ``from . import x`` / ``from .pkg import mod``: x may be a module
                    targets.update(f"{name}.{a.name}" for a in node.names)
                else:
                    name = node.module or ""
                targets.add(name)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
        out[mod] = {t for t in targets if t.split(".")[0] == "segblocks"}
    return out


def _layer(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the top package (the facade)


def test_every_import_points_down_the_layers():
    upward = []
    for mod, targets in _imports().items():
        src = _layer(mod)
        if src is None:
            continue  # segblocks/__init__.py may gather anything
        for t in targets:
            dst = _layer(t)
            if dst is None:
                upward.append(f"{mod} imports the top package {t}")
            elif dst != src and (src not in LAYERS or dst not in LAYERS):
                upward.append(f"{mod} imports {t}: place {src} and {dst} in LAYERS")
            elif dst != src and LAYERS.index(dst) > LAYERS.index(src):
                upward.append(f"{mod} ({src}) imports {t} ({dst})")
    assert not upward, "imports against the layer order:\n" + "\n".join(sorted(upward))


def test_no_import_cycle_between_modules():
    graph = _imports()
    modules = set(graph)
    edges = {m: {t for t in ts if t in modules and t != m} for m, ts in graph.items()}
    # a package's __init__ re-exporting its modules is not a cycle of the code's dependencies
    for m in edges:
        edges[m] = {t for t in edges[m] if not (m.startswith(t + ".") and t in modules)}
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join([*stack[stack.index(t) :], t]))
            elif t not in state:
                visit(t, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def _private_imports(files) -> list[str]:
    """``from module import _name``: a module reaching into another's private names."""
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                found += [
                    f"{path}:{node.lineno} imports {a.name} from {'.' * node.level}{node.module}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    return found


def test_no_module_imports_private_names():
    """The package and the benchmarks import only public names of each other's modules (a
    helper two modules share is public where it is defined)."""
    files = [*ROOT.rglob("*.py"), *(ROOT.parent / "benchmarks").glob("*.py")]
    found = _private_imports(files)
    assert not found, "private names imported:\n" + "\n".join(found)
