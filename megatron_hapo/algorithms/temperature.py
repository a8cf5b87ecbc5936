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

# which kernel fused_token_entropy runs: auto (native on CPU, torch.compile elsewhere), compile or eager
ENTROPY_KERNEL_ENV = "HAPO_ENTROPY_KERNEL"
ENTROPY_KERNEL_CHOICES = ("auto", "compile", "eager")


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy [N] of softmax(logits) over the last dimension, in fp32 whatever the input dtype.

    From one max and one exponential per entry, with s = z − z_max, e = exp(s), S = Σ_v e_v:

        H = log S − (Σ_v e_v s_v) / S

    i.e. the row's max, sum-exp and Σ p·z (no log-softmax, no probabilities tensor). Entries equal to −inf
    (masked tokens) contribute 0 (e_v = 0, and e·s is taken as 0 there, not 0·(−inf) = NaN). A row that is
    −inf everywhere has no outcome left and gets H = 0. Rounding can make H −1e-7: it is clamped at 0. NaN
    logits are not screened (that would cost a device sync per decode step).

    Written out of pure elementwise ops and row reductions, with no in-place write, so that
    ``torch.compile`` fuses it into one kernel (what a GPU sampler runs; a CPU one runs the native kernel,
    see :func:`fused_token_entropy`); run eagerly it costs about six passes over [N, V].
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
    """:func:`token_entropy` in the fewest passes the device allows: what the SGLang sampler runs at every
    decode step (:func:`entropy_kernel` says which kernel, per device):

    * CPU: the native row kernel ``megatron_hapo/ops/cpu_entropy.c`` (a max loop, then one vectorised loop
      for both sums; built with the host's C compiler at first use, a fraction of a second);
    * GPU: ``torch.compile`` of :func:`token_entropy`, a Triton reduction that reads each row once. One
      compilation (``dynamic=True``) serves every batch size and vocabulary; the first call pays it.

    Eagerly the entropy is ~6 passes over [B, V], 1.5-2x SGLang's whole top-k/top-p pipeline. Same
    semantics on every kernel; the values may differ from the eager function in the last float bits
    (reduction order). ``HAPO_ENTROPY_KERNEL=eager`` runs the definition itself (the test suite does, for its
    bit-exact comparisons); ``=compile`` forces ``torch.compile`` on CPU too."""
    kind = _kernel(logits.device.type)[0]
    if kind == "native":
        return _native_entropy(logits)
    return _fused(token_entropy)(logits) if kind == "compile" else token_entropy(logits)


def schedule_temperatures(
    entropy: torch.Tensor,
    base: torch.Tensor,
    stats: tuple[torch.Tensor, ...],
    tau: torch.Tensor,
    adaptive: torch.Tensor,
) -> torch.Tensor:
    """T_eff [B] = where(adaptive, temperature_from_entropy(H, base, stats, τ), base), for entropies H [B],
    per-row base temperatures, statistics (four [B] tensors), τ and adaptive mask [B]."""
    scheduled = temperature_from_entropy(entropy, base, stats, tau)
    return torch.where(adaptive, scheduled.to(base.dtype), base)


def sampler_temperatures(
    logits: torch.Tensor,
    base: torch.Tensor,
    stats: tuple[torch.Tensor, ...],
    tau: torch.Tensor,
    adaptive: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step of the HAPO sampler: (T_eff [B], H [B]) for logits [B, V]:

    H = token_entropy(logits);  T_eff = schedule_temperatures(H, base, stats, τ, adaptive)
    """
    entropy = token_entropy(logits)
    return schedule_temperatures(entropy, base, stats, tau, adaptive), entropy


def fused_sampler_temperatures(logits, base, stats, tau, adaptive) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sampler_temperatures` on :func:`fused_token_entropy`'s kernel. Under ``torch.compile`` the
    schedule rides in the same graph (its dozen small ops on [B] do not each cost a launch); after the
    native CPU kernel it runs eagerly (a few microseconds on CPU)."""
    if _kernel(logits.device.type)[0] == "compile":
        return _fused(sampler_temperatures)(logits, base, stats, tau, adaptive)
    entropy = fused_token_entropy(logits)  # the native kernel, or the definition itself
    return schedule_temperatures(entropy, base, stats, tau, adaptive), entropy


def entropy_kernel(device: str | torch.device = "cpu") -> str:
    """Which kernel :func:`fused_token_entropy` runs for tensors on ``device`` in this process, with the
    reason when it is the eager definition (the sampler logs this line at start-up)."""
    kind, why = _kernel(str(device).split(":")[0])
    if kind == "native":
        return "native CPU kernel (megatron_hapo/ops/cpu_entropy.c, -O3 -march=native)"
    return (
        "torch.compile"
        if kind == "compile"
        else f"eager ({why}: about 1.5-2x the fused cost with top-k/top-p)"
    )


def _kernel(device_type: str) -> tuple[str, str]:
    """(native | compile | eager, why eager) for tensors on ``device_type``."""
    requested = os.environ.get(ENTROPY_KERNEL_ENV, "").strip() or "auto"
    if requested not in ENTROPY_KERNEL_CHOICES:
        raise ValueError(
            f"{ENTROPY_KERNEL_ENV}={requested!r}: expected one of {ENTROPY_KERNEL_CHOICES} (unset means auto)"
        )
    if requested == "eager":
        return "eager", f"{ENTROPY_KERNEL_ENV}=eager"
    if requested == "auto" and device_type == "cpu":
        from megatron_hapo.ops.cpu_entropy import native_entropy_status

        reason = native_entropy_status()
        return ("native", "") if reason is None else ("eager", f"native CPU kernel unavailable: {reason}")
    if _dynamo_disabled():
        return "eager", "TORCHDYNAMO_DISABLE is set"
    return "compile", ""


def _native_entropy(logits: torch.Tensor) -> torch.Tensor:
    from megatron_hapo.ops.cpu_entropy import cpu_row_entropy

    return cpu_row_entropy(logits)


def _dynamo_disabled() -> bool:
    return os.environ.get("TORCHDYNAMO_DISABLE", "").strip() not in ("", "0")


@functools.cache
def _fused(fn):
    # torch.compile imports dynamo (seconds): only on the first call, and never when dynamo is disabled
    return fn if _dynamo_disabled() else torch.compile(fn, dynamic=True)


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
