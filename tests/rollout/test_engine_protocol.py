"""Issue 18: the ``RolloutEngine`` protocol declares every member its callers use on an engine, and both
engines provide every member the protocol declares (no engine import needs SGLang's processes here)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from megatron_hapo.rollout.fleet import SGLangFleet
from megatron_hapo.rollout.inprocess import InProcessSGLangEngine
from megatron_hapo.rollout.types import RolloutEngine

PKG = Path(__file__).resolve().parents[2] / "megatron_hapo"
CALLERS = ("sync", "trainer", "eval", "diagnostics", "demo")


def declared() -> set[str]:
    return {n for n in dir(RolloutEngine) if not n.startswith("_")} | set(RolloutEngine.__annotations__)


def used_on_engines() -> dict[str, str]:
    """``engine.X`` / ``self.engine.X`` / ``x.rollout.engine.X`` in the caller packages -> where."""
    used = {}
    for pkg in CALLERS:
        for path in (PKG / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.Attribute):
                    continue
                base = node.value
                name = (
                    base.id
                    if isinstance(base, ast.Name)
                    else base.attr
                    if isinstance(base, ast.Attribute)
                    else None
                )
                if name == "engine":
                    used.setdefault(node.attr, f"{path.relative_to(PKG)}:{node.lineno}")
    return used


def provided(cls) -> set[str]:
    names = {n for n in dir(cls) if not n.startswith("_")}
    init = ast.parse(inspect.getsource(cls.__init__).strip().replace("\n    ", "\n"))
    names |= {
        t.attr
        for node in ast.walk(init)
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"
    }
    return names


def test_callers_use_only_declared_members():
    used = used_on_engines()
    assert {"generate", "shutdown"} <= set(used), used  # the scan sees the callers
    missing = {name: where for name, where in used.items() if name not in declared()}
    assert not missing, f"used on engines but not declared by RolloutEngine (rollout/types.py): {missing}"


def test_both_engines_provide_the_whole_protocol():
    for cls in (InProcessSGLangEngine, SGLangFleet):
        missing = declared() - provided(cls)
        assert not missing, f"{cls.__name__} lacks {sorted(missing)} of RolloutEngine"
