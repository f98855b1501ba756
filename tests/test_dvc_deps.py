"""Every stage in dvc.yaml declares the project code it runs: the stage script and every
module of the package it imports, directly or through other modules (imports inside
functions included, and each package's __init__.py, which Python runs on the way). A
missing dep would let `dvc repro` skip a stage whose code changed and keep stale numbers."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

SRC = REPO / "src"
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    """deepfm.data.splitting -> src/deepfm/data/splitting.py (or a package's __init__.py)."""
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_files(path: Path) -> set[Path]:
    """The project files one file imports, at any depth of its code."""
    found = set()
    package = ".".join(path.relative_to(SRC).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names = [base] + [f"{base}.{a.name}" for a in node.names]  # `from pkg import mod`
        for name in names:
            if not name.startswith("deepfm"):
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # the packages on the way run too
                file = module_file(".".join(parts[:i]))
                if file is not None:
                    found.add(file)
    return found


def closure(script: Path) -> set[Path]:
    todo, seen = [script], {script}
    while todo:
        for file in imported_files(todo.pop()):
            if file not in seen:
                seen.add(file)
                todo.append(file)
    return seen


def covered(file: Path, deps: list[str]) -> bool:
    rel = file.relative_to(REPO)
    return any(rel == Path(d) or Path(d) in rel.parents for d in deps)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_cover_the_code_it_imports(stage):
    spec = STAGES[stage]
    script = next(REPO / a for a in shlex.split(spec["cmd"]) if a.endswith(".py"))
    files = closure(script)
    assert module_file("deepfm.config") in files  # the walk works
    missing = sorted(str(f.relative_to(REPO)) for f in files if not covered(f, spec["deps"]))
    assert not missing, f"dvc.yaml stage {stage!r} imports but does not depend on {missing}"


def test_the_import_walk_sees_lazy_and_package_imports():
    files = closure(SRC / "stages" / "train.py")
    rel = {str(f.relative_to(SRC)) for f in files}
    # a function-level import (config.py imports data/sources.py inside a function), a
    # package __init__ (models/__init__.py, the registry) and what it imports in turn
    assert {"deepfm/data/sources.py", "deepfm/models/__init__.py", "deepfm/__init__.py"} <= rel
    assert "deepfm/models/layers/cin.py" in rel
    assert not any(r.startswith("deepfm/results/") for r in rel)  # the report is no stage
