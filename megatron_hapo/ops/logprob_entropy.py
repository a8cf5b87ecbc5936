"""Vocab-parallel per-token log-prob and full-vocabulary entropy, without ``[N, V]`` fp32 copies.

    log_prob_i = z_{i,t_i} - log Σ_v exp(z_{i,v})              z = logits / T_i  (tempered logits)
    entropy_i  = -Σ_v p_{i,v} log p_{i,v},                     p_i = softmax(z_i)

``logits`` is this rank's vocab shard ``[N, V/tp]`` of Megatron's column-parallel output layer (rank r
holds global columns ``[r·V/tp, (r+1)·V/tp)``, Megatron's VocabUtility layout). Each rank reduces its shard
to four numbers per token (max, log-sum-exp, shard entropy, target logit: ``partition_stats``); two
all-reduces of ``[N]`` / ``[3, N]`` over the TP group make them global. Backward needs no communication and recomputes the softmax chunk by chunk (torch) or
tile by tile (Triton), from the saved logits and four saved scalars per token (``partition_stats.RowStats``).

Memory: the op saves the input logits (no copy) and O(N) scalars. Its transient working set is one
chunk (torch) or nothing beyond registers (Triton); backward allocates only the returned gradient
``[N, V/tp]`` in the logits dtype, or none at all with ``inplace_backward=True``.
"""

from __future__ import annotations

import math
import numbers
import os
from types import ModuleType

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from megatron_hapo.ops import torch_impl
from megatron_hapo.ops.partition_stats import RowStats, allreduce_partitions

IMPLS = ("auto", "torch", "triton")
_SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


