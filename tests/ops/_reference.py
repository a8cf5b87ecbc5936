"""Float64 reference for the log-prob / entropy op: plain log_softmax + gather + entropy on logits / T.

Masked (-inf) logits are handled the way the math says: p = 0 there and the entropy term p·log p is 0
(``where`` keeps autograd from producing 0·(-inf) = NaN in the gradient).
"""

from __future__ import annotations

import torch


def reference_logprob_entropy(
    logits: torch.Tensor, target: torch.Tensor, temperature: float | torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log_prob [N], entropy [N])`` in float64, differentiable w.r.t. ``logits`` (through the cast)."""
    z = logits.double()
    if temperature is not None:
        t = temperature.double()[:, None] if isinstance(temperature, torch.Tensor) else float(temperature)
        z = z / t
    log_p = torch.log_softmax(z, dim=-1)
    p = log_p.exp()
    safe_log_p = torch.where(p == 0, torch.zeros_like(log_p), log_p)
    entropy = -(p * safe_log_p).sum(-1)
    return log_p.gather(-1, target.long()[:, None]).squeeze(-1), entropy


def reference_grad(
    logits: torch.Tensor,
    target: torch.Tensor,
    temperature: float | torch.Tensor | None,
    grad_log_prob: torch.Tensor | None,
    grad_entropy: torch.Tensor | None,
) -> torch.Tensor:
    """d(Σ g_lp·log_prob + g_H·entropy)/d logits in float64."""
    x = logits.detach().double().requires_grad_(True)
    lp, ent = reference_logprob_entropy(x, target, temperature)
    loss = torch.zeros((), dtype=torch.float64)
    if grad_log_prob is not None:
        loss = loss + (lp * grad_log_prob.double()).sum()
    if grad_entropy is not None:
        loss = loss + (ent * grad_entropy.double()).sum()
    (grad,) = torch.autograd.grad(loss, x)
    return grad
