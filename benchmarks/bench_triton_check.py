"""Benchmark (c): the Triton kernels against the torch path at the real size, checked on sampled rows.

N=16384 tokens x V=151936 bf16 logits = 2.49e9 elements, past 2^31: rows >= 2^31 / V (14134) start
beyond int32 offsets, so this is the first check of the kernels' 64-bit indexing. Per-token temperatures
in [0.7, 1.3]; one row has a masked (-inf) span. Compares, for the forward (log-prob, entropy; all rows)
and the gradient of Σ g1·log_prob + g2·entropy (entropy_grad=True; sampled rows):

    triton vs torch path   (max |diff| over all rows for the forward, over the sampled rows for the gradient)
    each vs a float64 reference on the sampled rows (every row of the reference is computed on its own)

Sampled rows: 24 random rows, the rows around the 2^31-element boundary, the masked row and the last rows.
Tolerances (those of tests/ops/test_gpu_kernels.py): forward rtol 1e-5, atol 1e-4 against float64; bf16
gradient rtol 1e-2, atol 1e-3. Also prints the time of each path (median of ``--iters``).

Goal (issue 16): Triton within tolerance of the torch path.

    python benchmarks/bench_triton_check.py --device cuda             # ~30 s on an H200 (two 5 GB gradients)
    .venv/bin/python benchmarks/bench_triton_check.py --device cpu --tiny   # Triton's interpreter, 48 x 1000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from bench_common import goal, header, peak_mib, pick_device, sync, timed  # noqa: E402

FWD_TOL = dict(rtol=1e-5, atol=1e-4)
GRAD_TOL = dict(rtol=1e-2, atol=1e-3)  # bf16 gradient


def reference(x: torch.Tensor, t: torch.Tensor, temp: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor):
    """float64 (log_prob, entropy, d(Σ g1·lp + g2·H)/dx) of rows ``x`` [n, V] (on the CPU)."""
    z = x.detach().double().cpu().requires_grad_(True)
    log_p = torch.log_softmax(z / temp.double().cpu()[:, None], dim=-1)
    p = log_p.exp()
    ent = -(p * torch.where(p == 0, torch.zeros_like(log_p), log_p)).sum(-1)
    lp = log_p.gather(-1, t.cpu()[:, None]).squeeze(-1)
    ((lp * g1.double().cpu()).sum() + (ent * g2.double().cpu()).sum()).backward()
    return lp.detach(), ent.detach(), z.grad


def excess(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> tuple[float, float]:
    """(max |a - b|, max of |a - b| / (atol + rtol |b|)): the second is <= 1 within tolerance; NaN fails."""
    a, b = a.double().cpu(), b.double().cpu()
    diff = (a - b).abs()
    finite = torch.isfinite(a) == torch.isfinite(b)
    same_inf = (a == b) & ~torch.isfinite(b)
    diff = torch.where(same_inf, torch.zeros_like(diff), diff)
    ratio = diff / (atol + rtol * b.abs().nan_to_num(0.0, 0.0, 0.0))
    if not bool(finite.all()) or bool(diff.isnan().any()):
        return float("nan"), float("inf")
    return float(diff.max()), float(ratio.max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"))
    ap.add_argument("--tiny", action="store_true", help="48 x 1000 (CPU: Triton's interpreter)")
    ap.add_argument("--n", type=int, help="tokens (default 16384)")
    ap.add_argument("--v", type=int, help="vocab (default 151936)")
    ap.add_argument("--iters", type=int, default=3)
    args = ap.parse_args()
    device = pick_device(args.device)
    if device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (by megatron_hapo.ops)
    from megatron_hapo.ops import vocab_parallel_logprob_entropy

    n = args.n or (48 if args.tiny else 16384)
    v = args.v or (1000 if args.tiny else 151936)
    started = time.time()
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.empty(n, v, device=device, dtype=torch.bfloat16).normal_(0.0, 3.0, generator=g)
    t = torch.randint(0, v, (n,), device=device, generator=g)
    temp = torch.rand(n, device=device, generator=g) * 0.6 + 0.7
    g1, g2 = torch.randn(n, device=device, generator=g), torch.randn(n, device=device, generator=g)
    masked_row = n // 3
    x[masked_row, v // 10 : v // 2] = float("-inf")
    boundary = (2**31) // v
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(1))[:24].tolist()
    rows += [r for r in range(boundary - 2, boundary + 3) if 0 <= r < n] + [masked_row, n - 2, n - 1]
    rows = sorted(set(rows))

    def run(impl: str, backward: bool):
        xg = x.detach().requires_grad_(backward)
        lp, ent = vocab_parallel_logprob_entropy(xg, t, temp, entropy_grad=True, impl=impl)
        if backward:
            ((lp * g1).sum() + (ent * g2).sum()).backward()
        return lp.detach(), ent.detach(), xg.grad

    results, times = {}, {}
    for impl in ("triton", "torch"):
        lp, ent, _ = run(impl, backward=False)
        _, _, grad = run(impl, backward=True)
        results[impl] = (lp, ent, grad[rows].clone())
        del grad
        times[impl, "fwd"] = timed(lambda i=impl: run(i, False), device, args.iters, warmup=0)
        times[impl, "fwd+bwd"] = timed(lambda i=impl: run(i, True), device, args.iters, warmup=0)
        sync(device)
    ref_lp, ref_ent, ref_grad = reference(x[rows], t[rows], temp[rows], g1[rows], g2[rows])

    header("bench_triton_check (Triton vs torch path, sampled rows vs float64)", device)
    past = (
        f"rows >= {boundary} start past it; sampled rows include {boundary - 2}..{boundary + 2}"
        if boundary < n
        else "no row reaches it at this size"
    )
    print(
        f"# logits {n} x {v} bf16 = {n * v:.3g} elements (2^31 = 2.15e9: {past}); "
        f"{len(rows)} sampled rows incl. masked row {masked_row} and the last rows"
    )
    print(
        f"# tolerances: forward rtol {FWD_TOL['rtol']} atol {FWD_TOL['atol']}; bf16 gradient rtol {GRAD_TOL['rtol']} atol {GRAD_TOL['atol']}"
    )
    print()
    print("| quantity | compared | rows | max abs diff | max diff / tol | within |")
    print("|---|---|---|---:|---:|---|")
    ok_all = True
    tri, tor = results["triton"], results["torch"]
    checks = [
        ("log_prob", "triton vs torch", "all", tri[0], tor[0], FWD_TOL),
        ("entropy", "triton vs torch", "all", tri[1], tor[1], FWD_TOL),
        ("gradient", "triton vs torch", "sampled", tri[2], tor[2], GRAD_TOL),
    ]
    for name, res in (("triton", tri), ("torch", tor)):
        checks += [
            ("log_prob", f"{name} vs float64", "sampled", res[0][rows], ref_lp, FWD_TOL),
            ("entropy", f"{name} vs float64", "sampled", res[1][rows], ref_ent, FWD_TOL),
            ("gradient", f"{name} vs float64", "sampled", res[2], ref_grad, GRAD_TOL),
        ]
    for quantity, compared, which, a, b, tol in checks:
        diff, ratio = excess(a, b, **tol)
        ok = ratio <= 1.0
        ok_all &= ok
        print(f"| {quantity} | {compared} | {which} | {diff:.3g} | {ratio:.3g} | {'yes' if ok else 'NO'} |")
    print()
    print("| path | fwd ms | fwd+bwd ms |")
    print("|---|---:|---:|")
    for impl in ("triton", "torch"):
        print(f"| {impl} | {times[impl, 'fwd'] * 1e3:.1f} | {times[impl, 'fwd+bwd'] * 1e3:.1f} |")
    print()
    print(f"# peak memory {peak_mib(device):.0f} MiB")
    print(
        goal(ok_all, "Triton within tolerance of the torch path (and both of float64) on every check above")
    )
    print(f"# total {time.time() - started:.0f} s")
    if not ok_all:
        sys.exit(1)


if __name__ == "__main__":
    main()
