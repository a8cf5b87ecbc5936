"""Tiny random HF checkpoints of each supported family, shaped to exercise every mapping rule.

Built on ``megatron_hapo.demo.tiny_models.make_tiny_hf_model`` (config + locally trained tokenizer), then
re-initialised from a modified config:

* vocab 300: not a multiple of 128, so Megatron pads it (384 at TP=1, 512 at TP=2);
* initializer_range 0.3 and random norm weights / biases, so logits are O(1) and a wrong mapping
  (swapped gate/up, mis-interleaved QKV, missing bias) shows up far above the 1e-4 tolerance;
* llama: llama3 RoPE scaling with original_max_position_embeddings=64, so at 16 tokens low, medium
  and high frequencies all take different branches (and Megatron's hard-coded 8192 would be wrong);
* qwen2: q/k/v biases, tied embeddings; qwen3: q/k norms and head_dim 24 != hidden / heads = 16;
* qwen3_moe: qwen3's attention and 8 experts of MLP size 32, 2 per token, in every layer.
"""

from __future__ import annotations

from pathlib import Path

import torch

from megatron_hapo.demo.tiny_models import make_tiny_hf_model

VOCAB = 300
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
# family -> (tie_word_embeddings, config overrides)
FAMILIES: dict[str, tuple[bool, dict]] = {
    "llama": (False, {"rope_parameters": LLAMA3_ROPE}),
    "qwen2": (True, {}),
    "qwen3": (False, {"head_dim": 24}),
    "qwen3_moe": (False, {"head_dim": 24}),
}


def make_family_model(out_dir: str | Path, family: str, *, tie: bool | None = None, seed: int = 0) -> Path:
    """Write a 2-layer, hidden-64 fp32 ``family`` model (+ tokenizer) to ``out_dir``; returns the path."""
    from transformers import AutoConfig, AutoModelForCausalLM

    default_tie, overrides = FAMILIES[family]
    tie = default_tie if tie is None else tie
    out = make_tiny_hf_model(
        out_dir, family=family, vocab_size=VOCAB, tie_word_embeddings=tie, seed=seed, dtype="float32"
    )
    base = AutoConfig.from_pretrained(out)
    fields = {**base.to_dict(), "initializer_range": 0.3, **overrides}
    fields.pop("model_type", None)
    config = AutoConfig.for_model(family, **fields)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        model = AutoModelForCausalLM.from_config(config).float()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.copy_(1.0 + 0.3 * torch.randn_like(p))  # HF inits norms to 1: perturb so they matter
                elif name.endswith(".bias"):
                    p.copy_(0.3 * torch.randn_like(p))  # HF inits biases to 0
    model.save_pretrained(out)
    return out
