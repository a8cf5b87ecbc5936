"""``model.override_config`` reaches everything that reads the HF config: the Megatron model the trainer
builds, the rollout engine (SGLang's model config, built by SGLang's own code from our server arguments) and
the config.json of an HF export. The override used, ``rope_theta``, changes the model's outputs."""

from __future__ import annotations

import json

import pytest
import torch

from megatron_hapo.demo.tiny_models import make_tiny_hf_model
from tests.parallel_utils import world_of_one

THETA = 1234.0


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_hf_model(
        tmp_path_factory.mktemp("override") / "m", "qwen2", vocab_size=300, dtype="float32"
    )


@pytest.fixture(scope="module")
def cfg(tiny_model):
    from megatron_hapo.config import load_config

    rope = f"{{rope_type: default, rope_theta: {THETA}}}"
    overrides = [f"model.hf_path={tiny_model}", f"model.override_config={{rope_parameters: {rope}}}"]
    return load_config("examples/configs/tiny_cpu.yaml", overrides, check_env=False)


def _inv_freq(theta: float, head_dim: int) -> torch.Tensor:
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


def test_trainer_model_is_built_with_the_override(cfg, tiny_model):
    from megatron_hapo.models.hf_config import load_arch
    from megatron_hapo.trainer.policy import Policy

    assert load_arch(tiny_model).rope_theta != THETA  # the override changes something
    with world_of_one():
        policy = Policy(cfg, optimizer_steps=1)
        gpt = policy.model.module
        assert policy.arch.rope_theta == THETA
        torch.testing.assert_close(
            gpt.rotary_pos_emb.inv_freq.float().cpu(), _inv_freq(THETA, policy.arch.head_dim)
        )


def test_rollout_engine_model_config_has_the_override(cfg, tiny_model):
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.server_args import ServerArgs
    from sglang.srt.utils.hf_transformers.common import get_rope_config

    from megatron_hapo.rollout.inprocess import cpu_server_args
    from megatron_hapo.rollout.serving import engine_server_args

    args = ServerArgs(model_path=str(tiny_model), **{**cpu_server_args(), **engine_server_args(cfg)})
    hf = ModelConfig.from_server_args(args).hf_config
    assert get_rope_config(hf)[0] == THETA  # what SGLang's models build their rotary embedding from


def test_hf_export_config_has_the_override(tmp_path, tiny_model):
    from megatron_hapo.checkpoint_io.hf_io import copy_reference_files

    rope = {"rope_type": "default", "rope_theta": THETA}
    copy_reference_files(tiny_model, tmp_path, torch.bfloat16, {"rope_parameters": rope})
    written = json.loads((tmp_path / "config.json").read_text())
    assert (
        written["rope_parameters"] == rope and written.get("torch_dtype", written.get("dtype")) == "bfloat16"
    )


def test_a_top_level_rope_override_that_would_be_ignored_is_refused(tiny_model):
    from megatron_hapo.config import ConfigError, load_config

    overrides = [f"model.hf_path={tiny_model}", f"model.override_config={{rope_theta: {THETA}}}"]
    with pytest.raises(ConfigError, match="override rope_parameters instead"):
        load_config("examples/configs/tiny_cpu.yaml", overrides)  # the model checks run with check_env
