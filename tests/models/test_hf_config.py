"""HF config -> ModelArch: every family, transformers 4.x and 5.x RoPE keys, unsupported inputs, layouts."""

import json

import pytest

from megatron_hapo.models import (
    Llama3RopeScaling,
    ParallelLayoutError,
    UnsupportedArchitectureError,
    load_arch,
)
from megatron_hapo.models.known_configs import known_config

# A Llama 3.1-style config.json as transformers 4.x wrote it (rope_theta / rope_scaling at top level).
LLAMA31_V4 = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_hidden_layers": 32,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
# Qwen2.5-Math-7B's config.json (the fields that matter)
QWEN25_MATH_7B = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "num_hidden_layers": 28,
    "vocab_size": 152064,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "use_sliding_window": False,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def test_llama31_config_json_from_transformers_4(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA31_V4))
    arch = load_arch(tmp_path)
    assert (arch.family, arch.num_layers, arch.num_kv_heads, arch.head_dim) == ("llama", 32, 8, 128)
    assert arch.rope_theta == 500000.0 and arch.norm_eps == 1e-5 and arch.dtype == "bfloat16"
    assert arch.rope_scaling == Llama3RopeScaling(8.0, 1.0, 4.0, 8192)
    assert not arch.qkv_bias and not arch.qk_norm and not arch.tie_word_embeddings
    assert arch.padded_vocab_size(1) == 128256 and arch.padded_vocab_size(8) == 129024


def test_qwen25_math_7b_and_a_transformers_5_config_object():
    from transformers import Qwen2Config, Qwen3Config

    arch = load_arch(QWEN25_MATH_7B)
    assert (
        arch.family == "qwen2" and arch.qkv_bias and arch.rope_theta == 10000.0 and arch.rope_scaling is None
    )
    assert (arch.num_attention_heads, arch.num_kv_heads, arch.head_dim, arch.heads_per_group) == (
        28,
        4,
        128,
        7,
    )
    arch.check_layout(4, 4)
    # transformers 5 keeps rope_theta under rope_parameters; the config object path reads it there
    cfg = Qwen3Config(
        hidden_size=1024, num_attention_heads=16, num_key_value_heads=8, head_dim=128, rope_theta=1e6
    )
    assert "rope_theta" in cfg.rope_parameters
    q3 = load_arch(cfg)
    assert q3.family == "qwen3" and q3.qk_norm and not q3.qkv_bias
    assert q3.head_dim == 128 != q3.hidden_size // q3.num_attention_heads and q3.rope_theta == 1e6
    assert load_arch(Qwen2Config(tie_word_embeddings=True)).tie_word_embeddings


def test_vocab_padding_rounds_up_to_128_x_tp():
    arch = load_arch({**QWEN25_MATH_7B, "vocab_size": 300})
    assert [arch.padded_vocab_size(tp) for tp in (1, 2, 4)] == [384, 512, 512]
    assert arch.padded_vocab_size(1, divisible_by=64) == 320


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "model_type 'gpt2'"),
        ({"architectures": ["Qwen2ForSequenceClassification"]}, "only Qwen2ForCausalLM"),
        ({"use_sliding_window": True}, "use_sliding_window"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "RoPE type 'yarn'"),
    ],
)
def test_unsupported_architectures_are_named(change, message):
    with pytest.raises(UnsupportedArchitectureError, match="not supported|only|unsupported") as err:
        load_arch({**QWEN25_MATH_7B, **change})
    assert message in str(err.value)


def test_llama_attention_bias_is_rejected():
    with pytest.raises(UnsupportedArchitectureError, match="attention_bias=True"):
        load_arch({**LLAMA31_V4, "attention_bias": True})


def test_layouts_that_cannot_split_the_model():
    arch = load_arch(QWEN25_MATH_7B)  # 4 KV heads, 28 layers
    with pytest.raises(ParallelLayoutError, match=r"TP=8 does not divide the number of KV heads \(4\)"):
        arch.check_layout(8, 1)
    with pytest.raises(ParallelLayoutError, match=r"PP=3 does not divide the number of layers \(28\)"):
        arch.check_layout(1, 3)


def test_missing_config_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_arch(tmp_path)


# Qwen3-30B-A3B's config.json: the dry run's table of published configs, with the keys it leaves at defaults
QWEN3_30B_A3B = {
    **known_config("Qwen3-30B-A3B"),
    "architectures": ["Qwen3MoeForCausalLM"],
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
}


def test_qwen3_moe_reads_its_experts_and_splits_them_over_tp():
    arch = load_arch(QWEN3_30B_A3B)
    assert arch.family == "qwen3_moe" and arch.qk_norm and not arch.qkv_bias
    assert (arch.moe.num_experts, arch.moe.top_k, arch.moe.expert_ffn_hidden_size) == (128, 8, 768)
    assert arch.moe.norm_topk_prob and arch.mlp_size == 768  # TP splits each expert, not the unused dense MLP
    arch.check_layout(4, 2)
    with pytest.raises(ParallelLayoutError, match=r"TP=4 does not divide the MLP size \(102\)"):
        load_arch({**QWEN3_30B_A3B, "moe_intermediate_size": 102}).check_layout(4, 1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mlp_only_layers": [0]}, "dense layers between the MoE layers are not mapped"),
        ({"decoder_sparse_step": 2}, "dense layers between the MoE layers are not mapped"),
        ({"attention_bias": True}, "attention_bias=True"),
    ],
)
def test_qwen3_moe_variants_the_mapping_does_not_cover_are_named(change, message):
    with pytest.raises(UnsupportedArchitectureError, match="unsupported qwen3_moe variant") as err:
        load_arch({**QWEN3_30B_A3B, **change})
    assert message in str(err.value)
