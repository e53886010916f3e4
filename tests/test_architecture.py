"""The house rules of docs/ARCHITECTURE.md, read from the code: floors, no import circles, no torch in the dashboard.

Every `import` and `from ... import` of every module in `stability/`, `probes/` and `dashboard/` counts, wherever
it stands (top level, inside a function, under `if TYPE_CHECKING`): an import hidden in a function still ties the
two modules together, it only delays the moment the circle bites.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("stability", "probes", "dashboard")

# Floors from the ground up; each floor holds parts (a name and the module prefixes it owns; the longest prefix
# decides; "stability" itself owns the package's __init__ only, so a new module of it is on no floor until it is
# placed here). A module may import a lower floor, or its own part; never a higher floor, never another part of its
# own floor (parts on one floor are independent of each other). docs/ARCHITECTURE.md draws the same table.
FLOORS: list[dict[str, tuple[str, ...]]] = [
    {"names": ("stability", "stability.metrics", "stability.errors", "stability.lazy")},
    {"probes": ("probes",)},
    {"store": ("stability.store",)},
    {"detector": ("stability.detector",), "reference lab": ("stability.reference",)},
    {"policies": ("stability.policies",), "alerting": ("stability.alerting",),
     "distributed": ("stability.distributed",)},
    {"pipeline": ("stability.watch", "stability.guard", "stability.loop_hooks", "stability.loop_state")},
    {"reference runs": ("stability.reference.train", "stability.reference.session"),
     "integrations": ("stability.integrations",)},
    {"evaluation": ("stability.evaluation",), "report": ("stability.report", "stability.study")},
    {"dashboard": ("dashboard",)},
    {"bench": ("stability.bench",)},
    {"commands": ("stability.commands",)},
    {"cli": ("stability.cli", "stability.__main__")},
]


def modules(root: Path, packages) -> dict[str, Path]:
    out = {}
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            rel = f.relative_to(root).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = f
    return out


def import_graph(mods: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {module of ours it imports anywhere in its body: line of the first such import}."""

    def resolve(name: str) -> str | None:  # the module of ours `name` (a module or its attribute) lands in
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in mods:
                return ".".join(parts[:i])
        return None

    graph = {}
    for module, path in mods.items():
        out: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [resolve(a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, one level up per extra dot
                    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                    package = package[: len(package) - node.level + 1]
                    base = ".".join(package + ([base] if base else []))
                targets = [resolve(f"{base}.{a.name}") or resolve(base) for a in node.names]
            else:
                continue
            for t in targets:
                if t is not None and t != module:
                    out.setdefault(t, node.lineno)
        graph[module] = out
    return graph


MODULES = modules(ROOT, PACKAGES)
GRAPH = import_graph(MODULES)


def place(module: str) -> tuple[int, str]:
    """(floor, part) of a module: the part owning the longest prefix of its name."""
    best = None
    for floor, parts in enumerate(FLOORS):
        for part, prefixes in parts.items():
            for p in prefixes:
                owns = module == p or (p != "stability" and module.startswith(p + "."))
                if owns and (best is None or len(p) > best[0]):
                    best = (len(p), floor, part)
    assert best is not None, f"{module} is on no floor: add it to FLOORS and to docs/ARCHITECTURE.md"
    return best[1], best[2]


def test_every_module_has_a_floor():
    for m in MODULES:
        place(m)


def test_no_module_imports_a_higher_floor_or_a_neighbour_part():
    bad = []
    for m, targets in GRAPH.items():
        floor, part = place(m)
        for t, line in targets.items():
            t_floor, t_part = place(t)
            if t_floor > floor or (t_floor == floor and t_part != part):
                bad.append(f"{MODULES[m].relative_to(ROOT)}:{line}: {m} ({part}, floor {floor}) imports "
                           f"{t} ({t_part}, floor {t_floor})")
    assert not bad, "\n".join(bad)


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    found = cycles(GRAPH)
    assert not found, "\n".join(" <-> ".join(c) for c in found)


def test_the_walker_sees_a_circle_closed_inside_a_function(tmp_path):
    # The checks themselves, on hand-written modules: `b` imports `c` only inside a function, `c` imports `a`
    # relatively, and `a` imports an attribute of `b`; the three form one circle. `d` only imports torch.
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import f\n")
    (pkg / "b.py").write_text("import torch\n\n\ndef f():\n    from pkg import c\n    return c\n")
    (pkg / "c.py").write_text("from . import a\n")
    (pkg / "d.py").write_text("import torch\n")
    graph = import_graph(modules(tmp_path, ["pkg"]))
    assert graph == {"pkg": {}, "pkg.a": {"pkg.b": 1}, "pkg.b": {"pkg.c": 5}, "pkg.c": {"pkg.a": 1}, "pkg.d": {}}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    del graph["pkg.c"]["pkg.a"]
    assert cycles(graph) == []


def test_the_test_folders_do_not_shadow_the_packages():
    # tests/probes/ and tests/dashboard/ are packages of `tests`, not the top-level `probes` and `dashboard`.
    import dashboard
    import probes
    import stability

    for pkg in (dashboard, probes, stability):
        assert Path(pkg.__file__).resolve().parent == ROOT / pkg.__name__


def test_the_dashboard_and_the_store_never_import_torch():
    # A fresh interpreter (other tests in this process have imported torch): every dashboard module except the
    # Streamlit script itself, the store, the command that serves the dashboard, the detector whose labeller the
    # dashboard runs, and what they import.
    wanted = sorted(m for m in MODULES if (m.startswith("dashboard") and m != "dashboard.app")
                    or m == "stability.store" or m.startswith("stability.store."))
    wanted += ["stability.commands.dashboard", "stability.detector"]  # `stability dashboard`; the spike labels
    code = ("import importlib, sys\n"
            f"for m in {wanted!r}:\n"
            "    importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
            "assert not bad, bad[:5]\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(wanted) > 20  # the walk found the packages


def test_a_read_only_command_does_not_load_torch():
    # The command line builds the flags of the command it runs only: `train`'s policy flags import torch (2-3 s),
    # which `stability runs`, `events`, `spikes` or `detect` on a store never need.
    store = ROOT / "sample_runs"
    for argv in (["runs", "--store", store], ["events", "post-s0", "--store", store],
                 ["spikes", "post-s0", "--store", store, "--json"], ["detect", "post-s0", "--store", store, "--json"],
                 ["alert", "--help"], ["--help"], ["--version"]):
        code = ("import sys\n"
                "from stability.cli import main\n"
                "try:\n"
                f"    code = main({[str(a) for a in argv]!r})\n"
                "except SystemExit as e:\n"
                "    code = e.code\n"
                "assert code == 0, code\n"
                "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
                "assert not bad, bad[:5]\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert out.returncode == 0, (argv, out.stderr[-2000:])