def triton_available() -> bool:
    """True when ``import triton`` works in this process."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def resolve_impl(impl: str, logits: torch.Tensor) -> str:
    """Pick ``"torch"`` or ``"triton"``: Triton for CUDA tensors when it imports, torch otherwise.

    An explicit ``"triton"`` that cannot run raises instead of falling back, so a benchmark or a run never
    measures the other implementation by accident.
    """
    if impl not in IMPLS:
        raise ValueError(f"vocab_parallel_logprob_entropy: impl={impl!r}; expected one of {IMPLS}")
    if impl == "auto":
        return (
            "triton" if logits.is_cuda and logits.dtype != torch.float64 and triton_available() else "torch"
        )
    if impl == "triton":
        interpreted = os.environ.get("TRITON_INTERPRET") == "1"
        if not logits.is_cuda and not interpreted:
            raise RuntimeError(
                f"vocab_parallel_logprob_entropy: impl='triton' needs CUDA logits, got device {logits.device}; "
                "use impl='torch' on CPU, or set TRITON_INTERPRET=1 before triton is imported to run the "
                "kernels in Triton's (slow) interpreter"
            )
        if logits.is_cuda and interpreted:
            raise RuntimeError(
                "vocab_parallel_logprob_entropy: TRITON_INTERPRET=1 is set but the logits are on CUDA; "
                "the interpreter runs on CPU tensors only: unset TRITON_INTERPRET"
            )
        if logits.dtype == torch.float64:
            raise TypeError(
                "vocab_parallel_logprob_entropy: the Triton kernels take bf16/fp16/fp32 logits; "
                "fp64 (for gradcheck) runs on impl='torch'"
            )
        if logits.stride(1) != 1 and logits.shape[1] > 1:
            raise ValueError(
                f"vocab_parallel_logprob_entropy: impl='triton' needs a contiguous vocab dimension, got "
                f"strides {tuple(logits.stride())}; pass a view with stride 1 along vocab (no copy is made)"
            )
        # Checked last: importing triton is slow and must not happen for requests refused above.
        if not triton_available():
            raise RuntimeError(
                "vocab_parallel_logprob_entropy: impl='triton' requested but `import triton` fails; "
                "install triton (it ships with CUDA builds of torch) or use impl='torch'"
            )
    return impl


def _backend(name: str) -> ModuleType:
    if name == "torch":
        return torch_impl
    from megatron_hapo.ops import triton_impl  # imports triton: only when asked for

    return triton_impl


class _LogProbEntropy(torch.autograd.Function):
    """(logits [N, V/tp]) -> (log_prob [N], entropy [N]); backward -> d/d logits [N, V/tp]."""

    @staticmethod
    def forward(ctx, logits, target_local, inv_temp, backend, tp_group, chunk_rows, entropy_grad, inplace):
        shard_max, shard_log_s, ent, zt = backend.forward_stats(logits, target_local, inv_temp, chunk_rows)
        if tp_group is not None:
            z_max, log_s, ent, zt = allreduce_partitions(shard_max, shard_log_s, ent, zt, tp_group)
            shard_log_mass = (shard_max - z_max) + (shard_log_s - log_s)
        else:
            z_max, log_s = shard_max, shard_log_s
            shard_log_mass = torch.zeros_like(z_max)
        log_prob = (zt - z_max) - log_s  # not zt - (M + log S): see partition_stats
        ctx.save_for_backward(logits, target_local, inv_temp, z_max, log_s, ent, shard_log_mass)
        ctx.backend, ctx.chunk_rows = backend, chunk_rows
        ctx.entropy_grad, ctx.inplace = entropy_grad, inplace
        ctx.set_materialize_grads(False)  # None upstream grads skip their term instead of multiplying zeros
        if not entropy_grad:
            ctx.mark_non_differentiable(ent)
        return log_prob, ent

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_log_prob, grad_entropy):
        logits, target_local, inv_temp, *stats = ctx.saved_tensors
        if not ctx.entropy_grad:
            grad_entropy = None
        if grad_log_prob is None and grad_entropy is None:
            return (None,) * 8
        # In place: the caller promised nothing reads these logits after backward (Megatron's
        # cross-entropy makes the same trade); this saves a second [N, V/tp] buffer.
        if ctx.inplace:
            grad = logits
        else:
            grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
            if grad.device.type == "cpu":
                # Fault the fresh pages in with one parallel pass: first-touching them chunk by chunk from
                # several threads contends on the kernel's page-table lock and was 4x slower.
                grad.zero_()
        ctx.backend.backward(
            grad,
            logits,
            target_local,
            inv_temp,
            RowStats(*stats),
            grad_log_prob,
            grad_entropy,
            ctx.chunk_rows,
        )
        return grad, None, None, None, None, None, None, None


def vocab_parallel_logprob_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    temperature: float | torch.Tensor | None = None,
    tp_group: dist.ProcessGroup | None = None,
    chunk_size: int | None = None,
    entropy_grad: bool = False,
    *,
    impl: str = "auto",
    inplace_backward: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-prob of ``target`` and entropy of softmax(logits / T), over the full (sharded) vocab.

    Args:
        logits: ``[N, V/tp]`` bf16, fp16, fp32 (or fp64, torch path only) local vocab shard; math in fp32.
        target: ``[N]`` integer global token ids in ``[0, V)`` (padding positions: any valid id, masked later).
        temperature: None (T = 1), a positive scalar, or a positive per-token tensor ``[N]``. Logits are
            divided by it; no gradient flows into it.
        tp_group: tensor-parallel process group whose ranks hold the other shards (in Megatron:
            ``parallel_state.get_tensor_model_parallel_group()``); None means the logits hold the whole vocab.
        chunk_size: tokens per chunk in the torch path (default: about 1 MiB of fp32 per chunk on CPU,
            256 MiB on GPU). The Triton kernels stream vocab tiles and do not use it.
        entropy_grad: when True, backward also propagates the entropy's upstream gradient,
            dH/dz_v = -p_v (z_v - Σ_u p_u z_u) / T. When False the entropy is returned non-differentiable.
        impl: ``"auto"`` (Triton for CUDA logits when it imports, torch otherwise), ``"torch"`` or
            ``"triton"`` (raises if it cannot run; no fallback).
        inplace_backward: write the gradient into the logits' storage instead of a new ``[N, V/tp]`` buffer.
            Only for logits nothing else reads after backward (e.g. the LM head's output); the logits'
            values are destroyed and the graph cannot be backpropagated twice.

    Returns:
        ``(log_prob [N], entropy [N])`` in fp32 (fp64 for fp64 logits), identical on every TP rank.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"vocab_parallel_logprob_entropy: logits must be [tokens, vocab/tp], got {shape}; "
            "flatten the batch and sequence dimensions first (logits.view(-1, logits.shape[-1]))"
        )
    if logits.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(
            f"vocab_parallel_logprob_entropy: logits dtype {logits.dtype} not in {_SUPPORTED_DTYPES}"
        )
    n_rows, n_cols = logits.shape
    if n_cols == 0:
        raise ValueError("vocab_parallel_logprob_entropy: logits have an empty vocab dimension")
    if not isinstance(target, torch.Tensor) or target.shape != (n_rows,) or target.is_floating_point():
        desc = (
            f"{tuple(target.shape)} {target.dtype}"
            if isinstance(target, torch.Tensor)
            else type(target).__name__
        )
        raise ValueError(f"vocab_parallel_logprob_entropy: target must be integer [{n_rows}], got {desc}")
    if target.device != logits.device:
        raise ValueError(
            f"vocab_parallel_logprob_entropy: target on {target.device}, logits on {logits.device}; move them together"
        )
    if chunk_size is not None and (not isinstance(chunk_size, numbers.Integral) or chunk_size < 1):
        raise ValueError(
            f"vocab_parallel_logprob_entropy: chunk_size must be a positive int, got {chunk_size!r}"
        )

    tp_size, tp_rank = 1, 0
    if tp_group is not None:
        if not dist.is_initialized():
            raise RuntimeError(
                "vocab_parallel_logprob_entropy: tp_group given but torch.distributed is not initialized"
            )
        tp_size, tp_rank = dist.get_world_size(tp_group), dist.get_rank(tp_group)
        if tp_size == 1:
            tp_group = None  # nothing to reduce
    vocab = n_cols * tp_size
    cdt = torch_impl.compute_dtype(logits.dtype)
    inv_temp = _inverse_temperature(temperature, n_rows, cdt, logits.device)
    _check_values(target, vocab, inv_temp)

    name = resolve_impl(impl, logits)
    target_local = target.long() - tp_rank * n_cols
    target_local = torch.where(
        (target_local >= 0) & (target_local < n_cols), target_local, torch.full_like(target_local, -1)
    )
    chunk_rows = int(chunk_size) if chunk_size is not None else torch_impl.default_chunk_rows(logits)
    return _LogProbEntropy.apply(
        logits,
        target_local,
        inv_temp,
        _backend(name),
        tp_group,
        chunk_rows,
        bool(entropy_grad),
        bool(inplace_backward),
    )


def _inverse_temperature(
    temperature: float | torch.Tensor | None, n_rows: int, cdt: torch.dtype, device: torch.device
) -> torch.Tensor | None:
    """1/T as ``[N]`` in the compute dtype, or None for T = 1 (the fast path without a scaling pass)."""
    if temperature is None:
        return None
    if isinstance(temperature, torch.Tensor):
        if temperature.dim() == 0:
            temperature = temperature.item()
        elif temperature.shape != (n_rows,):
            raise ValueError(
                f"vocab_parallel_logprob_entropy: temperature must be a scalar or [{n_rows}] (one per token), "
                f"got {tuple(temperature.shape)}"
            )
        else:
            return 1.0 / temperature.detach().to(device=device, dtype=cdt)
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"vocab_parallel_logprob_entropy: temperature must be finite and > 0, got {t}")
    if t == 1.0:
        return None
    return torch.full((n_rows,), 1.0 / t, dtype=cdt, device=device)


def _check_values(target: torch.Tensor, vocab: int, inv_temp: torch.Tensor | None) -> None:
    """Target ids in [0, V) and temperatures finite and > 0, with one host sync for both checks."""
    if target.numel() == 0:
        return
    flags = [((target < 0) | (target >= vocab)).any()]
    if inv_temp is not None:
        flags.append((~torch.isfinite(inv_temp) | (inv_temp <= 0)).any())
    bad_target, *bad_temp = torch.stack(flags).tolist()
    if bad_target:
        lo, hi = int(target.min()), int(target.max())
        raise ValueError(
            f"vocab_parallel_logprob_entropy: target ids span [{lo}, {hi}] but the vocab (all TP shards) has "
            f"{vocab} entries; map ignored positions (e.g. -100) to a valid id such as 0 and mask them out"
        )
    if bad_temp and bad_temp[0]:
        raise ValueError(
            "vocab_parallel_logprob_entropy: per-token temperature has values <= 0 or non-finite"
        )
