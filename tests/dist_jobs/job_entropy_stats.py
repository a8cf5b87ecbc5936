"""Distributed checks of the algorithm core (run under torchrun, gloo, CPU; every rank runs this).

1. normalize_entropy(..., group=WORLD) over ranks holding uneven token counts (one rank with none,
   one with no rows) equals the single-process result on the concatenated tokens: pivot exactly,
   σ/s₊/s₋ to rounding, ĥ per token; and it is bit-identical on every rank. TV1 split over ranks.
2. A non-finite entropy on one rank makes every rank raise (no rank left hanging in a collective).
3. Partition invariance over ranks x micro-batches: step statistics computed distributed, a global
   normaliser all-reduced, gradients of a shared parameter summed over ranks = whole-batch gradient.

Checks never raise mid-way (a rank that stopped would hang the others): failures are collected,
counted with one all-reduce at the end, and every rank exits 1 if any rank saw one.
"""

from __future__ import annotations

import math
import sys

import torch
import torch.distributed as dist

from megatron_hapo.algorithms import (
    AGG_MODES,
    HapoLossConfig,
    hapo_policy_loss,
    loss_normalizer,
    normalize_entropy,
)

FAILURES: list[str] = []


def check(ok: bool, what: str) -> None:
    if not ok:
        FAILURES.append(what)


def close(a: float, b: float, rel: float) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-300)


def split_rows(total: int, sizes: list[int], rank: int) -> slice:
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def row_sizes(total: int, world: int, variant: int) -> list[int]:
    """Uneven row counts; variant 1 gives the last rank no rows at all."""
    if variant == 0:
        base = [total // 2] + [1] * (world - 1)
    else:
        base = [total - (world - 2)] + [1] * (world - 2) + [0]
    base[0] += total - sum(base)
    return base


def check_stats(rank: int, world: int) -> None:
    gen = torch.Generator().manual_seed(1234)
    b, t = 12, 40
    for dtype in (torch.float32, torch.float64):
        for variant in (0, 1):
            h = torch.exp(torch.randn(b, t, generator=gen, dtype=torch.float64) * 2).to(dtype)
            lengths = torch.randint(1, t + 1, (b,), generator=gen)
            mask = torch.arange(t)[None] < lengths[:, None]
            h[2:4, ::3] = 0.75  # ties
            h[5, 0] = 0.0  # at the 1e-8 floor
            sizes = row_sizes(b, world, variant)
            if variant == 0:
                mask[split_rows(b, sizes, 1)] = False  # rank 1 holds rows but no valid token
            rows = split_rows(b, sizes, rank)
            for mode in ("signed", "released"):
                for q in (0.8, 0.5, 0.0, 1.0, 0.37):
                    tag = f"{dtype} variant={variant} mode={mode} q={q}"
                    full_hat, full = normalize_entropy(h, mask, q, mode)
                    local_hat, dist_stats = normalize_entropy(
                        h[rows], mask[rows], q, mode, group=dist.group.WORLD
                    )
                    rel = 1e-12 if dtype == torch.float64 else 1e-6
                    check(dist_stats.pivot == full.pivot, f"pivot {tag}: {dist_stats.pivot} != {full.pivot}")
                    for name in ("sigma", "pos_scale", "neg_scale"):
                        a, e = getattr(dist_stats, name), getattr(full, name)
                        check(close(a, e, rel), f"{name} {tag}: {a} != {e}")
                    check(
                        torch.allclose(local_hat, full_hat[rows], rtol=rel * 10, atol=rel * 10),
                        f"h_hat {tag}: max diff {(local_hat - full_hat[rows]).abs().max() if local_hat.numel() else 0}",
                    )
                    gathered: list = [None] * world
                    dist.all_gather_object(gathered, tuple(dist_stats))
                    check(
                        all(g == gathered[0] for g in gathered),
                        f"stats differ between ranks {tag}: {gathered}",
                    )


def check_large_and_edge(rank: int, world: int) -> None:
    # many tokens, many rounds of the exact search; each rank a different count
    gen = torch.Generator().manual_seed(99)
    n_all = [3000, 1700, 1] + [50] * max(0, world - 3)
    values = [torch.exp(torch.randn(n, generator=gen) * 3) for n in n_all[:world]]
    full_hat, full = normalize_entropy(
        torch.cat(values), torch.ones(sum(n_all[:world]), dtype=torch.bool), 0.8
    )
    mine = values[rank]
    _, stats = normalize_entropy(mine, torch.ones_like(mine, dtype=torch.bool), 0.8, group=dist.group.WORLD)
    check(stats.pivot == full.pivot, f"large pivot {stats.pivot} != {full.pivot}")
    check(close(stats.sigma, full.sigma, 1e-6), "large sigma")

    # TV1 split over ranks: row 0 on rank 0, row 1 on rank 1, nothing elsewhere
    tv1_h = torch.tensor(
        [[0.01, 0.5, 2.0, 0.001, 1.0, 0.0], [0.2, 3.0, 0.05, 0.0, 0.0, 0.0]], dtype=torch.float64
    )
    tv1_m = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]]).bool()
    rows = slice(rank, rank + 1) if rank < 2 else slice(0, 0)
    for mode, sign in (("signed", 1.0), ("released", -1.0)):
        h_hat, stats = normalize_entropy(tv1_h[rows], tv1_m[rows], 0.8, mode, group=dist.group.WORLD)
        check(abs(stats.pivot - math.log(2)) < 1e-12, f"TV1 pivot {stats.pivot}")
        check(abs(stats.sigma - 3.6627) < 1e-4, f"TV1 sigma {stats.sigma}")
        check(abs(stats.pos_scale - 9.0333) < 1e-4, f"TV1 s+ {stats.pos_scale}")
        check(abs(stats.neg_scale - sign * 0.4819) < 1e-4, f"TV1 s- {stats.neg_scale}")
        expected = [[-0.6971, -0.1824, 0.0, -1.0, -0.0912, 0.0], [-0.3029, 1.0, -0.4853, 0.0, 0.0, 0.0]]
        exp_rows = torch.tensor(expected, dtype=torch.float64)[rows]
        if mode == "released":
            exp_rows = exp_rows.abs()
        check(torch.allclose(h_hat, exp_rows, atol=1e-4), f"TV1 h_hat {mode}: {h_hat}")

    # no valid token anywhere: neutral stats everywhere
    _, stats = normalize_entropy(
        torch.rand(2, 3), torch.zeros(2, 3, dtype=torch.bool), group=dist.group.WORLD
    )
    check(tuple(stats) == (0.0, 1.0, 0.0, 0.0), f"all-masked stats {stats}")

    # a NaN on rank 1 only: every rank raises the same clear error
    h = torch.rand(2, 3) + 0.1
    if rank == 1:
        h[0, 0] = float("nan")
    try:
        normalize_entropy(h, torch.ones(2, 3), group=dist.group.WORLD)
        check(False, "NaN entropy on rank 1 did not raise on this rank")
    except ValueError as exc:
        check("not finite" in str(exc), f"unexpected error {exc}")


