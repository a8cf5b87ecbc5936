"""logging.* keys that depend on the machine: wandb asked for without the package is a config error."""

import importlib.util

import pytest

from megatron_hapo.config import collect_issues
from megatron_hapo.config.loader import compose

from .conftest import probe


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_wandb_without_the_package_is_named():
    loaded = compose(None, ["model.hf_path=m", "data.train_files=[t.jsonl]", "logging.wandb=true"])
    found = collect_issues(loaded.cfg, world_size=8, origins=loaded.origins, check_env=True, probe=probe())
    hit = [i for i in found if i.key == "logging.wandb"]
    assert len(hit) == 1 and "pip install wandb" in hit[0].message
