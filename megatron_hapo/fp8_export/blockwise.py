"""HF checkpoint -> SGLang blockwise (128x128) FP8 serving folder (``hapo-convert export-fp8-blockwise``).

The folder the FP8 rollout servers start from: config.json with
``quantization_config = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
"weight_block_size": [128, 128]}``, each decoder-layer linear as ``<linear>.weight`` (float8_e4m3fn) plus
``<linear>.weight_scale_inv`` (fp32 ``[ceil(out/128), ceil(in/128)]``), everything else (embeddings, lm_head, norms,
biases) in the source dtype, plus the tokenizer/generation files. It is written by the same stream the weight sync
uses (:func:`megatron_hapo.sync.fp8.fp8_rollout_stream`), so the served start-up weights and every later sync have
one format. No calibration: weights are quantised from their own block amax; activations are quantised
dynamically by SGLang (per token, per 128-channel group). Runs on CPU, one tensor at a time.
Unlike ``export_fp8`` (ModelOpt, per-tensor, ``quant_method: modelopt``) this needs no ModelOpt.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_hapo.checkpoint_io.hf_io import (
    HFCheckpointReader,
    HFCheckpointWriter,
    check_output_dir,
    copy_reference_files,
)
from megatron_hapo.models.errors import ConversionError
from megatron_hapo.sync.fp8 import (
    BLOCK,
    BLOCKWISE_FP8_QUANT_CONFIG,
    FP8_DTYPE,
    blockwise_layout_problems,
    fp8_rollout_stream,
    is_quantizable,
)


@dataclass(frozen=True)
class BlockwiseExportReport:
    out_dir: Path
    quantized_linears: int
    kept_tensors: int  # passed through in their source dtype
    bytes_in: int
    bytes_out: int
    seconds: float


def export_fp8_blockwise(
    hf_dir: str | Path,
    out_dir: str | Path,
    *,
    block: int = BLOCK,
    tp_size: int = 1,
    max_shard_bytes: int = 5 * 10**9,
) -> BlockwiseExportReport:
    """Write ``out_dir``: ``hf_dir``'s model in SGLang's blockwise FP8 checkpoint format (see module docstring).

    Raises :class:`ConversionError` when ``out_dir`` already holds weights, when ``hf_dir``'s config.json already
    has a ``quantization_config``, when no tensor matched the quantisable-name table (unknown naming), or when the
    model's linear sizes cannot be served with ``block``-sized blocks at TP ``tp_size`` (SGLang would refuse it
    at start-up; :func:`megatron_hapo.sync.fp8.blockwise_layout_problems`).
    """
    start = time.perf_counter()
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{hf_dir} has no config.json")
    config = json.loads(config_path.read_text())
    if config.get("quantization_config"):
        raise ConversionError(
            f"{hf_dir} is already quantised ({config['quantization_config'].get('quant_method')!r}); "
            "export from the bf16/fp32 checkpoint"
        )
    problems = blockwise_layout_problems(config, block, tp_size)
    if problems:
        raise ConversionError(f"{hf_dir}: not servable as {block}x{block} blockwise FP8 by SGLang: "
                              + "; ".join(problems))  # fmt: skip
    check_output_dir(out_dir)
    reader = HFCheckpointReader(hf_dir)
    names = sorted(reader.names())
    n_quant = sum(is_quantizable(n) for n in names)
    if n_quant == 0:
        raise ConversionError(
            f"{hf_dir}: no tensor matches the FP8 linear-name table (megatron_hapo.sync.fp8."
            "QUANTIZABLE_WEIGHT_PATTERNS); unknown naming scheme"
        )
    bytes_in = 0

    def source():
        nonlocal bytes_in
        for name in names:
            t = reader.get(name)
            bytes_in += t.numel() * t.element_size()
            yield name, t

    writer = HFCheckpointWriter(out_dir, max_shard_bytes=max_shard_bytes)
    for name, tensor in fp8_rollout_stream(source(), block=block):
        writer.add(name, tensor)
    writer.close()
    copy_reference_files(hf_dir, out_dir, dtype=None)
    out_config = json.loads((out_dir / "config.json").read_text())
    out_config["quantization_config"] = {**BLOCKWISE_FP8_QUANT_CONFIG, "weight_block_size": [block, block]}
    (out_dir / "config.json").write_text(json.dumps(out_config, indent=2) + "\n")
    return BlockwiseExportReport(out_dir, n_quant, len(names) - n_quant, bytes_in, writer.total_bytes,
                                 time.perf_counter() - start)  # fmt: skip


def blockwise_fp8_state_dict(
    fp8_dir: str | Path, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Read a blockwise FP8 folder back as a plain HF state dict (``W = W_fp8 * weight_scale_inv`` per block)."""
    from megatron_hapo.sync.fp8 import SCALE_SUFFIX, dequantize_blockwise

    fp8_dir = Path(fp8_dir)
    qc = json.loads((fp8_dir / "config.json").read_text()).get("quantization_config") or {}
    if qc.get("quant_method") != "fp8" or not qc.get("weight_block_size"):
        raise ConversionError(f"{fp8_dir}: config.json has no blockwise fp8 quantization_config ({qc})")
    block_n, block_k = qc["weight_block_size"]
    if block_n != block_k:
        raise ConversionError(f"{fp8_dir}: only square blocks are read back, got {qc['weight_block_size']}")
    reader = HFCheckpointReader(fp8_dir)
    out = {}
    for name in sorted(reader.names()):
        if name.endswith(SCALE_SUFFIX):
            continue
        t = reader.get(name)
        if t.dtype == FP8_DTYPE:
            t = dequantize_blockwise(t, reader.get(name + SCALE_SUFFIX), block_n, dtype)
        out[name] = t.to(dtype)
    return out
