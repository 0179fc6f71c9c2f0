"""The structure the README describes: the shared core imports no service."""

from __future__ import annotations

import ast

from tests.conftest import REPO_ROOT


def imported_modules(source: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_the_core_imports_no_service():
    offenders = {
        str(path.relative_to(REPO_ROOT)): sorted(
            m for m in imported_modules(path.read_text()) if m.split(".")[0] == "services"
        )
        for path in (REPO_ROOT / "fedxai").rglob("*.py")
    }
    assert {path: modules for path, modules in offenders.items() if modules} == {}
    # The check sees imports inside functions too.
    assert imported_modules("def f():\n    from services.explainer import server\n") == {"services.explainer"}
