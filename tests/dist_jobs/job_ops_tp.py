"""Vocab-parallel log-prob / entropy / HAPO loss at TP = world size equal TP = 1 (gloo, CPU).

Every rank builds the same full logits [N, V], keeps its Megatron vocab shard [r·V/tp, (r+1)·V/tp) and
checks values against the TP = 1 result and the float64 reference, and its gradient shard against the
slice of the full gradient. Runs the torch implementation, and the Triton kernels too when the job is
launched with TRITON_INTERPRET=1 (Triton's CPU interpreter). Exits non-zero on the first failure.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from megatron_hapo.algorithms import HapoLossConfig
from megatron_hapo.ops import fused_hapo_loss, vocab_parallel_logprob_entropy
from tests.ops._reference import reference_grad, reference_logprob_entropy

N, V = 10, 96
NEG_INF = float("-inf")


def full_inputs(tp: int, dtype: torch.dtype, scale: float = 3.0):
    g = torch.Generator().manual_seed(123)
    x = torch.randn(N, V, generator=g, dtype=torch.float64) * scale
    t = torch.randint(0, V, (N,), generator=g)
    shard = V // tp
    if scale < 100:
        x[0, :shard] = NEG_INF  # rank 0's shard has no mass on row 0
        x[1, shard:] = NEG_INF  # only rank 0 has mass on row 1
        t[1] = 3
        x[2, t[2]] = NEG_INF  # masked target
        x[3, ::3] = NEG_INF
    else:
        x[0, :4] = 3.0e38  # huge logits on rank 0's shard; the other shards have b = 0
    temp = torch.rand(N, generator=g) + 0.5
    g_lp, g_h = (
        torch.randn(N, generator=g, dtype=torch.float64),
        torch.randn(N, generator=g, dtype=torch.float64),
    )
    return x.to(dtype), t, temp, g_lp, g_h


def run(x, t, temp, g_lp, g_h, group, impl, inplace=False):
    """Forward and backward of Σ g_lp·log_prob (+ Σ g_h·entropy unless g_h is None)."""
    leaf = x.clone().requires_grad_(True)
    logits = leaf * 1 if inplace else leaf
    lp, ent = vocab_parallel_logprob_entropy(
        logits,
        t,
        temp,
        tp_group=group,
        chunk_size=3,
        entropy_grad=g_h is not None,
        impl=impl,
        inplace_backward=inplace,
    )
    loss = (lp * g_lp.float()).sum()
    if g_h is not None:
        loss = loss + (ent * g_h.float()).sum()
    loss.backward()
    return lp.detach(), ent.detach(), leaf.grad


def close(actual, expected, what, **tol):
    expected = expected.to(actual.dtype)
    finite = torch.isfinite(expected)
    torch.testing.assert_close(actual[finite], expected[finite], msg=lambda m: f"{what}: {m}", **tol)
    assert torch.equal(actual[~finite], expected[~finite]), f"{what}: non-finite entries differ"


def check_op(rank, tp, group, impl, dtype, scale, use_temp, inplace=False, entropy_grad=True):
    x, t, temp, g_lp, g_h = full_inputs(tp, dtype, scale)
    temp = temp if use_temp else None
    g_h = g_h if entropy_grad else None
    shard = V // tp
    local = x[:, rank * shard : (rank + 1) * shard].contiguous()
    lp, ent, grad = run(local, t, temp, g_lp, g_h, group, impl, inplace)
    lp1, ent1, grad1 = run(x, t, temp, g_lp, g_h, None, "torch")
    what = f"rank {rank} tp {tp} {impl} {dtype} scale {scale} temp {use_temp} inplace {inplace} H-grad {entropy_grad}"
    grad_tol = dict(rtol=1e-2, atol=2e-3) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-5)
    close(lp, lp1, what + " log_prob vs TP=1", rtol=1e-6, atol=1e-5)
    close(ent, ent1, what + " entropy vs TP=1", rtol=1e-6, atol=1e-5)
    close(
        grad.float(), grad1[:, rank * shard : (rank + 1) * shard].float(), what + " grad vs TP=1", **grad_tol
    )
    ref_lp, ref_ent = reference_logprob_entropy(x, t, temp)
    close(lp.double(), ref_lp, what + " log_prob vs float64", rtol=1e-5, atol=2e-5)
    close(ent.double(), ref_ent, what + " entropy vs float64", rtol=1e-5, atol=2e-5)
    ref_g = reference_grad(x, t, temp, g_lp, g_h)[:, rank * shard : (rank + 1) * shard]
    close(grad.double(), ref_g, what + " grad vs float64", **grad_tol)


def check_fused_loss(rank, tp, group, impl):
    x, t, temp, _, _ = full_inputs(tp, torch.float32, scale=2.0)
    x[torch.isinf(x)] = -5.0  # finite logits: the loss compares ratios, -inf log-probs would dominate
    g = torch.Generator().manual_seed(7)
    old = torch.randn(2, N // 2, generator=g) - 4
    adv = torch.randn(2, N // 2, generator=g)
    mask = torch.ones(2, N // 2)
    mask[1, -2:] = 0
    config = HapoLossConfig(stats_scope="micro_batch")
    shard = V // tp
    results = []
    for logits, grp, name in (
        (x[:, rank * shard : (rank + 1) * shard].contiguous(), group, impl),
        (x, None, "torch"),
    ):
        leaf = logits.clone().requires_grad_(True)
        loss, metrics = fused_hapo_loss(
            leaf, t.view(2, -1), old, adv, mask, config, temperature=temp.view(2, -1), tp_group=grp, impl=name
        )
        loss.backward()
        results.append((loss.detach(), leaf.grad, metrics["entropy/mean"]))
    (loss, grad, ent_mean), (loss1, grad1, ent_mean1) = results
    torch.testing.assert_close(loss, loss1, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ent_mean, ent_mean1, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, grad1[:, rank * shard : (rank + 1) * shard], rtol=1e-5, atol=1e-8)


def main():
    dist.init_process_group("gloo")
    rank, tp = dist.get_rank(), dist.get_world_size()
    group = dist.new_group(list(range(tp)))  # a TP group object, as Megatron's parallel_state hands out
    impls = ["torch"]
    if os.environ.get("TRITON_INTERPRET") == "1":
        from megatron_hapo.ops import triton_impl

        triton_impl.MAX_BLOCK_FWD, triton_impl.MAX_BLOCK_BWD = 8, 16  # several tiles per shard row
        impls.append("triton")
    for impl in impls:
        check_op(rank, tp, group, impl, torch.float32, 3.0, use_temp=True)
        check_op(rank, tp, group, impl, torch.float32, 3.0, use_temp=True, entropy_grad=False)
        check_op(rank, tp, group, impl, torch.bfloat16, 3.0, use_temp=False, inplace=True)
        check_op(rank, tp, group, impl, torch.float32, 1e4, use_temp=False)
        check_fused_loss(rank, tp, group, impl)
    dist.barrier()
    print(f"rank {rank}/{tp}: ops TP checks passed for {impls}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
