"""The apps are layers that only point down: inference on deployments,
deployments on cluster, cluster on registry, registry on accounts, accounts
on audit (whose log every app writes), all on config. A module importing an
app above its own, or importing a first-party module inside a function (the
usual way to hide a cycle), fails this test. Exceptions: AppConfig.ready
(where Django wants apps wired together), and the composition roots
config/urls.py and config/asgi.py, which mount every app."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["config", "audit", "accounts", "registry", "cluster", "deployments", "inference"]
RANK = {app: i for i, app in enumerate(LAYERS)}
COMPOSITION_ROOTS = {Path("config/urls.py"), Path("config/asgi.py")}


def imports_of(tree: ast.Module):
    """(line, module, inside a function, the function's name) for every import in `tree`."""
    found = []

    def visit(node, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, child.name)
                continue
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.lineno, child.module, function))
            elif isinstance(child, ast.Import):
                found.extend((child.lineno, alias.name, function) for alias in child.names)
            visit(child, function)

    visit(tree, None)
    return found


def app_modules():
    for app in LAYERS:
        for path in sorted((ROOT / app).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if "tests" in relative.parts or "migrations" in relative.parts:
                continue
            yield app, relative, ast.parse(path.read_text())


def test_no_app_imports_an_app_above_it():
    upward = [
        f"{path}:{line} imports {module}"
        for app, path, tree in app_modules()
        if path not in COMPOSITION_ROOTS
        for line, module, _ in imports_of(tree)
        if RANK.get(module.split(".")[0], -1) > RANK[app]
    ]
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def test_no_first_party_import_hides_inside_a_function():
    hidden = [
        f"{path}:{line} imports {module} inside {function}()"
        for _, path, tree in app_modules()
        for line, module, function in imports_of(tree)
        if function is not None
        and module.split(".")[0] in RANK
        and not (path.name == "apps.py" and function == "ready")
    ]
    assert not hidden, "function-local imports of the project's own modules:\n" + "\n".join(hidden)


def test_the_artifact_cache_imports_only_the_standard_library_and_itself():
    # The node agent runs the cache alone, without Django or the console's settings.
    foreign = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sorted((ROOT / "cluster" / "cache").glob("*.py"))
        for line, module, _ in imports_of(ast.parse(path.read_text()))
        if module.split(".")[0] not in sys.stdlib_module_names and not module.startswith("cluster.cache")
    ]
    assert not foreign, "the cache imports outside the standard library:\n" + "\n".join(foreign)


def test_the_checks_find_what_they_look_for():
    tree = ast.parse("import os\nfrom deployments import services\ndef f():\n    from registry import models\n")
    assert imports_of(tree) == [(1, "os", None), (2, "deployments", None), (4, "registry", "f")]
