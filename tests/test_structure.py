"""The package's shape: no module uses another module's private names, no import cycle, one
module imports ``modal``, no hand-written backward pass (training is sentence-transformers')."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "embedft"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, me: str) -> list[tuple[str, list[str], int]]:
    """Every import in module ``me``'s file, at any depth: (imported module, names taken from it, line)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                package = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.append((base, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found.extend((a.name, [], node.lineno) for a in node.names)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def private_imports(modules: dict[str, Path]) -> list[str]:
    bad = []
    for name, path in modules.items():
        for target, names, line in imports(path, name):
            if target.startswith("embedft") and target != name:
                bad += [f"{path.name}:{line} imports {target}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]
    return bad


def cycles(modules: dict[str, Path]) -> list[list[str]]:
    """Import cycles among embedft's modules (function-level imports count; the top-level ``embedft`` face does not)."""
    edges = {m: sorted({t for t, _, _ in imports(p, m) if t in modules and t not in (m, "embedft")}) for m, p in modules.items()}
    found, state, stack = [], {}, []

    def visit(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in edges[u]:
            if state.get(v) == 1:
                found.append([*stack[stack.index(v) :], v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = 2

    for m in modules:
        if m not in state and m != "embedft":
            visit(m)
    return found


def test_no_private_names_across_modules():
    assert private_imports(MODULES) == []


def test_no_import_cycle():
    assert cycles(MODULES) == []


def test_modal_imported_by_one_module():
    users = {name for name, path in MODULES.items() for target, _, _ in imports(path, name) if target == "modal" or target.startswith("modal.")}
    assert len(users) <= 1, users


def test_no_hand_written_training_step():
    def steps(tree: ast.AST) -> list[int]:
        return [
            node.lineno
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (node.func.attr == "backward" or (node.func.attr == "step" and "optim" in ast.unparse(node.func.value).lower()))
        ]

    assert steps(ast.parse("loss.backward()\noptimizer.step()\nscheduler.step()\n")) == [1, 2]
    assert {name: lines for name, path in MODULES.items() if (lines := steps(ast.parse(path.read_text(encoding="utf-8"))))} == {}


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"a.py": "from embedft.b import _helper\n", "b.py": "def _helper(): ...\n"}, "private"),
        ({"a.py": "def f():\n    from embedft.b import g\n", "b.py": "from embedft.a import f\ndef g(): ...\n"}, "cycle"),
        ({"p/__init__.py": "from embedft.p.x import y\n", "p/x.py": "from embedft.p import z\ny = z = 1\n"}, "cycle"),
        ({"p/__init__.py": "", "p/x.py": "from ._y import v\n", "p/_y.py": "v = 1\n"}, None),  # a package's own private module is fine
        ({"a.py": "from embedft.b import g\n", "b.py": "def g(): ...\n"}, None),
    ],
)
def test_the_checks_catch_what_they_claim(tmp_path, files, expected):
    root = tmp_path / "embedft"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "__init__.py").touch()
    modules = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    found = {"private": bool(private_imports(modules)), "cycle": bool(cycles(modules))}
    assert found == {"private": expected == "private", "cycle": expected == "cycle"}
