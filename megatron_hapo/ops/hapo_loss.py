"""One call from vocab-parallel logits to the HAPO policy loss (what the trainer's loss function uses).

    (log π_θ, H) = vocab_parallel_logprob_entropy(logits, target, T)     [tokens] each, no [N, V] fp32 copy
    loss, metrics = hapo_policy_loss(log π_θ, log π_old, A, H, mask, config, ...)

The per-token HAPO terms (ratio, entropy-dependent clip bounds, advantage redistribution, dual clip,
TIS, aggregation) are ``megatron_hapo.algorithms``'s; this module only feeds them, so the loss math has
one home. The gradient reaches the logits in one backward: autograd carries d loss / d log π_θ [tokens]
into the op's chunked backward. HAPO uses the entropy without gradient (ĥ, ε′ and A′ are constants),
so the entropy term of the op's backward is off.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from megatron_hapo.algorithms import EntropyStats, HapoLossConfig, hapo_policy_loss
from megatron_hapo.ops.logprob_entropy import vocab_parallel_logprob_entropy


def fused_hapo_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    config: HapoLossConfig,
    temperature: float | torch.Tensor | None = None,
    tp_group: dist.ProcessGroup | None = None,
    stats: EntropyStats | None = None,
    rollout_log_prob: torch.Tensor | None = None,
    global_normalizer: float | torch.Tensor | None = None,
    *,
    segments: torch.Tensor | None = None,
    chunk_size: int | None = None,
    impl: str = "auto",
    inplace_backward: bool = False,
    policy_loss: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]] = hapo_policy_loss,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """HAPO loss of one micro-batch straight from this rank's logits shard.

    Args:
        logits: ``[*mask.shape, V/tp]`` or ``[mask.numel(), V/tp]``, rows in the order of ``mask.reshape(-1)``.
            Must flatten without a copy (a transposed ``[s, b, V]`` view does not: pass mask and the
            per-token tensors in ``[s, b]`` order instead).
        target: global token ids, mask's shape (or flattened).
        old_log_prob, advantages, mask, rollout_log_prob: per-token, mask's shape (``[batch, seq]`` or
            ``[tokens]``), as for :func:`megatron_hapo.algorithms.hapo_policy_loss`.
        config, stats, global_normalizer: as for ``hapo_policy_loss``.
        temperature: None, a scalar, or per-token (mask's shape): the log-probs and entropies of the
            current policy are computed at logits / T.
        segments: for packed rows (several sequences back to back in a row): ``[n_seq, L]`` flat positions
            (into ``mask.reshape(-1)``) of each sequence's tokens, -1 past its end. The per-token terms are
            then laid out ``[n_seq, L]`` before the loss, so seq-mean aggregations see sequences, not rows.
        tp_group, chunk_size, impl, inplace_backward: as for :func:`vocab_parallel_logprob_entropy`.
        policy_loss: the loss on the per-token log-probs and entropies, with ``hapo_policy_loss``'s
            signature (a registered policy loss: ``algorithms.get_policy_loss(name)``).

    Returns:
        ``(loss, metrics)`` from ``policy_loss``; for ``hapo_policy_loss`` ``metrics`` also holds
        ``entropy/mean`` of this call's valid tokens.
    """
    config.check()
    n_tokens = mask.numel()
    if logits.dim() < 2 or logits.shape[:-1] not in (mask.shape, torch.Size([n_tokens])):
        raise ValueError(
            f"fused_hapo_loss: logits have shape {tuple(logits.shape)}; expected [*mask.shape, vocab/tp] = "
            f"[{', '.join(map(str, mask.shape))}, vocab/tp] or [{n_tokens}, vocab/tp]"
        )
    try:
        flat_logits = logits.view(n_tokens, logits.shape[-1])
    except RuntimeError as err:
        raise ValueError(
            f"fused_hapo_loss: logits of shape {tuple(logits.shape)} and strides {logits.stride()} cannot be "
            "flattened to [tokens, vocab/tp] without copying them; pass them in their memory order (for "
            "Megatron's [s, b, V/tp] output: mask and per-token tensors as [s, b])"
        ) from err
    if target.numel() != n_tokens:
        raise ValueError(
            f"fused_hapo_loss: target has {target.numel()} ids for {n_tokens} tokens (mask {tuple(mask.shape)})"
        )
    if isinstance(temperature, torch.Tensor) and temperature.dim() > 0:
        if temperature.numel() != n_tokens:
            raise ValueError(
                f"fused_hapo_loss: per-token temperature has shape {tuple(temperature.shape)}; "
                f"expected the mask's shape {tuple(mask.shape)}"
            )
        temperature = temperature.reshape(n_tokens)

    log_prob, entropy = vocab_parallel_logprob_entropy(
        flat_logits,
        target.reshape(n_tokens),
        temperature=temperature,
        tp_group=tp_group,
        chunk_size=chunk_size,
        entropy_grad=False,
        impl=impl,
        inplace_backward=inplace_backward,
    )
    log_prob, entropy = log_prob.view(mask.shape), entropy.view(mask.shape)
    if segments is not None:
        valid = segments >= 0
        idx = segments.clamp_min(0)

        def seq(t):
            return (
                None
                if t is None
                else torch.where(valid, t.reshape(-1)[idx], torch.zeros((), dtype=t.dtype, device=t.device))
            )

        log_prob, entropy, old_log_prob, advantages = map(seq, (log_prob, entropy, old_log_prob, advantages))
        rollout_log_prob = seq(rollout_log_prob)
        mask = seq(mask)
    return policy_loss(
        log_prob,
        old_log_prob,
        advantages,
        entropy,
        mask,
        config,
        stats=stats,
        rollout_log_prob=rollout_log_prob,
        global_normalizer=global_normalizer,
    )
