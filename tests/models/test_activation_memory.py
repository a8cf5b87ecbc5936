"""The dry run's activation memory per layer (``config/plan.py::layer_activations``) against what the real
Megatron layer saves for its backward (``models/activation_memory.py``), byte for byte, for a grouped-query
and a plain multi-head model and a mixture of experts with Qwen3's q/k norms, under SDPA and unfused
attention. On the CPU the norms are left out: ``torch.rms_norm`` there decomposes into fp32 operations that
keep fp32 copies, where CUDA's fused kernel keeps the bf16 input and 1/rms (what the plan counts); the GPU
variant checks them too (benchmarks/gpu/run_all.sh)."""

from __future__ import annotations

import pytest
import torch

from tests.parallel_utils import world_of_one

TOKENS = 256  # one row (a packed row or a single sequence), causal
BASE = {
    "model_type": "qwen2", "rope_theta": 1e4, "rms_norm_eps": 1e-6, "vocab_size": 512, "hidden_size": 256,
    "intermediate_size": 704, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
    "max_position_embeddings": 4096, "tie_word_embeddings": False,
}  # fmt: skip
MODELS = {
    "grouped-query": {},
    "multi-head": {"num_key_value_heads": 8},
    "moe-qk-norm": {
        "model_type": "qwen3_moe",
        "head_dim": 32,
        "moe_intermediate_size": 96,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "norm_topk_prob": True,
    },
}


def _measured_and_planned(
    model: str, attention: str, device_mode: bool, packed: bool = False, **config_overrides
):
    """(bytes per token the last layer saved by part, the plan's LayerActivations, the s^2 bytes), for one
    row of TOKENS tokens: one sequence (causal, no mask) or two packed sequences (a block-diagonal mask)."""
    from megatron_hapo.config.plan import MicroBatchShape, layer_activations
    from megatron_hapo.models.activation_memory import layer_bytes_per_token
    from megatron_hapo.models.builder import build_gpt_model
    from megatron_hapo.models.hf_config import load_arch
    from megatron_hapo.parallel import compute_device

    hf = {**BASE, **MODELS[model]}
    with world_of_one(device_mode=device_mode):
        torch.manual_seed(0)
        gpt = build_gpt_model(
            hf, params_dtype=torch.bfloat16, spec="local", local_attention=attention, post_process=False,
            config_overrides=config_overrides,
        )  # fmt: skip
        device = compute_device()
        ids = torch.randint(0, BASE["vocab_size"], (1, TOKENS), device=device)
        positions, mask = torch.arange(TOKENS, device=device)[None], None
        if packed:  # two sequences of TOKENS / 2: each attends causally to itself only (True = masked)
            half = TOKENS // 2
            positions = positions % half
            same = (torch.arange(TOKENS, device=device) // half)[:, None] == (
                torch.arange(TOKENS, device=device) // half
            )
            mask = ~(same & torch.ones(TOKENS, TOKENS, dtype=torch.bool, device=device).tril())[None, None]
        measured = layer_bytes_per_token(gpt, ids, positions, mask)
    arch = load_arch(hf)
    one_row = MicroBatchShape(TOKENS, TOKENS**2, attention, packed, "")
    squares = one_row.attention_bytes_per_layer(arch.num_attention_heads, 1) / TOKENS
    return measured, layer_activations(arch, attention, masked=packed), squares


@pytest.mark.parametrize("packed", [False, True], ids=["one-sequence", "packed"])
@pytest.mark.parametrize("attention", ["sdpa", "unfused"])
@pytest.mark.parametrize("model", list(MODELS))
def test_the_plan_counts_what_each_layer_saves_for_its_backward(model, attention, packed):
    measured, plan, squares = _measured_and_planned(model, attention, device_mode=True, packed=packed)
    assert measured["attention"] == plan.attention + squares, measured
    assert measured["mlp"] == plan.mlp, measured
    assert measured["other"] == 0, measured


@pytest.mark.parametrize("packed", [False, True], ids=["one-sequence", "packed"])
@pytest.mark.parametrize("attention", ["sdpa", "unfused"])
def test_selective_recompute_keeps_the_core_attentions_inputs(attention, packed):
    """recompute_granularity=selective (Megatron: the core attention): no s^2 terms, and the checkpoint keeps
    q, k and V's view of linear_qkv's output. With SDPA on one-sequence rows that is more than no recompute
    keeps (docs/training.md)."""
    from megatron_hapo.config.plan import layer_activations
    from megatron_hapo.models.hf_config import load_arch

    measured, _, _ = _measured_and_planned(
        "grouped-query", attention, True, packed, recompute_granularity="selective"
    )
    plan = layer_activations(load_arch(BASE), attention, masked=packed, recompute_core_attention=True)
    assert abs(measured["attention"] - plan.attention) * TOKENS <= 8, measured  # and a scalar per layer
    assert measured["mlp"] == plan.mlp, measured
    if attention == "sdpa" and not packed:
        assert plan.attention > layer_activations(load_arch(BASE), attention).attention


def _gradients(**config_overrides) -> dict[str, torch.Tensor]:
    """fp32 gradients of a two-layer model's mean squared output on a fixed batch."""
    from megatron_hapo.models.builder import build_gpt_model

    with world_of_one():
        torch.manual_seed(0)
        gpt = build_gpt_model(
            BASE, local_attention="sdpa", post_process=False, config_overrides=config_overrides
        )
        ids = torch.randint(0, BASE["vocab_size"], (2, 64))
        gpt(ids, torch.arange(64).expand(2, 64), None).pow(2).mean().backward()
        return {name: p.grad for name, p in gpt.named_parameters()}


def test_swiglu_is_one_function_that_keeps_its_input_only():
    """bias_activation_fusion (models/builder.py): the plain expression would keep silu(gate), the gated half
    and their product besides fc1's output, 4 F bytes per token more; the fused one gives the same update."""
    fused, plan, _ = _measured_and_planned("grouped-query", "sdpa", device_mode=True)
    plain, _, _ = _measured_and_planned("grouped-query", "sdpa", True, bias_activation_fusion=False)
    assert plain["mlp"] - fused["mlp"] == 4 * BASE["intermediate_size"]
    assert fused["mlp"] == plan.mlp
    want, got = _gradients(bias_activation_fusion=False), _gradients()
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.gpu
@pytest.mark.parametrize("packed", [False, True], ids=["one-sequence", "packed"])
@pytest.mark.parametrize("attention", ["sdpa", "unfused"])
@pytest.mark.parametrize("model", list(MODELS))
def test_on_cuda_the_plan_counts_what_each_layer_saves_norms_included(model, attention, packed):
    measured, plan, squares = _measured_and_planned(model, attention, device_mode=False, packed=packed)
    for part, want in (("norms", plan.norms), ("attention", plan.attention + squares), ("mlp", plan.mlp)):
        assert measured[part] == pytest.approx(want, rel=0.02), (part, measured)
