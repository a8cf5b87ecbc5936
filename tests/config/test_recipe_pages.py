"""docs/recipes/<recipe>.md are generated from the recipe files: a changed recipe must regenerate its page."""

import subprocess
import sys

from tests.torchrun_utils import REPO_ROOT


def test_recipe_pages_are_current():
    proc = subprocess.run(
        [sys.executable, "tools/recipe_pages.py", "--check"], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    pages = sorted(p.name for p in (REPO_ROOT / "docs" / "recipes").glob("*.md"))
    recipes = sorted(p.stem + ".md" for p in (REPO_ROOT / "examples/configs/recipes").glob("*_hapo.yaml"))
    assert pages == recipes and len(pages) == 6
