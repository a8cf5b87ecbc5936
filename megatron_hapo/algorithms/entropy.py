"""Normalised token entropy ĥ and its four statistics (HAPO_SPEC §2, §13).

Given token entropies H [batch, seq] (or any shape) and a response mask M of the same shape:

    ℓ  = log(max(H, ε))                                  ε = 1e-8 (the trainer's floor)
    m  = Quantile_nearest(ℓ[M], q)                       the pivot (q = 0.8: an 80th percentile)
    σ  = sqrt(max(Σ_M (ℓ − m)² / max(ΣM, 1), ε))         RMS spread around the PIVOT
    h  = (ℓ − m) / σ
    P  = max(ε, max_M h),   Nn = min(−ε, min_M h)        extreme z-scores
    s₊ = 1/P;  s₋ = 1/|Nn| ("signed", the paper's intent)  or  1/Nn < 0 ("released", the code's sign slip)
    ĥ  = h·s₊ if h > 0 else h·s₋                         ∈ [−1, 1] (signed) or [0, 1] (released)

The statistics (m, σ, s₊, s₋) travel as :class:`EntropyStats`. Anyone holding them maps a fresh
entropy to ĥ with :func:`hhat_from_stats` (clamped to [−1, 1]); that one function serves the
sampler's temperature and the loss's frozen step statistics, with the two epsilon conventions as
arguments (spec B5).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_hapo.algorithms._masked import check_same_shape
from megatron_hapo.algorithms.loss_config import ENTROPY_MODES, TRAINER_ENTROPY_EPS  # noqa: F401 (re-exported)
from megatron_hapo.algorithms.quantile import (
    distributed_kth_smallest,
    nearest_rank_index,
    nearest_rank_quantile,
)

SAMPLER_ENTROPY_EPS = 1e-6  # floor of H in the released vLLM sampler
SAMPLER_SIGMA_EPS = 1e-6  # the released vLLM sampler divides by σ + 1e-6; the trainer by σ


@dataclass(frozen=True)
class EntropyStats:
    """The four entropy statistics of a step: pivot m, spread σ, positive scale s₊, negative scale s₋.

    Iterable in that order (``m, sigma, sp, sn = stats``). Values are Python floats because the stats
    cross a JSON/msgpack boundary into the SGLang sampler. s₋ carries the mode: it is negative for
    stats computed in "released" mode, so consumers need no mode argument.
    """

    pivot: float
    sigma: float
    pos_scale: float
    neg_scale: float

    _FIELDS = ("pivot", "sigma", "pos_scale", "neg_scale")

    def __post_init__(self) -> None:
        for name in self._FIELDS:
            value = getattr(self, name)
            if isinstance(value, torch.Tensor):
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"EntropyStats.{name} must be a float, got {type(value).__name__}")
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"EntropyStats.{name} = {value} is not finite; the statistics are corrupt")
            object.__setattr__(self, name, value)
        if self.sigma <= 0:
            raise ValueError(f"EntropyStats.sigma must be > 0, got {self.sigma}")
        if self.pos_scale < 0:
            raise ValueError(f"EntropyStats.pos_scale must be >= 0, got {self.pos_scale}")

    def __iter__(self) -> Iterator[float]:
        return iter((self.pivot, self.sigma, self.pos_scale, self.neg_scale))

    @property
    def mode(self) -> str:
        """ "released" when s₋ < 0 (the released sign slip), else "signed"."""
        return "released" if self.neg_scale < 0 else "signed"

    def to_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self._FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, float]) -> EntropyStats:
        keys = set(data)
        missing, unknown = set(cls._FIELDS) - keys, keys - set(cls._FIELDS)
        if missing or unknown:
            raise ValueError(
                f"EntropyStats.from_dict needs exactly the keys {list(cls._FIELDS)}; "
                f"missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
        return cls(**{name: data[name] for name in cls._FIELDS})

    @classmethod
    def neutral(cls) -> EntropyStats:
        """Statistics that map every entropy to ĥ = 0 (s₊ = s₋ = 0): what a step without tokens yields."""
        return cls(pivot=0.0, sigma=1.0, pos_scale=0.0, neg_scale=0.0)


def _check_mode(mode: str) -> None:
    if mode not in ENTROPY_MODES:
        raise ValueError(f"entropy mode {mode!r} is unknown; use one of {ENTROPY_MODES}")


def normalize_entropy(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    pivot_quantile: float = 0.8,
    mode: str = "signed",
    group: dist.ProcessGroup | None = None,
    *,
    eps: float = TRAINER_ENTROPY_EPS,
) -> tuple[torch.Tensor, EntropyStats]:
    """ĥ [same shape as entropy] (0 at padding) and the :class:`EntropyStats` of the valid tokens.

    Equations in the module docstring. ``group``: compute the statistics over the valid tokens of
    every rank of that process group (exact pivot, see :mod:`quantile`; σ, P and Nn by all-reduce),
    identical on every rank and equal to the single-process result on the concatenated tokens;
    every rank of the group must call it, also ranks without valid tokens. No valid token at all
    gives ĥ = 0 and :meth:`EntropyStats.neutral`. Non-finite entropies at valid positions raise.
    Runs without autograd: ĥ is a constant of the loss.
    """
    _check_mode(mode)
    check_same_shape("entropy", entropy, mask)
    with torch.no_grad():
        work = torch.promote_types(entropy.dtype, torch.float32)
        valid = mask.bool()
        log_h = torch.log(entropy.detach().to(work).clamp_min(eps))
        vals = log_h[valid]

        # one collective for the count and the non-finite check, so every rank raises together
        head = torch.tensor([vals.numel(), int((~torch.isfinite(vals)).sum())], device=vals.device)
        if group is not None:
            dist.all_reduce(head, group=group)
        n, n_bad = head.tolist()
        if n_bad:
            raise ValueError(
                f"normalize_entropy: {n_bad} valid token entropies are not finite (NaN or inf); "
                "check the entropy computation upstream (logits overflow?)"
            )
        if n == 0:
            return torch.zeros_like(log_h), EntropyStats.neutral()

        if group is None:
            pivot, _ = nearest_rank_quantile(vals, pivot_quantile)
        else:  # the global count n is known already: go straight to the exact distributed selection
            pivot = distributed_kth_smallest(vals, nearest_rank_index(pivot_quantile, n), group)
        dev = vals - pivot
        # float64 accumulation: the distributed and single-process sums then agree to ~1e-16
        local = torch.stack(
            [
                dev.double().square().sum(),
                dev.max().double() if dev.numel() else dev.new_zeros((), dtype=torch.float64),
                -dev.min().double() if dev.numel() else dev.new_zeros((), dtype=torch.float64),
            ]
        )
        sq_sum = local[0:1].clone()
        extremes = local[1:3].clone()  # max(ℓ − m) and −min(ℓ − m): dividing by σ > 0 keeps the order
        if group is not None:
            dist.all_reduce(sq_sum, group=group)
            dist.all_reduce(extremes, op=dist.ReduceOp.MAX, group=group)
        sigma = math.sqrt(max(sq_sum.item() / max(n, 1), eps))
        z = dev / sigma
        max_dev, neg_min_dev = extremes.tolist()
        pos_max = max(_div_like(max_dev, sigma, work), eps)
        neg_min = min(-_div_like(neg_min_dev, sigma, work), -eps)
        pos_scale = 1.0 / pos_max
        neg_scale = 1.0 / abs(neg_min) if mode == "signed" else 1.0 / neg_min

        h_hat = torch.zeros_like(log_h)
        h_hat[valid] = torch.where(z > 0, z * pos_scale, z * neg_scale)
        return h_hat, EntropyStats(pivot, sigma, pos_scale, neg_scale)


def _div_like(x: float, sigma: float, dtype: torch.dtype) -> float:
    """x / σ rounded as the tensor division z = dev / σ is, so P equals max(z) bit for bit."""
    return float(torch.tensor(x, dtype=dtype) / sigma)


StatsLike = EntropyStats | tuple  # (pivot, sigma, pos_scale, neg_scale): floats, or per-row tensors [N]


def hhat_from_stats(
    entropy: torch.Tensor,
    stats: StatsLike,
    *,
    entropy_eps: float = TRAINER_ENTROPY_EPS,
    sigma_eps: float = 0.0,
) -> torch.Tensor:
    """ĥ of each token from frozen statistics (same shape as ``entropy``, fp32 at least):

        h = (log(max(H, entropy_eps)) − m) / (σ + sigma_eps)
        ĥ = clamp(h·s₊ if h > 0 else h·s₋, −1, 1)

    Defaults are the trainer's (1e-8, 0); the released sampler used (1e-6, 1e-6)
    (:data:`SAMPLER_ENTROPY_EPS`, :data:`SAMPLER_SIGMA_EPS`). On the tokens the stats were computed
    from (trainer eps), this reproduces :func:`normalize_entropy`'s ĥ. No autograd.

    ``stats`` may also be a 4-tuple (pivot, sigma, pos_scale, neg_scale) of per-row tensors [N]
    broadcasting against ``entropy``: a batch of requests that carry different statistics (the SGLang
    sampler relies on this).
    """
    pivot, sigma, pos_scale, neg_scale = stats
    with torch.no_grad():
        work = torch.promote_types(entropy.dtype, torch.float32)
        h = (torch.log(entropy.detach().to(work).clamp_min(entropy_eps)) - pivot) / (sigma + sigma_eps)
        return torch.where(h > 0, h * pos_scale, h * neg_scale).clamp(-1.0, 1.0)
