"""The package's layers: each module imports only from its own floor or lower ones, at module
level or inside a function alike (docs/architecture.md, "Layers"). A lower layer that reached
up (config.py into the metric registry, evaluation into training) would tie code that
produces numbers to code that merely uses them, and pull it into stages that never run it.
The stage scripts are separate programs: none imports another."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

SRC = REPO / "src"
PACKAGE = SRC / "deepfm"

# lowest first; a module's floor is that of the longest prefix of its name listed here
FLOORS = [
    ["deepfm", "deepfm.io", "deepfm.utils"],
    ["deepfm.data"],
    ["deepfm.config"],
    ["deepfm.models"],
    ["deepfm.evaluation"],
    ["deepfm.training"],
    ["deepfm.results", "deepfm.serving"],
    ["deepfm.command", "deepfm.__main__"],
]
FLOOR = {prefix: floor for floor, prefixes in enumerate(FLOORS) for prefix in prefixes}


def floor_of(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in FLOOR:
            return FLOOR[".".join(parts[:n])]
    raise AssertionError(f"{module} is on no floor: add it to FLOORS in tests/test_layering.py")


def module_name(path: Path, src: Path = SRC) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, module) for every `deepfm...` import in the file (of `package`), at any depth
    of its code; `from pkg import name` counts as an import of pkg.name (a module, or a name
    of pkg's own floor)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package, up level - 1
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "deepfm"]


def upward_imports(path: Path, src: Path = SRC) -> list[str]:
    """Each import in `path` of a module on a higher floor than its own, as a message."""
    importer = module_name(path, src)
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    own = floor_of(importer)
    rel = path.relative_to(src.parent)
    return [
        f"{rel}:{line}: {importer} (floor {own}) imports {name} (floor {floor_of(name)})"
        for line, name in imports(path, package)
        if floor_of(name) > own
    ]


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_no_module_imports_from_a_higher_floor(path):
    found = upward_imports(path)
    assert not found, "\n".join(found)


def test_the_walk_sees_upward_imports_inside_functions_and_relative_ones(tmp_path):
    planted = tmp_path / "src" / "deepfm" / "data" / "planted.py"
    planted.parent.mkdir(parents=True)
    planted.write_text(
        "from deepfm.data import schema\n"
        "from ..io import atomic_path\n"
        "def f():\n"
        "    from deepfm.training.loop import train\n"
        "    from ..evaluation import metrics\n"
    )
    assert upward_imports(planted, tmp_path / "src") == [
        "src/deepfm/data/planted.py:4: deepfm.data.planted (floor 1) imports "
        "deepfm.training.loop.train (floor 5)",
        "src/deepfm/data/planted.py:5: deepfm.data.planted (floor 1) imports "
        "deepfm.evaluation.metrics (floor 4)",
    ]


@pytest.mark.parametrize("path", sorted((SRC / "stages").glob("*.py")), ids=lambda p: p.name)
def test_no_stage_script_imports_another(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    # a script runs with src/stages first on sys.path: `import split` would be the stage
    others = {"stages", *(p.stem for p in (SRC / "stages").glob("*.py"))}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = ["." * node.level + (node.module or "")]
        else:
            continue
        found += [
            f"{path.relative_to(REPO)}:{node.lineno}: imports {name}"
            for name in names
            if name.startswith(".") or name.split(".")[0] in others
        ]
    assert not found, "\n".join(found)
