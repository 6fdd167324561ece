"""The code layout stays walkable: imports run one way between layers, no import cycle (imports inside functions
included), small package folders and files, a short README. Static: the sources are parsed, nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Folders of the installed packages (pyproject's package-dir): the app's folders install under medplib_label.
PACKAGE_DIRS = {"medplib": "medplib", "monailabel_app": "medplib_label", "infers": "medplib_label.infers",
                "trainers": "medplib_label.trainers"}
# What each layer of medplib may import (besides itself); the app (medplib_label) may import any of them.
LAYERS = {
    "imaging": set(),
    "model": {"imaging"},
    "checkpoints": {"imaging", "model"},
    "data": {"imaging", "model"},
    "inference": {"imaging", "model", "checkpoints"},
    "training": {"imaging", "model", "checkpoints", "data", "inference"},
    "evaluation": {"imaging", "model", "checkpoints", "data", "inference"},
}


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every project module."""
    out = {}
    for folder, package in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package] + parts)] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules imported anywhere in the file (function bodies too), resolved to the deepest known module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {name: imports_of(name, path, known) for name, path in files.items()}


def test_there_is_no_import_cycle(graph):
    # Package __init__ re-exports (medplib's lazy top-level names) are entry points for users, not edges.
    edges = {m: {d for d in deps if d not in ("medplib",)} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_layers_import_one_way(graph):
    wrong = []
    for m, deps in graph.items():
        if not m.startswith("medplib."):
            continue
        layer = m.split(".")[1]
        for d in deps:
            if d.startswith("medplib_label"):
                wrong.append(f"{m} imports the app ({d})")
            elif d.startswith("medplib."):
                other = d.split(".")[1]
                if other != layer and other not in LAYERS[layer]:
                    wrong.append(f"{m} ({layer}) imports {d} ({other})")
            elif d == "medplib":
                wrong.append(f"{m} imports the top-level re-exports; import from the defining module")
    assert not wrong, "\n".join(sorted(wrong))
    assert set(LAYERS) == {p.name for p in (ROOT / "medplib").iterdir() if (p / "__init__.py").is_file()}


def test_trainers_hold_only_monailabel_tasks(graph):
    """Every module in trainers/ is a MONAI Label task (it imports monailabel); training code lives in medplib."""
    mods = {m: f for m, f in module_files().items() if m.startswith("medplib_label.trainers.")}
    assert {"medplib_label.trainers.medplib_train", "medplib_label.trainers.uncertainty"} <= set(mods)
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        third_party = {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert "monailabel" in third_party, f"{name} is not a MONAI Label task"


def test_folders_and_files_stay_small():
    for folder in list(PACKAGE_DIRS) + ["tests", "bench", "sample_data"]:
        for d in [ROOT / folder] + [p for p in (ROOT / folder).rglob("*") if p.is_dir()]:
            if "__pycache__" in d.parts:
                continue
            modules = [p for p in d.glob("*.py") if p.name != "__init__.py"]
            if folder in PACKAGE_DIRS:
                assert len(modules) <= 15, f"{d.relative_to(ROOT)} holds {len(modules)} modules (at most 15)"
            for p in modules:
                n = len(p.read_text(encoding="utf-8").splitlines())
                assert n <= 600, f"{p.relative_to(ROOT)} has {n} lines (at most 600)"


def test_readme_is_a_landing_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode()) <= 16 * 1024
    assert readme.index("make serve") < readme.index("## ")  # the two commands come first
    for page in ("docs/architecture.md", "docs/default_model.md", "docs/benchmarks.md", "docs/deployment.md",
                 "docs/fidelity.md"):
        assert page in readme and (ROOT / page).is_file(), page


def test_users_import_from_the_top():
    import medplib

    assert medplib.build_model.__module__ == "medplib.checkpoints.build"
    assert medplib.MedPLIBPredictor.__module__ == "medplib.inference.predictor"
    with pytest.raises(AttributeError):
        medplib.no_such_name  # noqa: B018
