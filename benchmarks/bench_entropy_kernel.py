"""The sampler's entropy kernels side by side on CPU: the eager definition, ``torch.compile`` (inductor's
C++) and the native kernel (``megatron_hapo/ops/cpu_entropy.c``), on fp32 logits [B, V] ~ N(0, 3²).

The three are called in turn, call by call, so a shared machine's load hits them alike; time is the median
of ``--iters`` calls after ``--warmup`` (which also absorb the one compilation). The error column is the
largest relative difference of each fast kernel's H from the eager definition's.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_entropy_kernel.py
    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_entropy_kernel.py --batch 64 --vocab 32000 --iters 50
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 152064])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    if os.environ.get("TORCHDYNAMO_DISABLE", "").strip() not in ("", "0"):
        raise SystemExit("bench_entropy_kernel: unset TORCHDYNAMO_DISABLE (the compiled column needs dynamo)")

    from megatron_hapo.algorithms import token_entropy
    from megatron_hapo.ops.cpu_entropy import cpu_row_entropy, native_entropy_status

    if native_entropy_status() is not None:
        raise SystemExit(f"bench_entropy_kernel: the native kernel is unavailable: {native_entropy_status()}")
    kernels = {
        "eager": token_entropy,
        "torch.compile": torch.compile(token_entropy, dynamic=True),
        "native": cpu_row_entropy,
    }
    print(f"# entropy kernels, CPU, {torch.get_num_threads()} threads, median of {args.iters} calls")
    print(
        "| batch | vocab | eager ms | torch.compile ms | native ms | compile / native "
        "| rel. error vs eager: compile | native |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for v in args.vocab:
        for b in args.batch:
            logits = torch.randn(b, v, generator=torch.Generator().manual_seed(0)) * 3
            want = token_entropy(logits)
            times: dict[str, list[float]] = {name: [] for name in kernels}
            for i in range(args.warmup + args.iters):
                for name, kernel in kernels.items():
                    t0 = time.perf_counter()
                    kernel(logits)
                    if i >= args.warmup:
                        times[name].append(time.perf_counter() - t0)
            ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
            error = {
                name: ((kernels[name](logits) - want).abs() / want).max().item()
                for name in ("torch.compile", "native")
            }
            print(
                f"| {b} | {v} | {ms['eager']:.2f} | {ms['torch.compile']:.2f} | {ms['native']:.2f} "
                f"| {ms['torch.compile'] / ms['native']:.2f}x | {error['torch.compile']:.1e} | {error['native']:.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
