"""Every schema key is read by the code it configures: a key that only config/ looks at does nothing for
the user who sets it (DESIGN.md: "a config key that nothing reads ... does not exist").

"Read" means an attribute access ``x.<name>`` (or ``getattr(x, "<name>")``) somewhere in the package outside
``megatron_hapo/config/``. The check is by name, so it can only miss a dead key whose name is also used for
something else; it never flags a live one."""

from __future__ import annotations

import ast
from pathlib import Path

from megatron_hapo.config.introspect import iter_keys

REPO = Path(__file__).resolve().parents[2]

# Keys whose whole job is the configuration itself: validation and the dry-run plan are their readers.
CONFIG_ONLY = {
    "parallel.data_parallel_size": "an assertion: validation checks it against world size / (TP x PP x CP)",
    "cluster.nodes": "describes the cluster to validation and --dry-run",
    "cluster.gpus_per_node": "describes the cluster to validation and --dry-run",
}
# Read by validation and the plan only, until the open issue named implements them.
NOT_YET_IMPLEMENTED: dict[str, str] = {}


def names_read(roots: list[Path]) -> set[str]:
    """Attribute names read in the Python files under ``roots`` (``x.name`` and ``getattr(x, "name")``)."""
    found: set[str] = set()
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Attribute):
                    found.add(node.attr)
                elif (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id in ("getattr", "hasattr")
                    and len(node.args) >= 2
                    and isinstance(node.args[1], ast.Constant)
                ):
                    found.add(node.args[1].value)
    return found


def unread_keys(read: set[str]) -> list[str]:
    return [
        k.path
        for k in iter_keys()
        if not k.is_section and k.path.rsplit(".", 1)[-1] not in read and k.path not in CONFIG_ONLY
    ]


def package_roots() -> list[Path]:
    pkg = REPO / "megatron_hapo"
    return [p for p in pkg.iterdir() if p.name != "config" and p.suffix in ("", ".py")] + [
        REPO / "sglang_ext"
    ]


def test_every_schema_key_is_read_outside_config():
    unread = unread_keys(names_read(package_roots()))
    assert sorted(unread) == sorted(NOT_YET_IMPLEMENTED), (
        "schema keys nothing outside megatron_hapo/config reads (implement them or remove them from "
        f"config/schema.py): {sorted(set(unread) - set(NOT_YET_IMPLEMENTED))}; listed as not yet implemented "
        f"but read now (take them off the list): {sorted(set(NOT_YET_IMPLEMENTED) - set(unread))}"
    )


def test_the_check_sees_a_key_that_nothing_reads(tmp_path):
    """The same check over a tree that reads everything the package reads except ``lr``: it names optim.lr."""
    read = names_read(package_roots()) - {"lr"}
    assert "optim.lr" in unread_keys(read)
    (tmp_path / "m.py").write_text("def f(cfg):\n    return getattr(cfg.optim, 'lr')\n")
    assert "optim.lr" not in unread_keys(read | names_read([tmp_path]))
