"""Benchmark (d): the HAPO sampler's math against plain softmax + multinomial sampling, pure torch.

The GPU image has no SGLang, so this times the math the HAPO sampler adds (``sglang_ext/sampler.py``), with
the same functions it calls (``megatron_hapo.algorithms.token_entropy`` and ``temperature_from_entropy``;
no SGLang import), around a plain full-vocabulary sampling step like SGLang's torch backend:

    plain   z = logits / T;  p = softmax(z);  y ~ multinomial(p);  log p[y];  y, log p[y] to the host
    hapo    H = fused_token_entropy(logits) [B] fp32 (what the sampler runs: torch.compile's fused kernel
            on GPU, eager under TORCHDYNAMO_DISABLE; the native kernel on CPU);  T' = temperature_from_entropy(H, T, per-row stats, tau);
            T' = where(adaptive, T', T);  then plain with T';  also T' and H to the host (customized_info)
    eager   the same with the eager token_entropy (~6 passes over [B, V])

fp32 logits [B, V] (random, std 3), every row adaptive, per-row statistics as four [B] tensors (what the
sampler passes). Time: median of ``--iters`` calls after ``--warmup``, synchronised.

Goal (issue 16): hapo <= 1.3x plain at batch 256, V=152064.

    python benchmarks/bench_sampler_math.py --device cuda             # B=256, V=152064, ~10 s on an H200
    .venv/bin/python benchmarks/bench_sampler_math.py --device cpu --tiny
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from bench_common import goal, header, pick_device, timed  # noqa: E402

from megatron_hapo.algorithms import (  # noqa: E402
    entropy_kernel,
    fused_token_entropy,
    temperature_from_entropy,
    token_entropy,
)


def plain_step(logits: torch.Tensor, temperature: torch.Tensor):
    """[B] sampled ids and their log-probs under softmax(logits / T), both copied to the host."""
    probs = torch.softmax(logits / temperature[:, None], dim=-1)
    ids = torch.multinomial(probs, 1).squeeze(1)
    log_p = probs.gather(1, ids[:, None]).squeeze(1).log()
    return ids.tolist(), log_p.tolist()


def hapo_step(logits, temperature, stats, tau, adaptive, entropy_fn=fused_token_entropy):
    entropy = entropy_fn(logits)
    scheduled = temperature_from_entropy(entropy, temperature, stats, tau)
    t_eff = torch.where(adaptive, scheduled, temperature)
    out = plain_step(logits, t_eff)
    return out, t_eff.tolist(), entropy.tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"))
    ap.add_argument("--tiny", action="store_true", help="B=8, V=1000 (CPU check of the script)")
    ap.add_argument("--batch", type=int, action="append", help="batch sizes (default 64 and 256)")
    ap.add_argument("--vocab", type=int, help="vocab (default 152064)")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    device = pick_device(args.device)
    batches = args.batch or ([8] if args.tiny else [64, 256])
    v = args.vocab or (1000 if args.tiny else 152064)
    started = time.time()
    rows = []
    for b in batches:
        g = torch.Generator(device=device).manual_seed(b)
        logits = torch.empty(b, v, device=device).normal_(0.0, 3.0, generator=g)
        temperature = torch.ones(b, device=device)
        stats = tuple(torch.full((b,), x, device=device) for x in (7.0, 1.0, 1.0, 1.0))
        tau = torch.full((b,), 0.05, device=device)
        adaptive = torch.ones(b, dtype=torch.bool, device=device)
        plain = functools.partial(plain_step, logits, temperature)
        hapo = functools.partial(hapo_step, logits, temperature, stats, tau, adaptive)
        t_plain = timed(plain, device, args.iters, args.warmup)
        t_hapo = timed(hapo, device, args.iters, args.warmup)
        eager = functools.partial(hapo_step, logits, temperature, stats, tau, adaptive, token_entropy)
        t_eager = timed(eager, device, args.iters, args.warmup)
        rows.append((b, t_plain, t_hapo, t_eager))

    header("bench_sampler_math (HAPO sampler math vs plain softmax + multinomial; no SGLang)", device)
    print(f"# fp32 logits [B, {v}], every row adaptive; median of {args.iters} after {args.warmup} warm-up")
    print(f"# entropy kernel of 'hapo': {entropy_kernel(device)}")
    print()
    print("| B | V | plain ms | hapo ms | hapo / plain | hapo, eager entropy ms | eager / plain |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for b, tp, th, te in rows:
        print(
            f"| {b} | {v} | {tp * 1e3:.3f} | {th * 1e3:.3f} | {th / tp:.2f} | {te * 1e3:.3f} | {te / tp:.2f} |"
        )
    print()
    b, tp, th, _ = rows[-1]
    print(goal(th / tp <= 1.3, f"sampler math <= 1.3x plain sampling at B={b}, V={v}: {th / tp:.2f}x"))
    print(f"# total {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
