"""Chunked torch implementation of the log-prob / entropy op (CPU, float64 and the fallback on GPU).

Rows (tokens) are processed ``chunk_rows`` at a time, so the only ``[chunk, vocab/tp]`` temporaries alive are
a few per-chunk buffers; nothing of size ``[N, vocab/tp]`` is allocated except the gradient that backward
returns (and not even that with ``inplace_backward``). On CPU a chunk of about 1 MiB keeps every pass of
a chunk in cache (L2/L3), which is what makes this path faster than unchunked code.

Forward, per row of the local shard, with z = logits · (1/T) in the compute dtype (fp32, or fp64 for fp64
logits) and q = softmax(z) over the shard (see ``partition_stats`` for how shards combine):

    m_P     = max(z)
    log s_P = -max(log q)                (log q = z - m_P - log s_P is exactly -log s_P at the argmax)
    H_P     = -Σ_v q_v log q_v

Backward, given the merged row maximum M, log S and entropy H (no communication: they are global
already), with d_v = z_v - M, log p_v = d_v - log S and p_v = exp(d_v) / S:

    d log_prob / d logits_v = (1[v = t] - p_v) / T
    d H / d logits_v        = -p_v (log p_v + H) / T          (= -p_v (z_v - Σ_u p_u z_u) / T)

Log-prob only (HAPO's training path): p_v = softmax_shard(z)_v · a_P with a_P the shard's share of the
probability mass, so a chunk costs one fused softmax and one scaling. With the entropy term the gradient
row is exp(d_v) · (slope · d_v + offset) plus the one-hot term, with per-row constants
slope = -g_H / (T S) and offset = -(g_lp + g_H (H - log S)) / (T S).
"""

from __future__ import annotations

import torch

from megatron_hapo.ops.partition_stats import RowStats

# Per-chunk fp32 working set on CPU: two chunk buffers of this size stay in a core's L2 cache.
_CPU_CHUNK_BYTES = 1 << 20
# On GPU the torch path is only a fallback; big chunks amortise kernel launches.
_GPU_CHUNK_BYTES = 256 << 20
# Entries with z - M below this have p == 0 exactly (exp underflows in fp32 and fp64); flooring them keeps
# p · (log p + H) at 0 instead of 0 · (-inf) = NaN for masked (-inf) logits.
_SHIFTED_FLOOR = -1.0e4


def compute_dtype(logits_dtype: torch.dtype) -> torch.dtype:
    """fp64 logits are computed in fp64 (for gradcheck); everything else in fp32."""
    return torch.float64 if logits_dtype == torch.float64 else torch.float32


