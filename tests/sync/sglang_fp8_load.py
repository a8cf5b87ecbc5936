"""Load blockwise FP8 folders into SGLang's real model classes on CPU; print a JSON report (run as a script).

    python tests/sync/sglang_fp8_load.py FP8_DIR HF_DIR [FP8_DIR HF_DIR ...]

Run in its own process by ``test_fp8_blockwise.py``: SGLang's model-parallel state is process-global (world of one,
gloo). For each pair it builds the SGLang model class named by config.json's ``architectures`` with
``Fp8Config.from_config(config["quantization_config"])`` (``Fp8LinearMethod.create_weights`` runs on CPU), feeds
every tensor of ``FP8_DIR`` through the model's own ``load_weights`` (the call ``update_weights_from_tensor``
makes), then checks what landed in SGLang's fused parameters against ``HF_DIR``'s unquantised weights, with
SGLang's own ``block_quant_dequant``. A second ``load_weights`` of a 0.7x-scaled model, quantised on the way by
``fp8_rollout_stream``, checks that a sync replaces the FP8 weights and scales in place.

Not run: ``process_weights_after_loading`` and the forward pass; on CPU SGLang's block-FP8 linear asserts Intel AMX +
sgl_kernel (``Fp8LinearMethod.process_weights_after_loading_block_quant``, ``_is_cpu`` branch), absent here.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import torch

SYNC_SCALE = 0.7
_SGLANG_CLASSES = {
    "Qwen2ForCausalLM": "sglang.srt.models.qwen2",
    "Qwen3ForCausalLM": "sglang.srt.models.qwen3",
    "LlamaForCausalLM": "sglang.srt.models.llama",
}
# HF linear -> (SGLang fused parameter prefix, position among the fused parts)
_FUSED = {
    "self_attn.q_proj": ("self_attn.qkv_proj", 0),
    "self_attn.k_proj": ("self_attn.qkv_proj", 1),
    "self_attn.v_proj": ("self_attn.qkv_proj", 2),
    "self_attn.o_proj": ("self_attn.o_proj", 0),
    "mlp.gate_proj": ("mlp.gate_up_proj", 0),
    "mlp.up_proj": ("mlp.gate_up_proj", 1),
    "mlp.down_proj": ("mlp.down_proj", 0),
}


def _check(fp8_dir: str, hf_dir: str) -> dict:
    from sglang.srt.layers.quantization.fp8 import Fp8Config, Fp8LinearMethod
    from sglang.srt.layers.quantization.fp8_utils import block_quant_dequant
    from transformers import AutoConfig

    from megatron_hapo.checkpoint_io.hf_io import HFCheckpointReader
    from megatron_hapo.sync.fp8 import fp8_rollout_stream

    cfg_json = json.loads(Path(fp8_dir, "config.json").read_text())
    quant = Fp8Config.from_config(cfg_json["quantization_config"])
    hf_config = AutoConfig.from_pretrained(fp8_dir)
    arch = hf_config.architectures[0]
    cls = getattr(importlib.import_module(_SGLANG_CLASSES[arch]), arch)
    torch.set_default_dtype(torch.bfloat16)  # what SGLang's loader does (set_default_torch_dtype)
    try:
        model = cls(hf_config, quant_config=quant)
    finally:
        torch.set_default_dtype(torch.float32)
    params = dict(model.named_parameters())
    methods = {type(m.quant_method).__name__ for m in model.modules() if getattr(m, "quant_method", None)}

    fp8 = HFCheckpointReader(fp8_dir)
    names = sorted(fp8.names())
    loaded = model.load_weights([(n, fp8.get(n)) for n in names])
    scale_params = {n: p for n, p in params.items() if n.endswith("weight_scale_inv")}
    unset = [n for n, p in scale_params.items() if (p == torch.finfo(torch.float32).min).any()]

    hf = HFCheckpointReader(hf_dir)
    block = quant.weight_block_size

    def fused_reference(layer: int, fused: str, scale: float = 1.0) -> torch.Tensor:
        parts = [h for h, (f, _) in sorted(_FUSED.items(), key=lambda kv: kv[1][1]) if f == fused]
        return torch.cat([hf.get(f"model.layers.{layer}.{h}.weight").float() * scale for h in parts])

    def worst_rel_err(scale: float = 1.0) -> tuple[float, int]:
        worst, count = 0.0, 0
        for layer in range(hf_config.num_hidden_layers):
            for fused in sorted({f for f, _ in _FUSED.values()}):
                prefix = f"model.layers.{layer}.{fused}"
                w, s = params[prefix + ".weight"].data, params[prefix + ".weight_scale_inv"].data
                deq = block_quant_dequant(w, s, block, torch.float32)
                ref = fused_reference(layer, fused, scale)
                worst = max(worst, ((deq - ref).norm() / ref.norm()).item())
                count += 1
        return worst, count

    err, n_fused = worst_rel_err()
    sample = "model.layers.0.self_attn.qkv_proj"
    before = params[sample + ".weight_scale_inv"].data.clone()
    # a sync: 0.7x weights quantised on the way, loaded through the same load_weights
    model.load_weights(fp8_rollout_stream((n, hf.get(n) * SYNC_SCALE) for n in sorted(hf.names())))
    err_sync, _ = worst_rel_err(SYNC_SCALE)
    ratio = (params[sample + ".weight_scale_inv"].data / before).flatten().tolist()
    return {
        "arch": arch,
        "weight_block_size": quant.weight_block_size,
        "is_checkpoint_fp8_serialized": quant.is_checkpoint_fp8_serialized,
        "activation_scheme": quant.activation_scheme,
        "quant_methods": sorted(methods),
        "fp8_linear_method": Fp8LinearMethod.__name__ in methods,
        "fp8_params": sorted(n for n, p in params.items() if p.dtype == torch.float8_e4m3fn),
        "scale_shapes": {n: list(p.shape) for n, p in scale_params.items()},
        "unset_scales": unset,
        "loaded": sorted(loaded or []),
        "n_checkpoint_tensors": len(names),
        "max_rel_err_fused": err,
        "n_fused_checked": n_fused,
        "max_rel_err_after_sync": err_sync,
        "scale_ratio_after_sync": ratio,
    }


def main(argv: list[str]) -> int:
    from sglang.test.layer_ut_utils import init_single_process_dist

    init_single_process_dist(master_port=int(argv[0]))
    pairs = argv[1:]
    reports = [_check(pairs[i], pairs[i + 1]) for i in range(0, len(pairs), 2)]
    print("REPORT " + json.dumps(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
