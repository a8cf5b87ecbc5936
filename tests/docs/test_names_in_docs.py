"""Every code name the docs quote exists: the docs cannot drift from the code.

Checked, inside backticks in ``README.md`` and ``docs/**/*.md``:

* repository paths (``megatron_hapo/trainer/loop.py``, ``examples/configs/``): the file or folder exists;
* ``path.py::name``: ``name`` is defined in that file (paths are relative to the repository, to
  ``megatron_hapo/``, or name an installed package's file: ``megatron/core/fp8_utils.py::get_fp8_recipe``;
  files of other projects, which are not installed, are not checked);
* dotted code names (``megatron_hapo.models.scoring.score_sequences``, ``trainer.loop.learn``): the module
  exists and defines the name (read with ``ast``: nothing is imported);
* dotted names that start with a config section (``rollout.max_new_tokens=...``): a schema key (or a key
  inside a dict-valued one, ``model.override_config.rope_theta``), or else a name in that package
  (``rollout.fleet.SGLangFleet``) — so a name like ``rollout.HapoEngine`` fails.

Spans with placeholders (``<run_dir>``, ``*``, ``{...}``) or spaces are prose, not names, and so are HF
parameter names (``model.norm.weight``).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from megatron_hapo.config.introspect import iter_keys

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("megatron_hapo", "sglang_ext")
TOP_DIRS = ("megatron_hapo", "sglang_ext", "tests", "tools", "benchmarks", "examples", "docs", "requirements")
SPAN = re.compile(r"`([^`\n]+)`")


# Pages about other code bases: their names are the released HAPO/verl code's and the dependencies'.
ABOUT_OTHER_CODE = ("docs/hapo_spec.md", "docs/background/")


def doc_files() -> list[Path]:
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    return [p for p in pages if not str(p.relative_to(REPO)).startswith(ABOUT_OTHER_CODE)]


@functools.cache
def config_keys() -> frozenset[str]:
    return frozenset(k.path for k in iter_keys())


@functools.cache
def dict_keys() -> tuple[str, ...]:
    """Keys whose value is a free-form mapping (their sub-keys are the user's)."""
    return tuple(k.path for k in iter_keys() if k.type.startswith("dict"))


@functools.cache
def sections() -> frozenset[str]:
    return frozenset(k.split(".", 1)[0] for k in config_keys())


def source_file(file: str) -> Path | None:
    """``file`` in the repository, in ``megatron_hapo/``, or in an installed package; None if it is not
    ours and not installed (another project's file: not checked)."""
    for base in (REPO, REPO / "megatron_hapo"):
        if (base / file).is_file():
            return base / file
    if "/" not in file:  # a bare file name: one file of that name in the packages
        found = [p for pkg in PACKAGES for p in (REPO / pkg).rglob(file)]
        return found[0] if len(found) == 1 else Path("/nonexistent") / file
    top = file.split("/", 1)[0]
    if top in TOP_DIRS or (REPO / "megatron_hapo" / top).is_dir():
        return Path("/nonexistent") / file
    spec = importlib.util.find_spec(top) if top.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).parent / file


def module_file(dotted: str) -> Path | None:
    base = REPO / dotted.replace(".", "/")
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def defined_names(path: Path) -> frozenset[str]:
    """Module-level names of ``path``: functions, classes, assignments, imports, plus class members, and the
    keys of a lazy package's ``_EXPORTS`` table (PEP 562, ``megatron_hapo/algorithms/__init__.py``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
            if node.target.id == "_EXPORTS" and isinstance(node.value, ast.Dict):
                names.update(k.value for k in node.value.keys if isinstance(k, ast.Constant))
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return frozenset(names)


def code_name_exists(dotted: str) -> bool:
    """``pkg.module.name[.member]``: the longest module prefix exists and defines the next part."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        path = module_file(".".join(parts[:cut]))
        if path is not None:
            rest = parts[cut:]
            return not rest or all(p in defined_names(path) for p in rest[:2])
    return False


def stdlib_name_exists(dotted: str) -> bool:
    """``logging.basicConfig``: a section name that is also a standard-library module."""
    first, *rest = dotted.split(".")
    if first not in sys.stdlib_module_names:
        return False
    obj = importlib.import_module(first)
    for part in rest:
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def problem(span: str) -> str | None:
    """Why ``span`` names nothing that exists (None when it does, or when it is not a name)."""
    token = re.sub(r"(\(.*\)|\[.*\]|=.*)$", "", span.strip()).rstrip("/")
    if not token or re.search(r"[\s<>*{}$@|,;'\"]", token) or token.startswith(("http", "-", ".")):
        return None
    if token.endswith((".weight", ".bias")):
        return None
    if "::" in token:
        file, name = token.split("::", 1)
        if not file.endswith(".py"):  # a process name (sglang::scheduler), not a file
            return None
        path = source_file(file)
        if path is None:
            return None
        if not path.is_file():
            return f"{file} does not exist"
        return None if name.split(".")[0] in defined_names(path) else f"{file} defines no {name}"
    if "/" in token:
        if token.split("/", 1)[0] in TOP_DIRS and not (REPO / token).exists():
            return f"{token} does not exist"
        return None
    first = token.split(".", 1)[0]
    if first in PACKAGES:
        return None if code_name_exists(token) else f"{token} is not defined"
    if "." in token and first in sections() and not token.endswith((".py", ".md", ".yaml", ".json")):
        if token in config_keys() or any(k.startswith(token + ".") for k in config_keys()):
            return None
        if any(token.startswith(k + ".") for k in dict_keys()):
            return None
        if code_name_exists(f"megatron_hapo.{token}") or stdlib_name_exists(token):
            return None
        return f"{token} is neither a config key nor a name in megatron_hapo/{first}/"
    return None


def quoted_spans() -> list[tuple[str, int, str]]:
    out = []
    for doc in doc_files():
        for lineno, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            out += [(str(doc.relative_to(REPO)), lineno, m.group(1)) for m in SPAN.finditer(line)]
    return out


def test_every_name_quoted_in_the_docs_exists():
    bad = [f"{doc}:{line}: `{span}`: {why}" for doc, line, span in quoted_spans() if (why := problem(span))]
    assert not bad, "names in the docs that the code does not have:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "span",
    ["rollout.HapoEngine", "megatron_hapo.trainer.loop.no_such_function", "megatron_hapo/no_such.py",
     "megatron_hapo/trainer/loop.py::no_such_function", "trainer.no_such_key=1", "rollout/no_such.py::x",
     "megatron/core/no_such.py::x"],
)  # fmt: skip
def test_a_name_that_does_not_exist_is_reported(span):
    assert problem(span)


@pytest.mark.parametrize(
    "span",
    ["rollout.max_new_tokens=4096", "megatron_hapo.trainer.loop.learn", "trainer.loop.learn",
     "megatron_hapo/trainer/loop.py::learn", "megatron_hapo.parallel.device_mode()", "<run_dir>/x",
     "trainer/loop.py::learn", "megatron/core/fp8_utils.py::get_fp8_recipe", "model.override_config.rope_theta=1",
     "slime/backends/x.py::y", "logging.basicConfig(force=True)", "sglang::scheduler"],
)  # fmt: skip
def test_names_that_exist_pass(span):
    assert problem(span) is None
