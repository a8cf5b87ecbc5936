"""``hapo-convert`` / ``tools/convert_checkpoint.py``: HF <-> Megatron checkpoint conversion and verification.

    hapo-convert hf-to-mcore --hf DIR --out DIR [--tp N --pp M] [--dtype auto|bfloat16|float32]
    hapo-convert mcore-to-hf --mcore DIR --hf-config DIR --out DIR [--dtype auto|...] [--max-shard-size 5GB]
    hapo-convert verify      --hf DIR --mcore DIR [--tp N --pp M] [--atol 1e-4]
    hapo-convert export-fp8  --hf DIR --out DIR [--calib-file F] [--calib-samples 128] [--device cuda|cpu]
    hapo-convert export-fp8-blockwise --hf DIR --out DIR [--tp N] [--max-shard-size 5GB]

Run as a plain process (a world of one) or under ``torchrun --nproc-per-node K`` with K a multiple of
TP x PP (each rank then converts its own shard). ``hf-to-mcore`` in one process writes the whole
model; its ``--tp`` still sets the vocab padding (a multiple of 128 x TP), and the checkpoint loads
at any TP/PP whose TP divides that padded vocab. ``verify`` needs K = TP x PP processes.

Exit codes: 0 success; 1 ``verify`` found logits outside the tolerance; 2 a usage or conversion error
(message printed, no traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from megatron_hapo.checkpoint_io.hf_io import parse_size
from megatron_hapo.config.model_info import allowed_pp_sizes, allowed_tp_sizes
from megatron_hapo.models.errors import ConversionError, ParallelLayoutError
from megatron_hapo.models.hf_config import DEFAULT_VOCAB_DIVISOR, load_arch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hapo-convert", description="HF <-> Megatron-Core checkpoint conversion."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    h2m = sub.add_parser("hf-to-mcore", help="HF safetensors -> Megatron distributed checkpoint (torch_dist)")
    h2m.add_argument("--hf", required=True, type=Path, help="HF model directory (config.json + safetensors)")
    h2m.add_argument("--out", required=True, type=Path, help="output checkpoint directory (new or empty)")
    h2m.add_argument("--tp", type=int, default=1, help="tensor-parallel size the vocab is padded for")
    h2m.add_argument("--pp", type=int, default=1, help="pipeline-parallel size (checked against the layers)")
    h2m.add_argument("--dtype", default="auto", choices=["auto", *_DTYPES], help="auto: config.json's dtype")
    h2m.add_argument(
        "--make-vocab-size-divisible-by",
        type=int,
        default=DEFAULT_VOCAB_DIVISOR,
        help="vocab padding unit (x TP)",
    )

    m2h = sub.add_parser("mcore-to-hf", help="Megatron distributed checkpoint -> HF safetensors")
    m2h.add_argument("--mcore", required=True, type=Path, help="Megatron checkpoint directory")
    m2h.add_argument(
        "--hf-config", required=True, type=Path, help="HF directory with config.json and tokenizer"
    )
    m2h.add_argument("--out", required=True, type=Path, help="output HF directory")
    m2h.add_argument("--tp", type=int, default=1, help="TP to load at under torchrun (1 in a single process)")
    m2h.add_argument("--pp", type=int, default=1, help="PP to load at under torchrun (1 in a single process)")
    m2h.add_argument(
        "--dtype", default="auto", choices=["auto", *_DTYPES], help="auto: the checkpoint's dtype"
    )
    m2h.add_argument(
        "--max-shard-size",
        default="5GB",
        type=parse_size,
        help="safetensors shard size cap (e.g. 5GB, 500MB)",
    )

    ver = sub.add_parser("verify", help="compare HF and Megatron logits on a random token batch")
    ver.add_argument("--hf", required=True, type=Path, help="HF model directory")
    ver.add_argument("--mcore", required=True, type=Path, help="Megatron checkpoint directory")
    ver.add_argument("--tp", type=int, default=1)
    ver.add_argument("--pp", type=int, default=1)
    ver.add_argument("--atol", type=float, default=None, help="tolerance on max |logit diff| (default 1e-4)")
    ver.add_argument("--batch", type=int, default=2)
    ver.add_argument("--seq-len", type=int, default=16)
    ver.add_argument("--seed", type=int, default=0)

    fp8 = sub.add_parser(
        "export-fp8",
        help="HF checkpoint -> FP8 per-tensor serving folder (ModelOpt; SGLang quantization=modelopt)",
    )
    fp8.add_argument("--hf", required=True, type=Path, help="HF model directory (config.json + safetensors)")
    fp8.add_argument("--out", required=True, type=Path, help="output serving directory (new or empty)")
    fp8.add_argument(
        "--calib-file",
        type=Path,
        default=None,
        help="calibration texts: .jsonl (prompt/text) or one per line",
    )
    fp8.add_argument("--calib-samples", type=int, default=128, help="at most this many calibration texts")
    fp8.add_argument("--max-seq-len", type=int, default=512, help="tokens per calibration text (truncated)")
    fp8.add_argument("--dtype", default="auto", choices=["auto", *_DTYPES], help="auto: config.json's dtype")
    fp8.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")

    fp8b = sub.add_parser(
        "export-fp8-blockwise",
        help="HF checkpoint -> 128x128 blockwise FP8 folder (SGLang quantization=fp8; FP8 rollout start-up weights)",
    )
    fp8b.add_argument("--hf", required=True, type=Path, help="HF model directory (config.json + safetensors)")
    fp8b.add_argument("--out", required=True, type=Path, help="output serving directory (new or empty)")
    fp8b.add_argument("--tp", type=int, default=1, help="SGLang TP size the block layout is checked for")
    fp8b.add_argument(
        "--max-shard-size",
        default="5GB",
        type=parse_size,
        help="safetensors shard size cap (e.g. 5GB, 500MB)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``hapo-convert``; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        commands = {
            "hf-to-mcore": hf_to_mcore,
            "mcore-to-hf": mcore_to_hf,
            "verify": verify,
            "export-fp8": export_fp8,
            "export-fp8-blockwise": export_fp8_blockwise,
        }
        out = getattr(args, "out", None)
        if out is not None and Path(out).exists() and not Path(out).is_dir():
            raise ConversionError(f"--out {out} is a file: give a directory (a new or an empty one)")
        if getattr(args, "atol", None) is not None and args.atol < 0:
            raise ConversionError(f"--atol must be >= 0 (0: the logits must match exactly), got {args.atol}")
        with _model_logs_shown():
            return commands[args.command](args)
    except (ConversionError, FileNotFoundError) as e:
        # every rank fails together (models.collective); one message is enough
        if os.environ.get("RANK", "0") == "0":
            print(f"hapo-convert {args.command}: error: {e}", file=sys.stderr, flush=True)
        return 2


def export_fp8(args) -> int:
    """``export-fp8``: ModelOpt FP8 quantisation + HF export (megatron_hapo.fp8_export.modelopt)."""
    from megatron_hapo.fp8_export.modelopt import export_fp8 as run_export

    report = run_export(
        args.hf,
        args.out,
        calib_file=args.calib_file,
        max_calib_samples=args.calib_samples,
        max_seq_len=args.max_seq_len,
        dtype=args.dtype,
        device=args.device,
    )
    print(
        f"[hapo-convert] wrote {report.out_dir}: {report.quantized_linears} FP8 linears, excluded "
        f"{report.excluded}, calibrated on {report.calib_samples} texts ({report.calib_tokens} tokens) in "
        f"{report.seconds:.1f} s; serve with SGLang --quantization modelopt (auto-detected)",
        flush=True,
    )
    return 0


def export_fp8_blockwise(args) -> int:
    """``export-fp8-blockwise``: 128x128 blockwise FP8 folder (megatron_hapo.fp8_export.blockwise)."""
    from megatron_hapo.fp8_export.blockwise import export_fp8_blockwise as run_export

    report = run_export(args.hf, args.out, tp_size=args.tp, max_shard_bytes=args.max_shard_size)
    print(
        f"[hapo-convert] wrote {report.out_dir}: {report.quantized_linears} blockwise FP8 linears, "
        f"{report.kept_tensors} tensors kept, {report.bytes_in / 1e6:.1f} MB -> {report.bytes_out / 1e6:.1f} MB in "
        f"{report.seconds:.1f} s; serve with SGLang --quantization fp8 (config.json quantization_config)",
        flush=True,
    )
    return 0


@contextlib.contextmanager
def _model_logs_shown() -> Iterator[None]:
    """Print megatron_hapo.models' INFO logs (the layer-spec choice) on rank 0 during the command.

    The handler is removed afterwards: it holds the ``sys.stdout`` of the moment, and a caller in the same
    process (a test capturing output, a notebook) may close or replace that stream."""
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    logger = logging.getLogger("megatron_hapo.models")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[hapo-convert] %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextlib.contextmanager
def _model_parallel(tp: int, pp: int, *, single_process_ok: bool):
    """Process group + Megatron model parallel at TP x PP (TP=PP=1 in a single process if allowed)."""
    import torch.distributed as dist

    import megatron_hapo.parallel as hp

    created = not dist.is_initialized()
    env = hp.init_distributed()
    try:
        if env.world_size == 1 and tp * pp > 1:
            if not single_process_ok:
                raise ParallelLayoutError(
                    f"TP={tp} x PP={pp} needs {tp * pp} processes: run under "
                    f"`torchrun --nproc-per-node {tp * pp} -m megatron_hapo.cli.convert ...`"
                )
            tp = pp = 1
        elif env.world_size % (tp * pp):
            raise ParallelLayoutError(
                f"{env.world_size} processes cannot hold TP={tp} x PP={pp}; launch a multiple of {tp * pp} processes"
            )
        hp.initialize_model_parallel(tp, pp)
        try:
            with hp.device_mode():
                yield env
        finally:
            hp.destroy_model_parallel()
    finally:
        if created:
            dist.destroy_process_group()


def _log(msg: str) -> None:
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"[hapo-convert] {msg}", flush=True)


def _resolve_dtype(name: str, fallback: str | torch.dtype | None) -> torch.dtype:
    if name != "auto":
        return _DTYPES[name]
    if isinstance(fallback, torch.dtype):
        return fallback
    return _DTYPES.get(fallback or "float32", torch.float32)


def hf_to_mcore(args) -> int:
    from megatron_hapo.checkpoint_io.hf_io import HFCheckpointReader
    from megatron_hapo.checkpoint_io.loading import load_hf_weights
    from megatron_hapo.checkpoint_io.mcore_io import save_checkpoint
    from megatron_hapo.models.builder import build_gpt_model

    arch = load_arch(args.hf)
    arch.check_layout(args.tp, args.pp)
    reader = HFCheckpointReader(args.hf)  # missing shards fail here, before Megatron starts
    if args.out.exists() and any(args.out.iterdir()):
        raise ConversionError(f"--out {args.out} is not empty; choose a new directory")
    dtype = _resolve_dtype(args.dtype, arch.dtype)
    padded = arch.padded_vocab_size(args.tp, args.make_vocab_size_divisible_by)
    start = time.perf_counter()
    with _model_parallel(args.tp, args.pp, single_process_ok=True):
        from megatron.core import parallel_state as ps

        layout = (
            f"TP={ps.get_tensor_model_parallel_world_size()} PP={ps.get_pipeline_model_parallel_world_size()}"
        )
        _log(
            f"{arch.family} from {args.hf}: {arch.num_layers} layers, vocab {arch.vocab_size} -> padded {padded}, "
            f"{dtype}, building at {layout}"
        )
        model = build_gpt_model(
            arch, params_dtype=dtype, padded_vocab_size=padded, perform_initialization=False
        )
        load_hf_weights(model, reader, progress=True)
        save_checkpoint(model, args.out)
    _log(f"wrote {args.out} in {time.perf_counter() - start:.1f}s; {loadable_layouts(arch, padded)}")
    return 0


def loadable_layouts(arch, padded_vocab: int) -> str:
    """Which layouts a checkpoint of ``arch`` with ``padded_vocab`` embedding rows loads at: TP must divide
    the heads, KV heads, MLP size (``config/model_info.py``, the rules the builder applies) and the
    padded vocabulary; PP the layers."""
    shape = arch.shape()
    tps = [t for t in allowed_tp_sizes(shape) if padded_vocab % t == 0]
    pps = allowed_pp_sizes(shape)
    return (
        f"it loads at TP {_or_list(tps)} (what divides the {shape.num_attention_heads} attention heads, "
        f"{shape.num_key_value_heads} KV heads, MLP size {shape.intermediate_size} and padded vocab "
        f"{padded_vocab}) and PP {_or_list(pps)} (what divides the {shape.num_hidden_layers} layers)"
    )


def _or_list(values: list[int]) -> str:
    return str(values[0]) if len(values) == 1 else ", ".join(map(str, values[:-1])) + f" or {values[-1]}"


def mcore_to_hf(args) -> int:
    import torch.distributed as dist

    from megatron_hapo.checkpoint_io.export import export_hf_weights
    from megatron_hapo.checkpoint_io.hf_io import (
        HFCheckpointWriter,
        check_output_dir,
        copy_reference_files,
    )
    from megatron_hapo.checkpoint_io.mcore_io import (
        checkpoint_dtype,
        checkpoint_padded_vocab,
        load_checkpoint,
    )
    from megatron_hapo.models.builder import build_gpt_model

    arch = load_arch(args.hf_config)
    arch.check_layout(args.tp, args.pp)
    padded = checkpoint_padded_vocab(args.mcore)
    dtype = _resolve_dtype(args.dtype, checkpoint_dtype(args.mcore))
    max_shard = args.max_shard_size
    check_output_dir(args.out)  # on every rank, before any collective (only rank 0 writes)
    start = time.perf_counter()
    with _model_parallel(args.tp, args.pp, single_process_ok=True):
        writer = HFCheckpointWriter(args.out, max_shard, dtype) if dist.get_rank() == 0 else None
        model = build_gpt_model(
            arch, params_dtype=dtype, padded_vocab_size=padded, perform_initialization=False
        )
        load_checkpoint(model, args.mcore)
        for name, tensor in export_hf_weights(model, progress=True):
            if writer is not None:  # every rank walks the export (it is collective); rank 0 writes
                writer.add(name, tensor)
        if writer is not None:
            index = writer.close()
            copied = copy_reference_files(args.hf_config, args.out, dtype)
            _log(
                f"wrote {index.name} ({writer.total_bytes / 1e9:.2f} GB, {dtype}) and {', '.join(copied)} "
                f"to {args.out} in {time.perf_counter() - start:.1f}s"
            )
        dist.barrier()
    return 0


def verify(args) -> int:
    from megatron_hapo.checkpoint_io.mcore_io import checkpoint_padded_vocab, load_checkpoint
    from megatron_hapo.checkpoint_io.verify import DEFAULT_ATOL, compare_with_hf
    from megatron_hapo.models.builder import build_gpt_model

    arch = load_arch(args.hf)
    arch.check_layout(args.tp, args.pp)
    padded = checkpoint_padded_vocab(args.mcore)
    with _model_parallel(args.tp, args.pp, single_process_ok=False):
        model = build_gpt_model(
            arch, params_dtype=torch.float32, padded_vocab_size=padded, perform_initialization=False
        )
        load_checkpoint(model, args.mcore)
        result = compare_with_hf(
            model,
            args.hf,
            batch=args.batch,
            seq_len=args.seq_len,
            seed=args.seed,
            atol=DEFAULT_ATOL if args.atol is None else args.atol,
        )
        _log(f"verify {arch.family} TP={args.tp} PP={args.pp}: {result.describe()}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
