"""Entropy-adaptive sampling temperature (HAPO_SPEC §3): the ONE schedule shared by the SGLang sampler
plugin (``sglang_ext/``) and the trainer.

For each row j of post-processed logits z_j [vocab] (after masks, biases and penalties, before any
temperature):

    H_j = −Σ_v p_v log p_v,  p = softmax(z_j)              full vocabulary, at T = 1, fp32
    h_j = (log(max(H_j, 1e-6)) − m) / (σ + 1e-6)
    ĥ_j = clamp(h_j·s₊ if h_j > 0 else h_j·s₋, −1, 1)
    T_j = T_base · (1 + τ · ĥ_j)

so T ∈ [T_base(1−τ), T_base(1+τ)] with signed stats and [T_base, T_base(1+τ)] with released stats
(s₋ < 0 makes ĥ ≥ 0). Without stats (step 1, validation) T_j = T_base. The epsilons are the
released sampler's (1e-6 and σ + 1e-6, spec B5); the trainer's normalisation uses 1e-8 and σ. Pass
``entropy_eps=1e-8, sigma_eps=0.0`` to make the sampler's ĥ equal the trainer's.
"""

from __future__ import annotations

import functools
import os

import torch

from megatron_hapo.algorithms.entropy import (
    SAMPLER_ENTROPY_EPS,
    SAMPLER_SIGMA_EPS,
    StatsLike,
    hhat_from_stats,
)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy [N] of softmax(logits) over the last dimension, in fp32 whatever the input dtype.

    From one max and one exponential per entry, with s = z − z_max, e = exp(s), S = Σ_v e_v:

        H = log S − (Σ_v e_v s_v) / S

    i.e. the row's max, sum-exp and Σ p·z (no log-softmax, no probabilities tensor). Entries equal to −inf
    (masked tokens) contribute 0 (e_v = 0, and e·s is taken as 0 there, not 0·(−inf) = NaN). A row that is
    −inf everywhere has no outcome left and gets H = 0. Rounding can make H −1e-7: it is clamped at 0. NaN
    logits are not screened (that would cost a device sync per decode step).

    Written out of pure elementwise ops and row reductions, with no in-place write, so that
    ``torch.compile`` fuses it into one kernel (what the SGLang sampler runs:
    :func:`fused_token_entropy`); run eagerly it costs about six passes over [N, V].
    """
    if logits.dim() < 1:
        raise ValueError("token_entropy expects logits [..., vocab]")
    z = logits.float()
    z_max = z.amax(dim=-1, keepdim=True)
    shifted = z - torch.where(torch.isfinite(z_max), z_max, torch.zeros_like(z_max))  # <= 0 on a finite row
    exp = torch.exp(shifted)
    total = exp.sum(dim=-1)  # >= 1 on a finite row (its max contributes e^0), 0 on an all −inf row
    weighted = torch.where(exp > 0, exp * shifted, torch.zeros_like(exp)).sum(dim=-1)  # Σ e·s, masked -> 0
    h = total.log() - weighted / total
    return torch.where(total > 0, h.clamp_min(0.0), torch.zeros_like(h))


def fused_token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """:func:`token_entropy` fused by ``torch.compile`` into one kernel (per row: a max loop, then one loop
    for both sums, the row in cache; inductor's C++ on CPU, Triton on GPU): what the SGLang sampler runs at
    every decode step.

    Eagerly the entropy is ~6 passes over [B, V]; SGLang's own top-k/top-p pipeline is only ~4, so the
    eager entropy alone cost 1.5-2x of it. Same function, same semantics: the values may differ from the
    eager run in the last float bits (reduction order). One compilation (``dynamic=True``) serves every
    batch size and vocabulary; the first call pays it (~7 s on CPU; inductor's disk cache serves later
    processes). Under TORCHDYNAMO_DISABLE it is ``token_entropy`` itself (:func:`entropy_kernel`)."""
    return _fused(token_entropy)(logits)


def sampler_temperatures(
    logits: torch.Tensor,
    base: torch.Tensor,
    stats: tuple[torch.Tensor, ...],
    tau: torch.Tensor,
    adaptive: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step of the HAPO sampler: (T_eff [B], H [B]) for logits [B, V], with per-row base
    temperatures, statistics (four [B] tensors), τ and adaptive mask [B]:

        H = token_entropy(logits);  T_eff = where(adaptive, temperature_from_entropy(H, base, stats, τ), base)
    """
    entropy = token_entropy(logits)
    scheduled = temperature_from_entropy(entropy, base, stats, tau)
    return torch.where(adaptive, scheduled.to(base.dtype), base), entropy


def fused_sampler_temperatures(logits, base, stats, tau, adaptive) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sampler_temperatures` compiled as one graph, as :func:`fused_token_entropy` is (the schedule's
    dozen small ops on [B] ride along instead of each costing a launch)."""
    return _fused(sampler_temperatures)(logits, base, stats, tau, adaptive)


@functools.cache
def _fused(fn):
    # torch.compile imports dynamo (seconds): only on the first call, and never when dynamo is disabled
    return fn if entropy_kernel().startswith("eager") else torch.compile(fn, dynamic=True)


def entropy_kernel() -> str:
    """How the ``fused_*`` functions run in this process (the sampler logs it at start-up)."""
    if os.environ.get("TORCHDYNAMO_DISABLE", "").strip() not in ("", "0"):
        return "eager (TORCHDYNAMO_DISABLE is set: about 1.5-2x the fused cost with top-k/top-p)"
    return "torch.compile"


def temperature_from_entropy(
    entropy: torch.Tensor,
    base_temperature: float | torch.Tensor,
    stats: StatsLike | None,
    tau: float | torch.Tensor = 0.05,
    *,
    entropy_eps: float = SAMPLER_ENTROPY_EPS,
    sigma_eps: float = SAMPLER_SIGMA_EPS,
) -> torch.Tensor:
    """T [N] (fp32) = T_base · (1 + τ · ĥ(H)); T_base and τ are scalars or per-row tensors [N].

    ``stats=None`` returns T_base broadcast to [N]. ĥ comes from :func:`hhat_from_stats`; ``stats``
    is an :class:`EntropyStats` or a 4-tuple of per-row tensors [N] (one request's stats per row).
    τ must lie in [0, 1) so that T > 0; it is checked where it enters the system, by
    ``megatron_hapo.rollout.types.AdaptiveTemperature`` (config, client and sampler plugin), not per call.
    """
    if stats is None:
        return _base_like(base_temperature, entropy.shape, entropy.device)
    # Python floats stay Python scalars (no host->device copy per decode step); tensors broadcast per row
    h_hat = hhat_from_stats(entropy.float(), stats, entropy_eps=entropy_eps, sigma_eps=sigma_eps)
    return (base_temperature * (1.0 + tau * h_hat)).to(torch.float32)


def _base_like(
    base_temperature: float | torch.Tensor, shape: torch.Size, device: torch.device
) -> torch.Tensor:
    if isinstance(base_temperature, torch.Tensor):
        return base_temperature.to(device=device, dtype=torch.float32).expand(shape).clone()
    return torch.full(shape, float(base_temperature), dtype=torch.float32, device=device)


def adaptive_temperature(
    logits: torch.Tensor,
    base_temperature: float | torch.Tensor,
    stats: StatsLike | None,
    tau: float | torch.Tensor = 0.05,
    *,
    entropy_eps: float = SAMPLER_ENTROPY_EPS,
    sigma_eps: float = SAMPLER_SIGMA_EPS,
) -> torch.Tensor:
    """T [N] for logits [N, V]: ``temperature_from_entropy(token_entropy(logits), ...)``.

    Skips the entropy pass when ``stats`` is None (T = T_base).
    """
    if stats is None:
        return _base_like(base_temperature, logits.shape[:-1], logits.device)
    return temperature_from_entropy(
        token_entropy(logits), base_temperature, stats, tau, entropy_eps=entropy_eps, sigma_eps=sigma_eps
    )
