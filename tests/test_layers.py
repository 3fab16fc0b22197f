"""The package layering of docs/ARCHITECTURE.md, read from the source: which package may import which."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("purifier", "evaluation", "training", "export", "serving", "cli")
ALLOWED = {
    "purifier": set(),
    "evaluation": {"purifier"},
    "training": {"purifier", "evaluation"},
    "export": {"purifier", "evaluation", "serving"},
    "serving": {"purifier", "export"},
}


def _imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        found |= {name.split(".")[0] for name in names if name.split(".")[0] in PACKAGES}
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_layers_below_it(package):
    for path in sorted((ROOT / package).rglob("*.py")):
        others = _imported_packages(path) - {package}
        assert others <= ALLOWED[package], f"{path.relative_to(ROOT)} imports {sorted(others - ALLOWED[package])}"
