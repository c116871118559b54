"""The code's shape, as docs/layout.md states it: short functions, imports a reader can see, private names kept
private, and no arrow running back up the flow."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The folders of the recbrew package (eval/ and kernels/ install as recbrew.eval and recbrew.kernels).
PACKAGE_DIRS = {"recbrew": "recbrew", "eval": "recbrew.eval", "kernels": "recbrew.kernels"}
MAX_FUNCTION_LINES = 70


def _modules() -> list[tuple[Path, str, ast.Module]]:
    out = []
    for folder, package in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out.append((path, ".".join([package, *parts]), ast.parse(path.read_text(), str(path))))
    return out


MODULES = _modules()


def _functions(tree: ast.Module):
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def _own_imports(node) -> list[ast.ImportFrom]:
    return [n for n in ast.walk(node) if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module
            and n.module.split(".")[0] == "recbrew"]


def test_no_function_is_longer_than_the_limit():
    long = [f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name} ({fn.end_lineno - fn.lineno + 1} lines)"
            for path, _, tree in MODULES for fn in _functions(tree)
            if fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, "split into named steps: " + "; ".join(long)


def test_function_level_imports_of_recbrew_say_why():
    """recbrew's own imports sit at the top of a module; one inside a function says what it keeps out of module
    import (`# lazy: loads torch`) or why it must wait (an import cycle)."""
    silent = []
    for path, _, tree in MODULES:
        lines = path.read_text().split("\n")
        for fn in _functions(tree):
            for node in _own_imports(fn):
                first = node.lineno - 1
                while first > 0 and lines[first - 1].strip().startswith(("from ", "import ")):
                    first -= 1  # a comment above a run of imports speaks for the run
                said = lines[first - 1:node.end_lineno]
                if not any(line.strip().startswith("#") or "  # " in line for line in said):
                    silent.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module}")
    assert not silent, "move to the module top, or add '# lazy: <reason>': " + "; ".join(sorted(set(silent)))


def test_no_private_name_crosses_a_package():
    crossing = []
    for path, module, tree in MODULES:
        package = module.split(".")[:2]
        for node in _own_imports(tree):
            if node.module.split(".")[:2] != package:
                crossing += [f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{a.name}" for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__")]
    assert not crossing, "make it public or keep it in its package: " + "; ".join(crossing)


@pytest.mark.parametrize("lower, upper", [("recbrew.simulate", "recbrew.eval"), ("recbrew.baselines", "recbrew.eval"),
                                          ("recbrew.kernels", "recbrew.eval")])
def test_no_arrow_runs_back_up_the_flow(lower, upper):
    back = [f"{path.relative_to(ROOT)}:{node.lineno}" for path, module, tree in MODULES
            if module.startswith(lower) for node in _own_imports(tree) if node.module.startswith(upper)]
    assert not back, f"{lower} imports {upper}: " + "; ".join(back)
