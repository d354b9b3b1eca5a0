"""The floors of the house (docs/architecture.md) hold: no import circle among the library's
files, no import up or sideways between floors, entry points that nothing imports and that
stay thin, and a library that never imports tests/, scripts/ or benchmarks/.

Every import is read with ``ast``, those inside functions included, and resolved to a file
of the checkout; a failure names the offending imports.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOT_LIBRARY = ("tests", "scripts", "benchmarks")
NOT_SOURCE = ("build", "runs", "docs")  # build output, work directories
# bottom up: a file may import files of its own unit (the longest folder below that holds
# it) and of units on lower floors; units of one floor are independent of each other
FLOORS = [
    ("the math", ["diffusion"]),
    ("networks; samplers", ["diffusion/nn", "sampling"]),
    ("data; weight conversion", ["diffusion/data", "diffusion/convert"]),
    ("metrics; the training loop", ["diffusion/metrics", "diffusion/train"]),
    ("methods", ["distill"]),
    ("configs", ["configs"]),
    ("work directories; cluster launch", ["orchestration/workdir", "orchestration/cluster"]),
    ("building runs; foreign weights", ["orchestration/build", "orchestration/weights"]),
    ("generation and scoring", ["orchestration/generation"]),
    ("experiments", ["orchestration/experiments", "orchestration"]),
    ("entry points", ["launch"]),
]
FLOOR_OF = {unit: i for i, (_, units) in enumerate(FLOORS) for unit in units}
ENTRY_HELPER = "launch/cli.py"  # the entry points' shared flag and error plumbing
ENTRY_FUNCTION_LINES = 12  # an entry point's functions parse, call one library function, print


def library_files(root: pathlib.Path = ROOT) -> list[pathlib.Path]:
    """Every ``.py`` file of the library, relative to ``root``."""
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in NOT_LIBRARY + NOT_SOURCE or any(p.startswith(".") for p in rel.parts):
            continue
        out.append(rel)
    return out


def module_name(rel: pathlib.Path) -> str:
    parts = list(rel.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(rel: pathlib.Path, root: pathlib.Path = ROOT) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of every import in the file, module level or not; a
    ``from a import b`` gives ``a.b`` (a module when ``b`` is one, else resolved to ``a``)."""
    tree = ast.parse((root / rel).read_text(), str(rel))
    package = module_name(rel) if rel.name == "__init__.py" else module_name(rel).rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def resolve(name: str, modules: dict[str, pathlib.Path]) -> pathlib.Path | None:
    """The file of ours that ``name`` (or its longest prefix that is a module) names."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return modules.get(name)


def unit_of(rel: pathlib.Path) -> str | None:
    folder = rel.parent.as_posix()
    while folder not in FLOOR_OF and "/" in folder:
        folder = folder.rpartition("/")[0]
    return folder if folder in FLOOR_OF else None


def graph(root: pathlib.Path = ROOT) -> dict[pathlib.Path, list[tuple[pathlib.Path, int]]]:
    """``file -> [(imported file, line)]`` among the library's files."""
    modules = {module_name(r): r for r in library_files(root)}
    out = {}
    for rel in modules.values():
        edges = [(resolve(name, modules), line) for line, name in imports(rel, root)]
        out[rel] = sorted({(target, line) for target, line in edges if target is not None and target != rel})
    return out


