"""The CPU demo configs and docs point at the model directory ``make demo`` really writes (issue 17, bug 9)."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_hapo.config.loader import compose
from megatron_hapo.demo.recipes import TASKS

from .conftest import CONFIGS, REPO

DEFAULT_MODEL_DIR = TASKS["tiny_math"][2]  # what `python -m megatron_hapo.demo --task tiny_math` writes


@pytest.mark.parametrize("config", ["cpu_demo.yaml", "tiny_cpu.yaml"])
def test_demo_configs_default_to_the_directory_the_demo_writes(config, monkeypatch):
    monkeypatch.delenv("HAPO_TINY_MODEL", raising=False)
    cfg = compose(CONFIGS / config).cfg
    assert Path(cfg.model.hf_path) == Path(DEFAULT_MODEL_DIR)


def test_the_reasoning_config_defaults_to_the_directory_make_demo_writes(monkeypatch):
    monkeypatch.delenv("HAPO_DEMO_MODEL", raising=False)
    cfg = compose(CONFIGS / "demo_reasoning.yaml").cfg
    assert Path(cfg.model.hf_path) == Path(TASKS["reasoning"][2])


def test_make_demo_runs_the_reasoning_task(monkeypatch, tmp_path):
    import megatron_hapo.cli.demo as demo

    seen = {}

    def fake_build(model_dir, task):
        seen["task"], seen["dir"] = task, model_dir
        raise SystemExit(0)  # stop before training

    monkeypatch.delenv("HAPO_DEMO_MODEL", raising=False)
    monkeypatch.setattr(demo, "build_policy", fake_build)
    with pytest.raises(SystemExit):  # its run directory (logs/) in tmp_path, not in the working tree
        demo.main([f"trainer.run_dir={tmp_path / 'run'}"])
    assert seen == {"task": "reasoning", "dir": Path(TASKS["reasoning"][2])}


def test_docs_name_the_same_directory():
    doc = (REPO / "docs" / "config.md").read_text()
    assert "runs/tiny_model" not in doc and f"./{DEFAULT_MODEL_DIR}" in doc
