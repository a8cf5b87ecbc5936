"""Decode-step sampler time: SGLang's stock ``Sampler`` vs the HAPO sampler, per batch size and vocab.

Calls the samplers directly, as ``ModelRunner.sample`` does once per decode step (no engine, no model):
fp32 logits [B, V], every row of the HAPO batch adaptive (statistics present), ``return_logprob=True``.
The HAPO sampler adds the entropy over [B, V] (``fused_token_entropy``: max, sum-exp and Σ e·s in one
read of each row after its max; the native C kernel on CPU, torch.compile's on GPU) and the schedule on
[B]; it leaves T and H on the device (the scheduler turns them into lists later, like its log-probs, so
neither sampler is timed with a host copy). Target: HAPO <= 1.3x stock, on CPU and GPU. The header says
which entropy kernel ran (on GPU, run it without TORCHDYNAMO_DISABLE); the ``--warmup`` calls absorb the
one compilation.

    .venv/bin/python benchmarks/bench_sampler.py                   # CPU here, CUDA when available
    .venv/bin/python benchmarks/bench_sampler.py --truncation      # also top-k 50 / top-p 0.95 rows
    .venv/bin/python benchmarks/bench_sampler.py --batch 64 --vocab 32000 --iters 50 --json out.json

Sampling kernels: ``flashinfer`` on CUDA when SGLang reports it available, else ``pytorch``. Time is the
median of ``--iters`` calls after ``--warmup`` calls; the two samplers alternate call by call (side by
side: a shared machine's load hits both alike); each call gets a fresh copy of the logits (the samplers
work in place) outside the timed region, and CUDA is synchronised around the timed region.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from types import SimpleNamespace

import torch


def _context(device: str, backend: str):
    from sglang.srt.runtime_context import get_context, get_parallel

    server_args = get_context().override_server_args(device=device, sampling_backend=backend)
    tp = get_parallel().override(tp_group=SimpleNamespace(device_group=None))
    return server_args, tp


def _batch_info(b: int, v: int, device: str, truncation: bool, hapo: bool):
    from sglang.srt.sampling.sampling_batch_info import SamplingBatchInfo
    from sglang.srt.sampling.sampling_params import TOP_K_ALL

    from sglang_ext.batch_state import ATTR, HapoRows
    from sglang_ext.params import RowParams

    top_k, top_p = (50, 0.95) if truncation else (TOP_K_ALL, 1.0)
    info = SamplingBatchInfo(
        temperatures=torch.ones(b, 1, device=device),
        top_ps=torch.full((b,), top_p, device=device),
        top_ks=torch.full((b,), top_k, dtype=torch.int32, device=device),
        min_ps=torch.zeros(b, device=device),
        is_all_greedy=False,
        is_any_greedy=False,
        need_top_p_sampling=truncation,
        need_top_k_sampling=truncation,
        need_min_p_sampling=False,
        vocab_size=v,
        device=device,
        max_top_k=top_k if truncation else None,
    )
    rows = [RowParams(True, 0.05, (1.0, 0.5, 1.0, 1.0))] * b if hapo else None
    setattr(info, ATTR, HapoRows.from_params(rows, device) if rows else None)
    return info


def _time_call(sampler, logits_src, buf, info) -> float:
    from sglang.srt.layers.logits_processor import LogitsProcessorOutput

    b = logits_src.shape[0]
    buf.copy_(logits_src)
    out = LogitsProcessorOutput(next_token_logits=buf)
    positions = torch.arange(b, device=logits_src.device)
    if logits_src.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    sampler(out, info, True, [0] * b, [None] * b, positions)
    if logits_src.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _time_pair(samplers, logits_src, infos, iters: int, warmup: int) -> list[float]:
    """Median ms per call of each sampler, calling them in turn (side by side)."""
    buf = torch.empty_like(logits_src)
    times: list[list[float]] = [[] for _ in samplers]
    for i in range(warmup + iters):
        for k, (sampler, info) in enumerate(zip(samplers, infos, strict=True)):
            elapsed = _time_call(sampler, logits_src, buf, info)
            if i >= warmup:
                times[k].append(elapsed)
    return [statistics.median(t) * 1e3 for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 152064])
    parser.add_argument("--iters", type=int, default=None, help="timed calls (default 50 on CUDA, 10 on CPU)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--truncation", action="store_true", help="also time top-k 50 / top-p 0.95 batches")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    iters = args.iters or (50 if args.device == "cuda" else 10)

    from sglang.srt.runtime_context import get_platform

    backend = "flashinfer" if args.device == "cuda" and get_platform().has_flashinfer else "pytorch"
    server_args, tp = _context(args.device, backend)
    with server_args, tp:
        from sglang.srt.layers.sampler import Sampler

        from megatron_hapo.algorithms import entropy_kernel
        from sglang_ext.sampler import HapoSampler

        stock, hapo = Sampler(), HapoSampler(backend)
        where = (
            torch.cuda.get_device_name()
            if args.device == "cuda"
            else f"CPU, {torch.get_num_threads()} threads"
        )
        print(
            f"# sampler time per decode step, {where}, kernels: {backend}, entropy: {entropy_kernel(args.device)}, "
            f"median of {iters}"
        )
        print("| batch | vocab | sampling | stock ms | HAPO ms | HAPO / stock |")
        print("|---:|---:|---|---:|---:|---:|")
        results = []
        for truncation in (False, True) if args.truncation else (False,):
            for v in args.vocab:
                for b in args.batch:
                    gen = torch.Generator(device=args.device).manual_seed(0)
                    logits = torch.randn(b, v, device=args.device, generator=gen) * 3
                    infos = [
                        _batch_info(b, v, args.device, truncation, hapo_rows) for hapo_rows in (False, True)
                    ]
                    t_stock, t_hapo = _time_pair((stock, hapo), logits, infos, iters, args.warmup)
                    mode = "top-k 50, top-p 0.95" if truncation else "full vocabulary"
                    print(
                        f"| {b} | {v} | {mode} | {t_stock:.3f} | {t_hapo:.3f} | {t_hapo / t_stock:.2f}x |",
                        flush=True,
                    )
                    results.append(
                        dict(
                            batch=b,
                            vocab=v,
                            sampling=mode,
                            stock_ms=t_stock,
                            hapo_ms=t_hapo,
                            ratio=t_hapo / t_stock,
                            device=where,
                            kernels=backend,
                        )
                    )
                    del logits
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