def circles(edges: dict[pathlib.Path, list]) -> list[list[pathlib.Path]]:
    """The strongly connected sets of more than one file (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w, _ in edges[v]:
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
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def floor_violations(edges: dict[pathlib.Path, list]) -> list[str]:
    """One line per import that goes up a floor or sideways to another unit of the same floor,
    per file whose folder is on no floor, and per import of an entry point."""
    out = []
    for source, targets in sorted(edges.items()):
        unit = unit_of(source)
        if unit is None:
            out.append(f"{source}: its folder is on no floor (add it to FLOORS and docs/architecture.md)")
            continue
        for target, line in targets:
            other = unit_of(target)
            if other is None:
                continue  # reported as a file of its own
            if other == unit:
                if unit == "launch" and target.as_posix() != ENTRY_HELPER:
                    out.append(f"{source}:{line} imports {target} (an entry point; only {ENTRY_HELPER} is shared)")
            elif FLOOR_OF[other] >= FLOOR_OF[unit]:
                why = ("sideways: another unit of the same floor" if FLOOR_OF[other] == FLOOR_OF[unit] else
                       f"upward: {FLOORS[FLOOR_OF[other]][0]!r} is above {FLOORS[FLOOR_OF[unit]][0]!r}")
                out.append(f"{source}:{line} imports {target} ({why})")
    return out


def test_no_import_circle_among_the_library_files():
    found = circles(graph())
    assert not found, "import circles:\n" + "\n".join(" -> ".join(map(str, c)) for c in found)


def test_no_upward_or_sideways_import_between_floors():
    bad = floor_violations(graph())
    assert not bad, "imports against the floors (docs/architecture.md):\n" + "\n".join(bad)


def test_the_library_never_imports_tests_scripts_or_benchmarks():
    bad = [f"{rel}:{line} imports {name}" for rel in library_files() for line, name in imports(rel)
           if name.split(".")[0] in NOT_LIBRARY]
    assert not bad, "\n".join(bad)


def test_every_floor_unit_exists_and_is_drawn_in_the_architecture_page():
    page = (ROOT / "docs" / "architecture.md").read_text()
    for unit in FLOOR_OF:
        assert (ROOT / unit).is_dir(), f"FLOORS lists {unit}/, which does not exist"
        assert f"{unit.rpartition('/')[2]}/" in page, f"docs/architecture.md does not draw {unit}/"


@pytest.mark.parametrize("entry", sorted(p.name for p in (ROOT / "launch").glob("*.py")
                                         if p.name not in ("__init__.py", "cli.py")))
def test_entry_points_are_thin(entry):
    """An entry point parses flags, calls one library function and prints: it is runnable,
    defines no class, keeps every function but its flag parser short, and calls into one
    library subpackage."""
    rel = pathlib.Path("launch") / entry
    text = (ROOT / rel).read_text()
    tree = ast.parse(text)
    assert 'if __name__ == "__main__":' in text, f"{rel} is not runnable (python -m launch.{rel.stem})"
    assert not any(isinstance(n, ast.ClassDef) for n in tree.body), f"{rel} defines a class: move it to the library"
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name != "parse":  # parse(): argparse's flag definitions
            body = node.body[1:] if ast.get_docstring(node) else node.body
            lines = body[-1].end_lineno - body[0].lineno + 1
            assert lines <= ENTRY_FUNCTION_LINES, (f"{rel}: {node.name}() has {lines} lines; an entry point parses "
                                                   "flags, calls one library function and prints")
    library = {name.split(".")[1] for _, name in imports(rel) if name.startswith("orchestration.")}
    assert len(library) <= 1, f"{rel} calls into several library subpackages: {sorted(library)}"


def test_the_check_finds_a_circle_and_an_upward_import(tmp_path):
    """The checks themselves: a planted circle and an upward import are both reported."""
    for rel, text in {"diffusion/__init__.py": "", "diffusion/schedules.py": "from diffusion import param\n",
                      "diffusion/param.py": "def f():\n    from diffusion.schedules import x\n",
                      "sampling/__init__.py": "", "sampling/loop.py": "",
                      "diffusion/losses.py": "import sampling.loop\n"}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    edges = graph(tmp_path)
    assert circles(edges) == [[pathlib.Path("diffusion/param.py"), pathlib.Path("diffusion/schedules.py")]]
    assert floor_violations(edges) == [
        "diffusion/losses.py:1 imports sampling/loop.py (upward: 'networks; samplers' is above 'the math')"]
