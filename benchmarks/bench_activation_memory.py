"""What one transformer layer of the paper's models keeps for its backward, per token: measured on the real
Megatron layer (``models/activation_memory.py``) with SwiGLU fused (the builder's default) and as the plain
expression, against the dry run's plan (``config/plan.py::layer_activations``) and Korthikanti et al.'s 34 h.

    python benchmarks/bench_activation_memory.py [--tokens 4096] [--device cpu|cuda] [--models ...]

One row of ``--tokens`` tokens (causal), bf16, random weights, one layer of each model at TP = 1 with the
local spec. On the CPU the norms are left out of the comparison (``torch.rms_norm`` keeps fp32 copies
there; CUDA's fused kernel keeps the bf16 input and 1/rms, which the plan counts): the table shows them
apart. A mixture of experts is measured with 16 of its experts (the bytes per token do not depend on how
many there are; building 128 of them would only cost time).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from bench_common import header, pick_device  # noqa: E402

MODELS = ["Qwen2.5-Math-1.5B", "Qwen2.5-Math-7B", "Qwen3-8B-Base", "Llama-3.1-8B-Instruct", "Qwen3-30B-A3B"]


def measure(hf: dict, attention: str, tokens: int, fused: bool, device: str) -> dict[str, float]:
    """Bytes per token the model's one layer saved for the backward, by part."""
    import megatron_hapo.parallel as hp
    from megatron_hapo.models.activation_memory import layer_bytes_per_token
    from megatron_hapo.models.builder import build_gpt_model

    with hp.device_mode() if device == "cpu" else torch.device("cuda"):
        gpt = build_gpt_model(
            hf, params_dtype=torch.bfloat16, spec="local", local_attention=attention, post_process=False,
            config_overrides={"bias_activation_fusion": fused},
        )  # fmt: skip
        ids = torch.randint(0, hf["vocab_size"], (1, tokens), device=hp.compute_device())
        positions = torch.arange(tokens, device=hp.compute_device())[None]
        return layer_bytes_per_token(gpt, ids, positions)


def main() -> None:
    import megatron_hapo.parallel as hp
    from megatron_hapo.config.plan import MicroBatchShape, layer_activations
    from megatron_hapo.models.hf_config import load_arch
    from megatron_hapo.models.known_configs import known_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--device", choices=["cpu", "cuda"])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--attention", nargs="+", default=["sdpa"], choices=["sdpa", "unfused"])
    args = parser.parse_args()
    device = pick_device(args.device)
    started = time.time()
    hp.init_distributed()
    hp.initialize_model_parallel(1, 1)
    header("bench_activation_memory (bytes one layer keeps for the backward, per token)", device)
    print(f"# one row of {args.tokens} tokens, bf16, local spec, TP 1; KB = 1000 bytes")
    print()
    print(
        "| model | attention | norms (measured / plan) | attention + MLP, plain SwiGLU | fused SwiGLU (the "
        "default) | plan | 34 h |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in args.models:
        hf = dict(known_config(name), num_hidden_layers=1, vocab_size=1024, tie_word_embeddings=False)
        if "num_experts" in hf:
            hf["num_experts"] = 16
        arch = load_arch(hf)
        for attention in args.attention:
            torch.manual_seed(0)
            plain, fused = (measure(hf, attention, args.tokens, f, device) for f in (False, True))
            plan = layer_activations(arch, attention)
            one_row = MicroBatchShape(args.tokens, args.tokens**2, attention, False, "")
            squares = one_row.attention_bytes_per_layer(arch.num_attention_heads, 1) / args.tokens
            planned = plan.attention + squares + plan.mlp
            kb = lambda parts: (parts["attention"] + parts["mlp"] + parts["other"]) / 1e3  # noqa: E731
            print(
                f"| {name} | {attention} | {fused['norms'] / 1e3:.1f} / {plan.norms / 1e3:.1f} KB | "
                f"{kb(plain):.1f} KB | {kb(fused):.1f} KB | {planned / 1e3:.1f} KB | "
                f"{34 * arch.hidden_size / 1e3:.1f} KB |"
            )
    print(f"\n# total {time.time() - started:.0f} s")
    hp.destroy_model_parallel()


if __name__ == "__main__":
    main()
