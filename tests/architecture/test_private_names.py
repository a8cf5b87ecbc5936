"""No module uses another module's private name (issue 18): a ``_name`` defined in one of our modules (a
module-level function, class, constant, a method, or a ``self._attr``) is used only inside that module.
Anything another module needs is public, or lives where it is used.

Uses of third-party privates (Megatron's RNG tracker, SGLang's sampler hooks in ``parallel/cpu_compat.py``
and ``sglang_ext/``) are outside this rule: those are shims around code we do not own."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("megatron_hapo", "sglang_ext")


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _modules(dirs: tuple[str, ...]) -> dict[str, ast.Module]:
    out = {}
    for d in dirs:
        for p in sorted((ROOT / d).rglob("*.py")):
            out[str(p.relative_to(ROOT))] = ast.parse(p.read_text(), filename=str(p))
    return out


def defined_private_names(tree: ast.Module) -> set[str]:
    """Private names a module defines: top-level defs/classes/assignments, methods, ``self._x = ...``."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and _private(node.name):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for sub in ast.walk(t):
                    if isinstance(sub, ast.Name) and _private(sub.id):
                        names.add(sub.id)
                    elif (
                        isinstance(sub, ast.Attribute)
                        and _private(sub.attr)
                        and isinstance(sub.value, ast.Name)
                        and sub.value.id in ("self", "cls")
                    ):
                        names.add(sub.attr)
    return names


def private_uses(tree: ast.Module) -> list[tuple[int, str]]:
    """``from ours import _x`` and ``obj._x`` with ``obj`` other than self/cls/super()."""
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            uses += [(node.lineno, a.name) for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            v = node.value
            if isinstance(v, ast.Name) and v.id in ("self", "cls"):
                continue
            if isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "super":
                continue
            uses.append((node.lineno, node.attr))
    return uses


def cross_module_uses(package_trees: dict[str, ast.Module], user_trees: dict[str, ast.Module]) -> list[str]:
    owners: dict[str, set[str]] = defaultdict(set)
    for path, tree in package_trees.items():
        for name in defined_private_names(tree):
            owners[name].add(path)
    problems = []
    for path, tree in user_trees.items():
        own = defined_private_names(tree)
        for line, name in private_uses(tree):
            if name in owners and name not in own and path not in owners[name]:
                problems.append(f"{path}:{line}: uses {name} of {', '.join(sorted(owners[name]))}")
    return problems


def test_no_module_uses_another_modules_private_name():
    package = _modules(PACKAGES)
    users = {**package, **_modules(("tests", "tools", "benchmarks"))}
    users.pop("tests/architecture/test_private_names.py")
    problems = cross_module_uses(package, users)
    assert not problems, "make the name public or move the code where it is used:\n" + "\n".join(problems)


def test_the_check_sees_an_import_and_an_attribute():
    owner = ast.parse("def _helper(): pass\nclass A:\n    def __init__(self):\n        self._cursor = 0\n")
    user = ast.parse("from megatron_hapo.x import _helper\n\ndef f(a):\n    return a._cursor\n")
    problems = cross_module_uses({"megatron_hapo/x.py": owner}, {"megatron_hapo/y.py": user})
    assert problems == [
        "megatron_hapo/y.py:1: uses _helper of megatron_hapo/x.py",
        "megatron_hapo/y.py:4: uses _cursor of megatron_hapo/x.py",
    ]
