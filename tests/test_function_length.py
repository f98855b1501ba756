"""No hubs (issue 30): no function or method in src/ is longer than MAX_LINES lines, so each
one does one named step that a reader can hold in mind."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

MAX_LINES = 80  # the hard limit; aim for 60 or fewer


def long_functions(root: Path, max_lines: int = MAX_LINES) -> list[str]:
    """'file:line function (n lines)' for every function or method under `root` longer than
    max_lines, counting from its `def` line to its last line (decorators not counted)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > max_lines:
                    where = path.relative_to(root.parent).as_posix()
                    found.append(f"{where}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_in_src_is_longer_than_the_limit():
    too_long = long_functions(REPO / "src")
    assert not too_long, (
        f"functions longer than {MAX_LINES} lines (split them into named steps):\n"
        + "\n".join(too_long)
    )


def test_the_check_names_file_function_and_length(tmp_path):
    package = tmp_path / "src" / "pkg"
    package.mkdir(parents=True)
    body = "".join(f"        x{i} = {i}\n" for i in range(MAX_LINES))  # def line + MAX_LINES
    (package / "mod.py").write_text(
        f"def short():\n    pass\n\n\nclass C:\n    def long(self):\n{body}"
    )
    assert long_functions(tmp_path / "src") == [f"src/pkg/mod.py:6 long ({MAX_LINES + 1} lines)"]
    assert long_functions(tmp_path / "src", max_lines=MAX_LINES + 1) == []
