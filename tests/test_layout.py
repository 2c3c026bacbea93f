"""The package's layout holds: runtime/ (copied into model folders) never imports the build side or the serving
side, the model.py templates import only runtime/, and no module imports another that imports it back."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "yolotriton"


def _imports(path: Path) -> set[str]:
    """The yolotriton modules a file imports, by dotted name (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n.startswith("yolotriton.") and _module_file(n)}
    return found


def _module_file(name: str) -> Path | None:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _graph() -> dict[str, set[str]]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts): _imports(p) for p in PACKAGE.rglob("*.py")
            if p.name != "__init__.py"}


def test_runtime_imports_nothing_outside_itself():
    for module, deps in _graph().items():
        if module.startswith("yolotriton.runtime."):
            outside = {d for d in deps if not d.startswith("yolotriton.runtime")}
            assert not outside, f"{module} imports {outside}: runtime/ is copied alone into model folders"


def test_model_templates_import_only_the_runtime_package():
    local = {p.stem for p in (PACKAGE / "runtime").glob("*.py")}
    for template in (ROOT / "templates").glob("*/model.py"):
        for node in ast.walk(ast.parse(template.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                top = node.module.split(".")[0]
                assert top != "yolotriton" and top not in local, f"{template}: from {node.module} (use runtime.X)"


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in graph.get(node, ()):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(path + [nxt])
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
