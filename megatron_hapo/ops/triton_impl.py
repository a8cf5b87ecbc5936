"""Triton kernels for the log-prob / entropy op (GPU; CPU through ``TRITON_INTERPRET=1`` in tests).

Imported only when the Triton implementation is chosen, because importing triton is slow and
``TRITON_INTERPRET`` must be set before that import.

Forward (``_fwd_stats_kernel``): one program per (row, vocab split) streams the split in tiles of BLOCK
columns, reading the logits once, and keeps an online (max m, sum-exp s, Σ e·(z - m) w) in registers, the
streaming-softmax idea of the online-normaliser / FlashAttention papers applied to the entropy sum:

    m' = max(m, max_tile z)            α = exp(m - m')
    s' = α s + Σ_tile e,               e = exp(z - m')
    w' = α (w + (m - m') s) + Σ_tile e (z - m')
    at the end:  m_P = m,  log s_P = log s,  H_P = log s - w / s

Splitting the vocab of a row over several programs only serves occupancy for small N; the splits
are merged in torch with the same rule as tensor-parallel shards (``partition_stats``).

Backward (``_bwd_kernel``): one program per (row, tile), one read of the logits tile, one write of the
gradient tile (possibly into the logits buffer itself):

    g_v = (1[v=t] g_lp - p_v (g_lp + g_H (log p_v + H))) / T,    log p_v = (z_v - M) - log S
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from megatron_hapo.ops import torch_impl
from megatron_hapo.ops.partition_stats import RowStats, merge_partitions

# Largest vocab tile per program. Module constants so tests can shrink them and run several tiles per
# row in the interpreter; 4096 fp32 = 16 values per thread at 8 warps.
MAX_BLOCK_FWD = 4096
MAX_BLOCK_BWD = 4096
NUM_WARPS = 8
# Forward grid: at least this many programs per SM before the vocab of a row is split.
_PROGRAMS_PER_SM = 4


@triton.jit
def _fwd_stats_kernel(
    x_ptr,
    stride_x,
    inv_temp_ptr,
    m_ptr,
    log_s_ptr,
    ent_ptr,
    n_rows,
    n_cols,
    cols_per_split,
    HAS_TEMP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    split = tl.program_id(1)
    col_lo = split * cols_per_split
    col_hi = tl.minimum(col_lo + cols_per_split, n_cols)
    row_ptr = x_ptr + row.to(tl.int64) * stride_x
    if HAS_TEMP:
        it = tl.load(inv_temp_ptr + row)
    neg_inf = float("-inf")
    m = tl.full((), neg_inf, tl.float32)
    s = tl.zeros((), tl.float32)
    w = tl.zeros((), tl.float32)
    for start in range(col_lo, col_hi, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        z = tl.load(row_ptr + cols, mask=cols < col_hi, other=neg_inf).to(tl.float32)
        if HAS_TEMP:
            z = z * it
        m_new = tl.maximum(m, tl.max(z, axis=0))
        # Shift by 0 while everything seen is -inf, so that -inf - shift stays -inf (e = 0), not NaN.
        shift = tl.where(m_new == neg_inf, 0.0, m_new)
        d = z - shift
        e = tl.exp(d)
        # e == 0 for masked (-inf) or underflowed entries: their e·d term is 0, not 0·(-inf) = NaN.
        ed = tl.where(e == 0.0, 0.0, e * d)
        # Rescale the running sums from the old maximum m (-inf before any mass: alpha = 0, s = w = 0).
        alpha = tl.exp(m - shift)
        w = tl.where(alpha == 0.0, 0.0, alpha * (w + (m - shift) * s)) + tl.sum(ed, axis=0)
        s = s * alpha + tl.sum(e, axis=0)
        m = m_new
    log_s = tl.log(s)  # -inf for a split without mass (all -inf)
    out = split * n_rows + row
    tl.store(m_ptr + out, m)
    tl.store(log_s_ptr + out, log_s)
    tl.store(ent_ptr + out, tl.where(s > 0.0, log_s - w / s, 0.0))


@triton.jit
def _bwd_kernel(
    x_ptr,
    stride_x,
    g_ptr,
    stride_g,
    target_ptr,
    inv_temp_ptr,
    m_ptr,
    log_s_ptr,
    ent_ptr,
    glp_ptr,
    gent_ptr,
    n_cols,
    HAS_TEMP: tl.constexpr,
    HAS_GLP: tl.constexpr,
    HAS_GENT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = cols < n_cols
    row64 = row.to(tl.int64)
    z = tl.load(x_ptr + row64 * stride_x + cols, mask=valid, other=0.0).to(tl.float32)
    if HAS_TEMP:
        it = tl.load(inv_temp_ptr + row)
        z = z * it
    # (z - M) - log S rather than z - (M + log S): M + log S rounds log S away for huge logits
    log_p = (z - tl.load(m_ptr + row)) - tl.load(log_s_ptr + row)
    p = tl.exp(log_p)
    if HAS_GLP:
        g_lp = tl.load(glp_ptr + row)
    else:
        g_lp = 0.0
    if HAS_GENT:
        coef = g_lp + tl.load(gent_ptr + row) * (log_p + tl.load(ent_ptr + row))
        # p == 0 (masked logit): 0 instead of 0·(-inf); a NaN p stays NaN.
        grad = tl.where(p == 0.0, 0.0, -p * coef)
    else:
        grad = -p * g_lp
    target = tl.load(target_ptr + row)  # -1 when another TP rank owns the target
    grad = grad + tl.where(cols == target, g_lp, 0.0)
    if HAS_TEMP:
        grad = grad * it
    tl.store(g_ptr + row64 * stride_g + cols, grad.to(g_ptr.dtype.element_ty), mask=valid)


def _block(n_cols: int, cap: int) -> int:
    return min(cap, triton.next_power_of_2(n_cols))


def _num_splits(logits: torch.Tensor, block: int) -> int:
    """Vocab splits per row so that the forward grid fills the GPU even for few tokens."""
    n_rows, n_cols = logits.shape
    if not logits.is_cuda:
        return 1
    sms = torch.cuda.get_device_properties(logits.device).multi_processor_count
    want = triton.cdiv(_PROGRAMS_PER_SM * sms, max(n_rows, 1))
    return max(1, min(want, triton.cdiv(n_cols, block)))


def forward_stats(
    logits: torch.Tensor,
    target_local: torch.Tensor,
    inv_temp: torch.Tensor | None,
    chunk_rows: int,
    num_splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shard statistics ``(m_P, log s_P, H_P, zt_P)`` ``[N]`` fp32; contract of ``torch_impl.forward_stats``.

    ``chunk_rows`` is unused (the kernel streams tiles); ``num_splits`` overrides the vocab split count.
    """
    del chunk_rows
    n_rows, n_cols = logits.shape
    block = _block(n_cols, MAX_BLOCK_FWD)
    splits = num_splits if num_splits is not None else _num_splits(logits, block)
    # Split boundaries on tile boundaries, so that every tile but the last of a split is full.
    cols_per_split = triton.cdiv(triton.cdiv(n_cols, splits), block) * block
    splits = triton.cdiv(n_cols, cols_per_split)
    m = torch.empty(splits, n_rows, dtype=torch.float32, device=logits.device)
    log_s = torch.empty_like(m)
    ent = torch.empty_like(m)
    if n_rows > 0:
        _fwd_stats_kernel[(n_rows, splits)](
            logits,
            logits.stride(0),
            inv_temp if inv_temp is not None else m,
            m,
            log_s,
            ent,
            n_rows,
            n_cols,
            cols_per_split,
            HAS_TEMP=inv_temp is not None,
            BLOCK=block,
            num_warps=NUM_WARPS,
        )
    if splits > 1:
        m_row, log_s_row, ent_row = merge_partitions(m, log_s, ent, dim=0)
    else:
        m_row, log_s_row, ent_row = m[0], log_s[0], ent[0]
    zt = torch_impl.target_logit(logits, target_local, inv_temp, torch.float32)
    return m_row, log_s_row, ent_row, zt