def check_partition_invariance(rank: int, world: int) -> None:
    gen = torch.Generator().manual_seed(7)
    b, t = 10, 8
    f64 = torch.float64
    lengths = torch.randint(1, t + 1, (b,), generator=gen)
    mask = torch.arange(t)[None] < lengths[:, None]
    old = -torch.rand(b, t, generator=gen, dtype=f64) * 3
    base = old + 0.2 * torch.randn(b, t, generator=gen, dtype=f64)
    adv = torch.randn(b, t, generator=gen, dtype=f64)
    entropy = torch.exp(torch.randn(b, t, generator=gen, dtype=f64) * 1.5)
    rollout = old + 0.05 * torch.randn(b, t, generator=gen, dtype=f64)
    feats = torch.randn(b, t, 3, generator=gen, dtype=f64) * 0.1
    sizes = row_sizes(b, world, 0)  # e.g. [5, 1, 4]... uneven
    rows = split_rows(b, sizes, rank)
    micro = [
        slice(rows.start, rows.start + 1),
        slice(rows.start + 1, rows.stop),
    ]  # ≥ 2 micro-batches on a rank

    for mode in ("signed", "released"):
        _, full_stats = normalize_entropy(entropy, mask, 0.8, mode)
        _, stats = normalize_entropy(entropy[rows], mask[rows], 0.8, mode, group=dist.group.WORLD)
        for agg in AGG_MODES:
            config = HapoLossConfig(entropy_mode=mode, agg=agg, tis_cap=2.0, token_sum_norm_len=t)
            # reference: the whole batch in one process
            theta = torch.zeros(3, dtype=f64, requires_grad=True)
            lp = base + feats @ theta
            whole, _ = hapo_policy_loss(
                lp, old, adv, entropy, mask, config, full_stats,
                rollout_log_prob=rollout, global_normalizer=int(loss_normalizer(mask, agg)),
            )  # fmt: skip
            whole.backward()
            whole_grad = theta.grad.clone()
            # distributed: per-rank micro-batches with the global normaliser
            local_n = sum(loss_normalizer(mask[m], agg) for m in micro)
            global_n = torch.as_tensor(local_n, dtype=torch.int64).reshape(1)
            dist.all_reduce(global_n)
            theta = torch.zeros(3, dtype=f64, requires_grad=True)
            lp = base + feats @ theta
            total = torch.zeros((), dtype=f64)
            for m in micro:
                loss, _ = hapo_policy_loss(
                    lp[m], old[m], adv[m], entropy[m], mask[m], config, stats,
                    rollout_log_prob=rollout[m], global_normalizer=global_n[0],
                )  # fmt: skip
                total = total + loss
            total.backward()
            summed = torch.cat([theta.grad.clone(), total.detach().reshape(1)])
            dist.all_reduce(summed)
            tag = f"partition mode={mode} agg={agg}"
            check(
                close(summed[3].item(), whole.item(), 1e-10),
                f"{tag}: loss {summed[3].item()} != {whole.item()}",
            )
            check(
                torch.allclose(summed[:3], whole_grad, rtol=1e-9, atol=1e-13),
                f"{tag}: grad {summed[:3]} != {whole_grad}",
            )


def main() -> int:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if world < 3:
        print("job_entropy_stats needs >= 3 ranks (uneven layouts, an empty rank)", file=sys.stderr)
        return 2
    check_stats(rank, world)
    check_large_and_edge(rank, world)
    check_partition_invariance(rank, world)
    n_fail = torch.tensor([len(FAILURES)])
    dist.all_reduce(n_fail)
    for f in FAILURES[:20]:
        print(f"[rank {rank}] FAIL {f}", file=sys.stderr)
    if rank == 0 and n_fail.item() == 0:
        print(f"job_entropy_stats: all distributed checks passed on {world} ranks")
    dist.destroy_process_group()
    return 1 if n_fail.item() else 0


if __name__ == "__main__":
    sys.exit(main())
