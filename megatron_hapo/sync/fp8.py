"""Blockwise (128x128) FP8 weights for SGLang rollout: quantise on the way through the weight sync.

Format (DeepSeek-V3 style, what SGLang 0.5.23 serves with ``quantization="fp8"`` from an FP8-serialised
checkpoint; read from ``sglang/srt/layers/quantization/fp8.py``):

* ``config.json["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
  "weight_block_size": [128, 128]}`` (:data:`BLOCKWISE_FP8_QUANT_CONFIG`). ``Fp8Config.from_config`` turns it into
  ``is_checkpoint_fp8_serialized=True, weight_block_size=[128, 128]``; block quantisation needs both and the
  dynamic activation scheme (``Fp8Config.__init__``).
* every linear that SGLang builds with ``Fp8LinearMethod`` (all ``LinearBase`` layers: q/k/v/o and gate/up/down
  projections; not the embedding nor ``lm_head``, which are ``VocabParallelEmbedding``) owns
  ``weight`` ``float8_e4m3fn [out, in]`` and ``weight_scale_inv`` ``float32 [ceil(out/128), ceil(in/128)]``
  (``Fp8LinearMethod.create_fp8_weight_``, ``BlockQuantScaleParameter``). The scale is the *dequantisation*
  factor despite its name: ``W ~= W_fp8 * weight_scale_inv`` blockwise (``fp8_utils.block_quant_dequant``).
* checkpoint names are the HF ones (``...q_proj.weight`` / ``...q_proj.weight_scale_inv``). The model's
  ``load_weights`` routes both through the same stacked mapping (``auto_loader.STANDARD_QKV_MAPPING`` /
  ``STANDARD_GATE_UP_MAPPING``: ``q_proj`` -> ``qkv_proj`` shard ``"q"``, ...), and the fused layer's
  ``weight_loader_v2`` places a ``BlockQuantScaleParameter`` shard at row offset ``ceil(offset / 128)`` with
  ``ceil(size / 128)`` rows (``QKVParallelLinear`` / ``MergedColumnParallelLinear`` in ``layers/linear.py``). That is
  only consistent when each fused part's output size is a multiple of 128, which ``validate_block_quant_shapes``
  enforces at start-up (and, with TP > 1, every per-rank partition): see :func:`blockwise_layout_problems`.
  Qwen2/2.5/Qwen3 route the scale names this way; SGLang 0.5.23's Llama does not (it renames
  ``.weight_scale_inv`` to ``.weight_scale``), see :data:`BLOCKWISE_FP8_ARCHITECTURES`.

Quantisation (:func:`quantize_blockwise`), per 128x128 block ``B`` of ``W`` (zero-padded at the edges):

    s_B = max(amax(|W_B|), AMAX_FLOOR) / 448          (fp32; 448 = max finite float8_e4m3fn)
    W_fp8[B] = clamp(W_B / s_B, -448, 448).to(float8_e4m3fn)      (round to nearest even)
    weight_scale_inv[B] = s_B

E4M3 keeps 3 mantissa bits, so every element whose scaled value is normal (``|W/s| >= 2^-6``) is reproduced to a
relative error of at most ``2^-4``; smaller ones (E4M3 subnormals, step ``2^-9``) to an absolute error of at most
``2^-10 * s_B``. Hence ``|W - W_fp8 * s| <= 2^-4 |W| + 2^-10 s_B`` elementwise (tested).

slime (THUDM/slime) does the same "quantise on the way" for FP8 rollout: its weight update converts Megatron
tensors to HF names and, when the HF checkpoint's ``quantization_config`` is ``fp8`` with ``weight_block_size``,
replaces each transformer-layer linear ``.weight`` by an FP8 tensor plus ``.weight_scale_inv``
(``slime/backends/megatron_utils/megatron_to_hf/processors/quantizer.py::_quantize_params_fp8``, Triton kernel
``blockwise_cast_to_fp8_triton``). This module is a torch-only implementation of that format (runs on CPU or GPU).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_E4M3_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448.0
BLOCK = 128
# amax floor for all-zero (or denormal-tiny) blocks: keeps the scale finite and > 0 so 0 / s = 0 and the
# serving kernels never see a zero or NaN scale. 1e-12 / 448 ~ 2.2e-15 is a normal fp32.
AMAX_FLOOR = 1e-12
SCALE_SUFFIX = "_scale_inv"  # "<linear>.weight" -> "<linear>.weight_scale_inv" (SGLang's name)

BLOCKWISE_FP8_QUANT_CONFIG: dict[str, Any] = {
    "quant_method": "fp8",
    "fmt": "e4m3",
    "activation_scheme": "dynamic",
    "weight_block_size": [BLOCK, BLOCK],
}

# Which HF tensors are quantised: exactly the weights of the linears that SGLang builds as ``LinearBase`` in the
# decoder layers of the Llama / Qwen2 / Qwen2.5 / Qwen3 families (fused there as qkv_proj / gate_up_proj, or
# plain o_proj / down_proj). Everything else (embed_tokens, lm_head, norms incl. Qwen3's q_norm/k_norm, biases)
# stays in its dtype. A new family adds a row here, not a loop.
QUANTIZABLE_WEIGHT_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"^(?:.*\.)?layers\.\d+\.self_attn\.(?:q|k|v|o)_proj\.weight$"),
    re.compile(r"^(?:.*\.)?layers\.\d+\.mlp\.(?:gate|up|down)_proj\.weight$"),
)


# Model classes whose SGLang 0.5.23 ``load_weights`` routes ``<linear>.weight_scale_inv`` to the block-scale
# parameter (checked by loading into the real classes on CPU, tests/sync/test_fp8_blockwise.py). Llama is not
# one: ``LlamaForCausalLM`` renames ``.weight_scale_inv`` to ``.weight_scale`` (per-tensor FP8 naming) in both its
# legacy loader and the v2 ``_llama_remap`` (``model_loader/auto_loader.py``), so block scales are dropped with a
# "not found in params_dict" warning and the served weights are garbage.
BLOCKWISE_FP8_ARCHITECTURES = frozenset({"Qwen2ForCausalLM", "Qwen3ForCausalLM"})


class Fp8LayoutError(ValueError):
    """SGLang cannot serve this model with blockwise FP8 (architecture or linear sizes; see the message)."""


def is_quantizable(name: str) -> bool:
    """True for the HF tensor names :data:`QUANTIZABLE_WEIGHT_PATTERNS` selects (decoder-layer linear weights)."""
    return any(p.match(name) for p in QUANTIZABLE_WEIGHT_PATTERNS)


def scale_name(weight_name: str) -> str:
    """``"...q_proj.weight"`` -> ``"...q_proj.weight_scale_inv"`` (the name SGLang's ``Fp8LinearMethod`` registers)."""
    if not weight_name.endswith(".weight"):
        raise ValueError(f"only '<linear>.weight' tensors get a block scale, got {weight_name!r}")
    return weight_name + SCALE_SUFFIX


def quantize_blockwise(w: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise a 2-D weight to FP8 E4M3 with one fp32 scale per ``block x block`` tile.

    Args:
        w: ``[out, in]``, any float dtype, any device. Partial edge tiles are zero-padded for the amax (padding
           never raises it) and cropped from the result.
        block: tile size (SGLang's ``weight_block_size = [block, block]``).

    Returns:
        ``(w_fp8, scale_inv)``: ``w_fp8`` ``float8_e4m3fn [out, in]`` and ``scale_inv`` ``float32
        [ceil(out/block), ceil(in/block)]`` with ``w ~= dequantize_blockwise(w_fp8, scale_inv)``, i.e.
        ``w[i, j] ~= float(w_fp8[i, j]) * scale_inv[i // block, j // block]``; ``scale_inv = max(amax, 1e-12)/448``.
    """
    if w.dim() != 2:
        raise ValueError(f"quantize_blockwise expects a 2-D [out, in] weight, got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        raise ValueError(f"quantize_blockwise expects a floating-point weight, got {w.dtype}")
    if block <= 0:
        raise ValueError(f"block must be positive, got {block}")
    out_dim, in_dim = w.shape
    nb_out, nb_in = math.ceil(out_dim / block), math.ceil(in_dim / block)
    x = w.detach().float().contiguous()
    pad_out, pad_in = nb_out * block - out_dim, nb_in * block - in_dim
    if pad_out or pad_in:
        x = torch.nn.functional.pad(x, (0, pad_in, 0, pad_out))
    tiles = x.view(nb_out, block, nb_in, block)
    amax = tiles.abs().amax(dim=(1, 3), keepdim=True)  # [nb_out, 1, nb_in, 1]
    if not torch.isfinite(amax).all():
        raise ValueError("quantize_blockwise: the weight holds inf/NaN; refusing to quantise it")
    scale = amax.clamp(min=AMAX_FLOOR) / FP8_E4M3_MAX
    q = (tiles / scale).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(FP8_DTYPE)
    w_fp8 = q.view(nb_out * block, nb_in * block)[:out_dim, :in_dim].contiguous()
    return w_fp8, scale.view(nb_out, nb_in).contiguous()


def dequantize_blockwise(
    w_fp8: torch.Tensor, scale_inv: torch.Tensor, block: int = BLOCK, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Inverse of :func:`quantize_blockwise`: ``W[i, j] = float(w_fp8[i, j]) * scale_inv[i // block, j // block]``.

    ``w_fp8`` ``[out, in]`` (float8), ``scale_inv`` ``[ceil(out/block), ceil(in/block)]``; returns ``[out, in]`` in
    ``dtype`` (same arithmetic as SGLang's ``fp8_utils.block_quant_dequant``).
    """
    if w_fp8.dim() != 2 or scale_inv.dim() != 2:
        raise ValueError(f"expected 2-D tensors, got {tuple(w_fp8.shape)} and {tuple(scale_inv.shape)}")
    out_dim, in_dim = w_fp8.shape
    want = (math.ceil(out_dim / block), math.ceil(in_dim / block))
    if tuple(scale_inv.shape) != want:
        raise ValueError(f"scale_inv shape {tuple(scale_inv.shape)} does not match weight {tuple(w_fp8.shape)}: "
                         f"expected {want} for block {block}")  # fmt: skip
    s = scale_inv.float().repeat_interleave(block, 0).repeat_interleave(block, 1)[:out_dim, :in_dim]
    return (w_fp8.float() * s).to(dtype)


def fp8_rollout_stream(
    named_hf_tensors: Iterable[tuple[str, torch.Tensor]],
    quantizable: Callable[[str], bool] = is_quantizable,
    block: int = BLOCK,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Turn an HF-named weight stream into SGLang's blockwise FP8 checkpoint stream, lazily.

    Each ``(name, W)`` with ``quantizable(name)`` (``W`` ``[out, in]``) becomes ``(name, W_fp8)`` then
    ``(name + "_scale_inv", scale_inv)`` (:func:`quantize_blockwise`, on ``W``'s device); every other tensor is
    passed through unchanged. Used by the weight sync (``push_weights(engine, transport,
    fp8_rollout_stream(export_hf_weights(model)), ...)``) and by the serving-folder export.
    """
    for name, tensor in named_hf_tensors:
        if not quantizable(name):
            yield name, tensor
            continue
        if tensor.dim() != 2:
            raise ValueError(f"{name}: selected for FP8 but has shape {tuple(tensor.shape)}; only 2-D linear "
                             "weights can be block-quantised")  # fmt: skip
        w_fp8, scale_inv = quantize_blockwise(tensor, block)
        yield name, w_fp8
        yield scale_name(name), scale_inv


def blockwise_layout_problems(config: Mapping[str, Any], block: int = BLOCK, tp_size: int = 1) -> list[str]:
    """Why SGLang would refuse to serve this HF ``config.json`` with ``block x block`` FP8 at TP ``tp_size``.

    Mirrors ``Fp8LinearMethod.validate_block_quant_shapes``: each part of a fused linear (q, k, v of
    ``qkv_proj``; gate, up of ``gate_up_proj``) must have an output size that is a multiple of ``block`` (per rank
    when TP > 1), and with TP > 1 the per-rank input of the row-parallel ``o_proj`` / ``down_proj`` too. (The
    scale rows of the fused parts are concatenated at ``ceil(offset / block)``, so a partial block there would
    misplace scales.) When ``config`` names its ``architectures``, one outside :data:`BLOCKWISE_FP8_ARCHITECTURES` is
    a problem too. Returns an empty list when the model is servable.
    """
    problems = [f"architecture {a} is not supported for blockwise FP8 (SGLang 0.5.23 loads block scales only for "
                f"{sorted(BLOCKWISE_FP8_ARCHITECTURES)}; Llama renames weight_scale_inv to weight_scale)"
                for a in config.get("architectures") or [] if a not in BLOCKWISE_FP8_ARCHITECTURES]  # fmt: skip
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    inter = int(config["intermediate_size"])
    kv_per_rank = max(1, kv_heads // tp_size) * head_dim
    column = {"q_proj": heads * head_dim // tp_size, "k_proj/v_proj": kv_per_rank,
              "gate_proj/up_proj": inter // tp_size}  # fmt: skip
    problems += [f"{k} output size per rank {v} is not a multiple of the FP8 block {block}"
                 for k, v in column.items() if v % block]  # fmt: skip
    if tp_size > 1:
        row = {"o_proj": heads * head_dim // tp_size, "down_proj": inter // tp_size}
        problems += [f"{k} input size per rank {v} (TP={tp_size}) is not a multiple of the FP8 block {block}"
                     for k, v in row.items() if v % block]  # fmt: skip
    return problems


def check_blockwise_layout(config: Mapping[str, Any], block: int = BLOCK, tp_size: int = 1) -> None:
    """Raise :class:`Fp8LayoutError` listing :func:`blockwise_layout_problems` (no-op when there are none)."""
    problems = blockwise_layout_problems(config, block, tp_size)
    if problems:
        raise Fp8LayoutError(
            "blockwise FP8 rollout cannot serve this model (SGLang Fp8LinearMethod.validate_block_quant_shapes "
            "would reject or mis-load it): "
            + "; ".join(problems)
            + ". Use rollout.quantization with the FlashRL "
            "path (per-channel, no block constraint) or bf16 rollout."
        )
