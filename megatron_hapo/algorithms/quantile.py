"""Exact nearest-rank quantile, on one process or over the tokens of a whole process group.

The released HAPO code takes the pivot of the log-entropies as ``kthvalue(x, round(q·(N−1)) + 1)``
(Python ``round``: halves go to the even neighbour). This module reproduces that rule exactly and
extends it to data spread over ranks **without gathering the data**: the k-th smallest value of
the union is found by a radix-style search on the values' order-preserving integer keys, where each
round all-reduces 255 counts (``count(key ≤ t_j)`` for 255 thresholds). A float32 search takes
≤ 5 rounds, a float64 one ≤ 9, whatever the number of tokens, and the answer is bit-identical to
``kthvalue`` on the concatenated tokens and identical on every rank.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

_INT64_MAX = 2**63 - 1
_N_THRESHOLDS = 255  # counts all-reduced per search round: the search interval shrinks 256x per round


def nearest_rank_index(q: float, n: int) -> int:
    """0-based index of the nearest-rank q-quantile among ``n`` sorted values.

    index = round(q · (n − 1)), with Python's round-half-to-even (as the released ``torch_quantile``).
    """
    if not 0.0 <= float(q) <= 1.0:
        raise ValueError(f"quantile q={q!r} is outside [0, 1]; pass a fraction such as pivot_quantile=0.8")
    if n <= 0:
        raise ValueError(f"the quantile of an empty set (n={n}) is undefined")
    return round(float(q) * (n - 1))


def float_to_order_key(x: torch.Tensor) -> torch.Tensor:
    """Map float32/float64 values to int64 keys with the same order (x < y ⟺ key(x) < key(y)).

    IEEE-754 bit patterns order positive floats like integers; for negative floats the order is
    reversed, so their magnitude bits are flipped: key = b if b ≥ 0 else b XOR (2^(w−1) − 1), where b
    is the signed w-bit pattern. −0.0 maps just below +0.0. NaN must be excluded by the caller.
    """
    if x.dtype == torch.float64:
        bits, flip = x.view(torch.int64), _INT64_MAX
    elif x.dtype == torch.float32:
        bits, flip = x.view(torch.int32).to(torch.int64), 2**31 - 1
    else:
        raise TypeError(f"float_to_order_key supports float32 and float64, got {x.dtype}; upcast first")
    return torch.where(bits >= 0, bits, bits ^ flip)


def order_key_to_float(key: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`float_to_order_key` (the XOR is an involution)."""
    if dtype == torch.float64:
        return torch.where(key >= 0, key, key ^ _INT64_MAX).view(torch.float64)
    if dtype == torch.float32:
        bits = torch.where(key >= 0, key, key ^ (2**31 - 1))
        return bits.to(torch.int32).view(torch.float32)
    raise TypeError(f"order_key_to_float supports float32 and float64, got {dtype}")


def select_kth_key(
    sorted_keys: torch.Tensor,
    k: int,
    lo: int,
    hi: int,
    allreduce_sum: Callable[[torch.Tensor], torch.Tensor],
) -> int:
    """The k-th smallest (0-based) key of the union of every rank's ``sorted_keys``.

    Invariant: the answer x* lies in [lo, hi], where x* = min{x : count_global(key ≤ x) ≥ k + 1}.
    Each round places up to 255 distinct thresholds t_1 < … < t_m in [lo, hi − 1], gets
    c_j = count_global(key ≤ t_j) with one all-reduce, and keeps the sub-interval where c crosses
    k + 1. ``lo``/``hi`` must be the global minimum/maximum key. When hi − lo ≤ 255 the thresholds
    cover every integer of the interval, so the loop ends.
    """
    target = k + 1
    while lo < hi:
        span = hi - lo
        m = min(_N_THRESHOLDS, span)
        # t_j = lo + floor(j·span/(m+1)) ∈ [lo, hi−1], strictly increasing (spacing ≥ 1); Python ints: no overflow.
        thresholds = [lo + (j * span) // (m + 1) for j in range(1, m + 1)]
        t = torch.tensor(thresholds, dtype=torch.int64, device=sorted_keys.device)
        counts = torch.searchsorted(sorted_keys, t, right=True).to(torch.int64)
        counts = allreduce_sum(counts).tolist()
        j = next((i for i, c in enumerate(counts) if c >= target), None)
        if j is None:
            lo = thresholds[-1] + 1
        else:
            hi = thresholds[j]
            if j > 0:
                lo = thresholds[j - 1] + 1
    return lo


def nearest_rank_quantile(
    values: torch.Tensor, q: float, group: dist.ProcessGroup | None = None
) -> tuple[float, int]:
    """Nearest-rank q-quantile of ``values`` (1-D, finite), and the total count N.

    Without ``group``: ``kthvalue(values, round(q·(N−1)) + 1)``. With ``group``: the same over the
    concatenation of every rank's ``values`` (ranks may hold different counts, including zero), using
    :func:`select_kth_key`; every rank must call it. Returns ``(quantile, N)``; N = 0 raises.
    float16/bfloat16 inputs are upcast to float32 first.
    """
    if values.dim() != 1:
        raise ValueError(f"nearest_rank_quantile expects a 1-D tensor, got shape {tuple(values.shape)}")
    if values.dtype not in (torch.float32, torch.float64):
        values = values.float()
    n_local = values.numel()
    if group is None:
        idx = nearest_rank_index(q, n_local)
        return float(torch.kthvalue(values, idx + 1).values), n_local

    n = int(_allreduce(torch.tensor([n_local], dtype=torch.int64, device=values.device), "sum", group))
    idx = nearest_rank_index(q, n)
    return distributed_kth_smallest(values, idx, group), n


def distributed_kth_smallest(values: torch.Tensor, k: int, group: dist.ProcessGroup) -> float:
    """Exact k-th smallest (0-based) value over the 1-D float32/float64 ``values`` of all ranks of ``group``."""
    keys = torch.sort(float_to_order_key(values)).values
    if keys.numel():
        bounds = torch.stack([keys[0], -keys[-1]])
    else:  # a rank without tokens must still join every collective; sentinels lose every min/max
        bounds = torch.tensor([_INT64_MAX, _INT64_MAX], dtype=torch.int64, device=values.device)
    lo, neg_hi = _allreduce(bounds, "min", group).tolist()
    key = select_kth_key(keys, k, lo, -neg_hi, lambda t: _allreduce(t, "sum", group))
    return float(order_key_to_float(torch.tensor([key], dtype=torch.int64), values.dtype))


def _allreduce(t: torch.Tensor, op: str, group: dist.ProcessGroup) -> torch.Tensor:
    ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    t = t.clone()
    dist.all_reduce(t, op=ops[op], group=group)
    return t