def backward(
    grad_logits: torch.Tensor,
    logits: torch.Tensor,
    target_local: torch.Tensor,
    inv_temp: torch.Tensor | None,
    stats: RowStats,
    grad_log_prob: torch.Tensor | None,
    grad_entropy: torch.Tensor | None,
    chunk_rows: int,
) -> None:
    """Write d(loss)/d(logits) into ``grad_logits``; same contract as ``torch_impl.backward``."""
    del chunk_rows
    n_rows, n_cols = logits.shape
    if n_rows == 0:
        return
    if grad_logits.stride(1) != 1:
        raise ValueError(
            f"triton backward: gradient buffer needs stride 1 along vocab, got {grad_logits.stride()}"
        )
    block = _block(n_cols, MAX_BLOCK_BWD)
    dummy = stats.z_max
    _bwd_kernel[(n_rows, triton.cdiv(n_cols, block))](
        logits,
        logits.stride(0),
        grad_logits,
        grad_logits.stride(0),
        target_local,
        inv_temp if inv_temp is not None else dummy,
        stats.z_max,
        stats.log_s,
        stats.entropy,
        grad_log_prob.float().contiguous() if grad_log_prob is not None else dummy,
        grad_entropy.float().contiguous() if grad_entropy is not None else dummy,
        n_cols,
        HAS_TEMP=inv_temp is not None,
        HAS_GLP=grad_log_prob is not None,
        HAS_GENT=grad_entropy is not None,
        BLOCK=block,
        num_warps=NUM_WARPS,
    )