def default_chunk_rows(logits: torch.Tensor) -> int:
    """Rows per chunk so that one fp32 chunk is ~1 MiB on CPU (L2-resident) or ~256 MiB on GPU."""
    budget = _GPU_CHUNK_BYTES if logits.is_cuda else _CPU_CHUNK_BYTES
    return max(1, budget // (logits.shape[1] * 4))


def forward_stats(
    logits: torch.Tensor, target_local: torch.Tensor, inv_temp: torch.Tensor | None, chunk_rows: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shard statistics ``(m_P, log s_P, H_P, zt_P)``, each ``[N]`` in the compute dtype.

    ``logits`` is ``[N, V/tp]``; ``target_local`` ``[N]`` holds the target's column in this shard or -1 when
    another rank owns it; ``inv_temp`` is ``[N]`` (1/T per token) or None for T = 1.
    """
    n_rows, n_cols = logits.shape
    cdt = compute_dtype(logits.dtype)
    z_max = torch.empty(n_rows, dtype=cdt, device=logits.device)
    log_s = torch.empty_like(z_max)
    ent = torch.empty_like(z_max)
    zbuf = None
    if inv_temp is not None:
        zbuf = torch.empty(min(chunk_rows, n_rows), n_cols, dtype=cdt, device=logits.device)
    for lo in range(0, n_rows, chunk_rows):
        hi = min(lo + chunk_rows, n_rows)
        xc = logits[lo:hi]
        if inv_temp is None:
            z = xc  # softmax / log_softmax upcast internally (dtype=cdt): no fp32 copy of the chunk
        else:
            # [n, 1] fp32 scale promotes bf16 x to the fp32 buffer in the same pass
            z = torch.mul(xc, inv_temp[lo:hi, None], out=zbuf[: hi - lo])
        # Two fused kernels instead of max/sub/exp/sum by hand: on CPU torch's softmax kernels are ~1.5x
        # faster than a separate torch.exp, and both outputs are exact (no Σ p·z - max cancellation).
        q = torch.softmax(z, dim=1, dtype=cdt)
        log_q = torch.log_softmax(z, dim=1, dtype=cdt)
        m_c = z.amax(dim=1).to(cdt)
        z_max[lo:hi] = m_c
        # A row of the shard that is all -inf has no mass here (softmax gives NaN): s_P = 0.
        log_s[lo:hi] = torch.where(torch.isneginf(m_c), m_c, -log_q.amax(dim=1))
        h = -torch.linalg.vecdot(q, log_q)
        nan_rows = torch.isnan(h)
        if bool(nan_rows.any()):
            # Masked (-inf) logits give q·log q = 0·(-inf) = NaN in the dot product; their true term is 0.
            # nansum drops exactly those: a genuine NaN logit already made log s_P NaN, so it still
            # propagates to log_prob and entropy through the merge.
            h = torch.where(nan_rows, -(q * log_q).nansum(dim=1), h)
        ent[lo:hi] = h
    zt = target_logit(logits, target_local, inv_temp, cdt)
    return z_max, log_s, ent, zt


def target_logit(
    logits: torch.Tensor, target_local: torch.Tensor, inv_temp: torch.Tensor | None, cdt: torch.dtype
) -> torch.Tensor:
    """z_t if this shard owns the target, else 0: ``[N]``."""
    owned = target_local >= 0
    col = torch.where(owned, target_local, torch.zeros_like(target_local))
    zt = logits.gather(1, col[:, None]).squeeze(1).to(cdt)
    if inv_temp is not None:
        zt = zt * inv_temp
    return torch.where(owned, zt, torch.zeros_like(zt))


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
    """Write d(loss)/d(logits) ``[N, V/tp]`` into ``grad_logits`` (which may be ``logits`` itself).

    ``stats`` are the merged per-token statistics (``RowStats``); ``grad_log_prob`` and ``grad_entropy`` are
    the upstream gradients ``[N]`` or None (treated as 0). A chunk's result is written to ``grad_logits``
    only after the chunk has been read from ``logits``, so aliasing the two is safe.
    """
    n_rows, n_cols = logits.shape
    cdt = compute_dtype(logits.dtype)
    dev = logits.device
    g_lp = torch.zeros(n_rows, dtype=cdt, device=dev) if grad_log_prob is None else grad_log_prob.to(cdt)
    it = torch.ones(n_rows, dtype=cdt, device=dev) if inv_temp is None else inv_temp
    # One-hot term g_lp / T at the target column, added in fp32 before the cast: for a confident token
    # (p_t ≈ 1) the cancellation 1 - p_t must not happen in bf16.
    owned = target_local >= 0
    target_col = torch.where(owned, target_local, torch.zeros_like(target_local))
    target_val = torch.where(owned, g_lp * it, torch.zeros_like(g_lp))

    direct = grad_logits.dtype == cdt
    rows = min(chunk_rows, n_rows)
    work = None if direct else torch.empty(rows, n_cols, dtype=cdt, device=dev)
    zbuf = None if inv_temp is None else torch.empty(rows, n_cols, dtype=cdt, device=dev)
    arange = torch.arange(rows, device=dev)
    log_prob_only = grad_entropy is None
    if log_prob_only:
        # p = softmax over the shard · a_P (the shard's mass): torch's fused softmax is ~1.5x faster on CPU
        # than sub + exp, and this is the path of every HAPO training step (log-prob gradient only).
        factor = -g_lp * it * torch.exp(stats.shard_log_mass)
        dead = torch.isneginf(stats.shard_log_mass)  # shard all -inf: its softmax is NaN, p is 0
    else:
        # Row factor of exp(d), d = z - M: -(g_lp + g_H (d - log S + H)) / (T S) = slope · d + offset
        scale = it * torch.exp(-stats.log_s)
        g_h = grad_entropy.to(cdt)
        slope, offset = -g_h * scale, -(g_lp + g_h * (stats.entropy - stats.log_s)) * scale
        ebuf = torch.empty(rows, n_cols, dtype=cdt, device=dev)
    for lo in range(0, n_rows, chunk_rows):
        hi = min(lo + chunk_rows, n_rows)
        n = hi - lo
        buf = grad_logits[lo:hi] if direct else work[:n]
        z = logits[lo:hi]
        if inv_temp is not None:
            # [n, 1] fp32 scale: promotes bf16 x to fp32 in the same pass
            z = torch.mul(z, inv_temp[lo:hi, None], out=zbuf[:n])
        if log_prob_only:
            _chunk_log_prob_grad(buf, z, factor[lo:hi], dead[lo:hi], cdt)
        else:
            _chunk_full_grad(buf, z, stats.z_max[lo:hi], slope[lo:hi], offset[lo:hi], ebuf[:n])
        buf.index_put_((arange[:n], target_col[lo:hi]), target_val[lo:hi], accumulate=True)
        if not direct:
            grad_logits[lo:hi].copy_(buf)


def _chunk_log_prob_grad(out, z, factor, dead, cdt) -> None:
    """out = softmax_shard(z) · (-g_lp a_P / T): the log-prob gradient without its one-hot term."""
    torch.mul(torch.softmax(z, dim=1, dtype=cdt), factor[:, None], out=out)
    if bool(dead.any()):
        out[dead] = 0


def _chunk_full_grad(out, z, z_max, slope, offset, ebuf) -> None:
    """out = exp(d) · (slope · d + offset), d = z - M: log-prob and entropy gradients together."""
    torch.sub(z, z_max[:, None], out=out)
    e = torch.exp(out, out=ebuf)
    out.clamp_(min=_SHIFTED_FLOOR)
    out.mul_(slope[:, None]).add_(offset[:, None])  # addcmul with [n, 1] operands was 5x slower on CPU
    out.mul_(e)
