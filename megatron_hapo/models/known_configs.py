"""config.json facts of the paper's models (and Qwen3-30B-A3B), for planning a run without the checkpoint on disk.

Dry runs (``hapo-train --dry-run``) read the model's own config.json when ``model.hf_path`` is a
local directory; otherwise they look the name up here. Values are those of the published HF configs.
"""

from __future__ import annotations

from typing import Any

_QWEN25_MATH = {"model_type": "qwen2", "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "vocab_size": 151936}
_QWEN3 = {"model_type": "qwen3", "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "vocab_size": 151936,
          "head_dim": 128, "max_position_embeddings": 32768, "tie_word_embeddings": False}  # fmt: skip
_LLAMA3 = {"model_type": "llama", "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "vocab_size": 128256,
           "max_position_embeddings": 131072}  # fmt: skip


def _llama3_scaling(factor: float) -> dict:
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}  # fmt: skip


KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    # HAPO trains context-extended copies (starriver030515/...-16k / -32k); only the context differs
    "Qwen2.5-Math-1.5B": {
        **_QWEN25_MATH,
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "max_position_embeddings": 16384,
        "tie_word_embeddings": True,
    },  # fmt: skip
    "Qwen2.5-Math-7B": {
        **_QWEN25_MATH,
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": False,
    },  # fmt: skip
    "Qwen3-8B-Base": {
        **_QWEN3,
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
    },  # fmt: skip
    "Qwen3-14B-Base": {
        **_QWEN3,
        "hidden_size": 5120,
        "intermediate_size": 17408,
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
        "num_key_value_heads": 8,
    },  # fmt: skip
    "Qwen3-30B-A3B": {  # a mixture of experts: 128 experts of MLP size 768, 8 per token, in every layer
        **_QWEN3,
        "model_type": "qwen3_moe",
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "moe_intermediate_size": 768,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "norm_topk_prob": True,
        "num_hidden_layers": 48,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "max_position_embeddings": 40960,
    },  # fmt: skip
    "Llama-3.1-8B-Instruct": {
        **_LLAMA3,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "rope_scaling": _llama3_scaling(8.0),
        "tie_word_embeddings": False,
    },  # fmt: skip
    "Llama-3.2-3B-Instruct": {
        **_LLAMA3,
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "rope_scaling": _llama3_scaling(32.0),
        "tie_word_embeddings": True,
    },  # fmt: skip
}


def known_config(hf_path: str) -> dict[str, Any] | None:
    """The table entry whose name ends ``hf_path`` (``Qwen/Qwen2.5-Math-7B``, ``.../Qwen2.5-Math-7B-32k``)."""
    name = hf_path.rstrip("/").split("/")[-1]
    for key, cfg in KNOWN_CONFIGS.items():
        if name == key or name.startswith(key + "-"):
            return dict(cfg)
    return None
