"""FP8 keys of the config: rollout.quantization (TIS on by default, a GPU for the in-process engine, the SGLang
server args it maps to) and the fp8_param rule. Pure config, fast; no SGLang engine is started."""

from __future__ import annotations

import pytest

from megatron_hapo.config import collect_issues
from megatron_hapo.config.loader import compose
from megatron_hapo.config.schema import FP8_ROLLOUT_DEFAULT_TIS_CAP
from megatron_hapo.rollout.serving import engine_server_args

from .conftest import probe

REQUIRED = ["model.hf_path=m", "data.train_files=[t.jsonl]"]


def cfg_of(*overrides):
    return compose(None, [*REQUIRED, *overrides])


def issues(*overrides, check_env=False, **kw):
    loaded = cfg_of(*overrides)
    return collect_issues(loaded.cfg, world_size=8, origins=loaded.origins, check_env=check_env, **kw)


def test_rollout_quantization_defaults_off_and_tis_stays_off():
    cfg = cfg_of().cfg
    assert cfg.rollout.quantization is None and cfg.algorithm.loss.tis_cap is None
    assert "quantization" not in engine_server_args(cfg)


def test_fp8_rollout_turns_tis_on_by_default():
    cfg = cfg_of("rollout.quantization=fp8").cfg
    assert cfg.algorithm.loss.tis_cap == FP8_ROLLOUT_DEFAULT_TIS_CAP == 2.0


def test_fp8_rollout_keeps_an_explicit_tis_cap():
    assert cfg_of("rollout.quantization=fp8", "algorithm.loss.tis_cap=5.0").cfg.algorithm.loss.tis_cap == 5.0


def test_unknown_quantization_is_rejected_at_load():
    from megatron_hapo.config import ConfigError

    with pytest.raises(ConfigError, match="rollout.quantization"):
        cfg_of("rollout.quantization=int4")


FLASHRL = "rollout.fp8_format=flashrl"


def test_fp8_rollout_server_args():
    # blockwise (default): the FP8 copy of the checkpoint is loaded for real, block size from its config
    assert engine_server_args(cfg_of("rollout.quantization=fp8").cfg) == {
        "dtype": "bfloat16",
        "quantization": "fp8",
    }
    args = engine_server_args(cfg_of("rollout.quantization=fp8", "model.load_weights=false").cfg)
    assert "load_format" not in args
    args = engine_server_args(cfg_of("rollout.quantization=fp8", FLASHRL).cfg)
    assert args == {"dtype": "bfloat16", "quantization": "fp8", "load_format": "flash_rl"}
    # weights arriving by sync: FlashRL still needs the real initial load, so dummy is replaced
    args = engine_server_args(cfg_of("rollout.quantization=fp8", FLASHRL, "model.load_weights=false").cfg)
    assert args["load_format"] == "flash_rl"
    assert engine_server_args(cfg_of("model.load_weights=false").cfg) == {
        "dtype": "bfloat16",
        "load_format": "dummy",
    }


def test_server_args_are_valid_sglang_choices():
    from sglang.srt.server_args import LOAD_FORMAT_CHOICES, QUANTIZATION_CHOICES

    args = engine_server_args(cfg_of("rollout.quantization=fp8", FLASHRL).cfg)
    assert args["quantization"] in QUANTIZATION_CHOICES and args["load_format"] in LOAD_FORMAT_CHOICES


def test_fp8_inprocess_rollout_needs_a_gpu():
    found = issues("rollout.quantization=fp8", check_env=True, probe=probe(cap=None))
    hit = [i for i in found if i.key == "rollout.quantization"]
    assert (
        len(hit) == 1
        and "needs a CUDA GPU" in hit[0].message
        and "rollout.quantization=null" in hit[0].message
    )
    assert "command line (rollout.quantization=fp8)" in hit[0].source
    found = issues("rollout.quantization=fp8", check_env=True, probe=probe(cap=(9, 0)))
    assert not [i for i in found if i.key == "rollout.quantization"]


def test_fp8_param_needs_the_distributed_optimizer():
    bad = issues("precision.fp8=e4m3", "precision.fp8_param=true", "parallel.use_distributed_optimizer=false")
    assert [i.key for i in bad] == ["precision.fp8_param, parallel.use_distributed_optimizer"]
    assert issues("precision.fp8=e4m3", "precision.fp8_param=true") == []


def test_fp8_training_without_te_names_the_key_and_the_fix():
    found = issues(
        "precision.fp8=hybrid", check_env=True, probe=probe(te="ModuleNotFoundError: transformer_engine")
    )
    msg = [i for i in found if i.key == "precision.fp8"]
    assert len(msg) == 1
    assert "precision.fp8=null" in msg[0].message and "never silently falls back to bf16" in msg[0].message


def _fp8_rollout_issues(tmp_path, config: dict, *overrides):
    import json

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(config))
    loaded = compose(
        None, [f"model.hf_path={model}", "data.train_files=[t.jsonl]", "rollout.quantization=fp8", *overrides]
    )
    found = collect_issues(loaded.cfg, world_size=8, origins=loaded.origins, check_env=True, probe=probe())
    return [i for i in found if i.key.startswith("rollout.quantization")]


# Qwen2.5-7B's linear sizes: q 3584 = 28 x 128, k/v 512, MLP 18944 = 148 x 128
QWEN7B = {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584, "num_attention_heads": 28,
          "num_key_value_heads": 4, "num_hidden_layers": 28, "intermediate_size": 18944}  # fmt: skip


@pytest.mark.parametrize("tp, ok", [(4, True), (8, False)])
def test_blockwise_fp8_rollout_checks_the_block_layout(tmp_path, tp, ok):
    hit = _fp8_rollout_issues(tmp_path, QWEN7B, f"rollout.tensor_parallel_size={tp}")
    assert (hit == []) if ok else (len(hit) == 1 and "fp8_format=flashrl" in hit[0].message)


def test_blockwise_fp8_rollout_refuses_llama(tmp_path):
    hit = _fp8_rollout_issues(tmp_path, dict(QWEN7B, architectures=["LlamaForCausalLM"]))
    assert len(hit) == 1 and "LlamaForCausalLM" in hit[0].message


@pytest.mark.parametrize("arch, ok", [("Qwen2ForCausalLM", True), ("LlamaForCausalLM", False)])
def test_fp8_rollout_needs_a_flash_rl_architecture(tmp_path, arch, ok):
    import json

    model = tmp_path / "m"
    model.mkdir()
    shape = {"num_attention_heads": 8, "num_key_value_heads": 2, "num_hidden_layers": 4}
    (model / "config.json").write_text(json.dumps({"architectures": [arch], **shape}))
    loaded = compose(
        None, [f"model.hf_path={model}", "data.train_files=[t.jsonl]", "rollout.quantization=fp8", FLASHRL]
    )
    found = collect_issues(loaded.cfg, world_size=8, origins=loaded.origins, check_env=True, probe=probe())
    hit = [i for i in found if i.key == "rollout.quantization"]
    if ok:
        assert hit == []
    else:
        assert len(hit) == 1 and "LlamaForCausalLM" in hit[0].message and "FlashRL" in hit[0].message
