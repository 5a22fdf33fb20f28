"""Where the ops code lives: kernels/ imports nothing from fgp_fast; fgp_fast.ops has no import cycle."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPS = ROOT / "fgp_fast" / "ops"


def _imports(path: Path, package: str) -> set[str]:
    """Absolute names of the modules ``path`` imports anywhere (relative ones resolved in ``package``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            names.add(mod)
            names |= {f"{mod}.{a.name}" for a in node.names}
    return names


def test_kernels_import_nothing_from_fgp_fast():
    files = sorted((ROOT / "kernels").glob("*.py"))
    assert files
    for path in files:
        # kernels/ is installed as fgp_fast.kernels, so a relative import above it is fgp_fast too.
        bad = {m for m in _imports(path, "fgp_fast.kernels") if m.split(".")[0] == "fgp_fast"
               and not m.startswith("fgp_fast.kernels")}
        assert not bad, f"{path.name} imports {sorted(bad)}"


def _ops_edges(path: Path, mods: set[str]) -> set[str]:
    """The fgp_fast.ops modules ``path`` imports at module level (``__init__`` for the package
    itself; ``from . import x`` of a submodule x is an edge to x only)."""
    edges = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "fgp_fast.ops" if node.level == 1 else ("fgp_fast" if node.level == 2 else "")
            mod = ".".join(x for x in (base, node.module or "") if x) if node.level else node.module
            if mod == "fgp_fast.ops":
                targets = [f"{mod}.{a.name}" if a.name in mods else mod for a in node.names]
            else:
                targets = [mod]
        else:
            continue
        for t in targets:
            parts = t.split(".")
            if parts[:2] == ["fgp_fast", "ops"]:
                edges.add(parts[2] if len(parts) > 2 and parts[2] in mods else "__init__")
    return edges


def test_ops_modules_form_no_import_cycle():
    paths = {p.stem: p for p in OPS.glob("*.py")}
    graph = {n: _ops_edges(p, set(paths)) - {n} for n, p in paths.items()}
    state = {}

    def visit(n, stack):
        state[n] = "open"
        for d in sorted(graph[n]):
            assert state.get(d) != "open", f"import cycle: {' -> '.join(stack + [n, d])}"
            if d not in state:
                visit(d, stack + [n])
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n, [])
    assert "native" not in graph["__init__"] and "triton" not in graph["__init__"]   # loaded lazily


def test_each_ops_module_imports_on_its_own():
    for path in sorted(OPS.glob("*.py")):
        mod = "fgp_fast.ops" if path.stem == "__init__" else f"fgp_fast.ops.{path.stem}"
        res = subprocess.run([sys.executable, "-c", f"import {mod}"], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, f"import {mod}: {res.stderr[-2000:]}"
