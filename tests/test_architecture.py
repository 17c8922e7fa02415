"""The architecture's rules that import-linter does not check: imports sit at the top of their
module (only the heavy libraries pyproject.toml lists under [tool.sftmill] load inside functions),
and modules stay small enough to read."""

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = ("sftmill", "flows", "tasks", "prompts")


def modules() -> list[Path]:
    return sorted(p for folder in PACKAGE_FOLDERS for p in (ROOT / folder).rglob("*.py"))


def imports_inside_functions(path: Path) -> list[tuple[int, str]]:
    """Imports inside functions; the package root's `__getattr__` (PEP 562:
    `sftmill.run` looked up on first use) is the one place allowed to."""
    found = []
    root = path == ROOT / "sftmill" / "__init__.py"
    for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if root and getattr(fn, "name", None) == "__getattr__":
            continue
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    found += [(node.lineno, a.name) for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    found.append((node.lineno, "." * node.level + (node.module or "")))
    return found


def test_only_the_listed_heavy_libraries_are_imported_inside_functions():
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    allowed = set(settings["tool"]["sftmill"]["imported-where-used"])
    assert "sftmill" not in allowed
    wrong = [f"{path.relative_to(ROOT)}:{line}: {name}" for path in modules()
             for line, name in imports_inside_functions(path) if name.split(".")[0] not in allowed]
    assert not wrong, "imports inside functions:\n" + "\n".join(wrong)


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from sftmill.core.ids import content_id\n"
                      "    import faiss\n    return content_id, faiss\n")
    assert imports_inside_functions(module) == [(4, "sftmill.core.ids"), (5, "faiss")]


def test_modules_stay_short():
    lines = {path: len(path.read_text(encoding="utf-8").splitlines()) for path in modules()}
    assert not [p for p, n in lines.items() if n > 500], "modules over 500 lines"
    cli = [p for p, n in lines.items() if p.parent == ROOT / "sftmill" / "cli" and n > 300]
    assert not cli, "command-line modules over 300 lines"
