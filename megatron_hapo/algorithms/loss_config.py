"""The policy loss's settings: one torch-free dataclass, used as the ``algorithm.loss`` config section and
by the loss itself (the paper's names for each field are in ``docs/algorithm.md``).

Imports nothing heavy (no torch): the config schema and ``--help-config`` import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

EntropyMode = Literal["signed", "released"]
StatsScope = Literal["step", "micro_batch"]
AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
ENTROPY_MODES: tuple[str, ...] = get_args(EntropyMode)
STATS_SCOPES: tuple[str, ...] = get_args(StatsScope)
AGG_MODES: tuple[str, ...] = get_args(AggMode)
TRAINER_ENTROPY_EPS = 1e-8  # floor of H in the trainer's normalisation (released compute_entropy_h)


def _opt(default: Any, help: str) -> Any:  # noqa: A002 - the schema's field convention (config/schema.py)
    return field(default=default, metadata={"help": help})


@dataclass
class HapoLossConfig:
    """The HAPO policy loss (HAPO_SPEC §2, §5, §6). With ``adaptive_clip=False, adaptive_advantage=False`` and
    clip (0.2, 0.28) it is DAPO's loss; with ``stats_scope="micro_batch", entropy_mode="released"`` the
    released ``compute_policy_loss``. β > 1 flips the sign of A where ĥ < −1/β in signed mode (spec B11:
    allowed, on purpose)."""

    clip_low: float = _opt(0.2, "base lower clip epsilon (ratio >= 1 - clip_low)")
    clip_high: float = _opt(0.2, "base upper clip epsilon (HAPO 0.2; DAPO clip-higher 0.28)")
    dual_clip_c: float | None = _opt(
        10.0, "dual-clip bound c on the ratio for negative advantages; null = off"
    )
    adaptive_clip: bool = _opt(True, "entropy-adaptive asymmetric clip bounds (HAPO §6)")
    clip_alpha: float = _opt(1.0, "alpha: strength of the adaptive clip")
    adaptive_advantage: bool = _opt(True, "differential advantage redistribution (HAPO §5)")
    adv_beta: float = _opt(1.0, "beta: strength of the advantage redistribution")
    pivot_quantile: float = _opt(0.8, "quantile of log-entropy used as the pivot of the normalisation")
    entropy_mode: EntropyMode = _opt(
        "signed", "entropy normalisation sign: signed (paper) or released (the released code's |h|)"
    )
    stats_scope: StatsScope = _opt(
        "step", "entropy statistics: once per step over all ranks, or per micro-batch (released code)"
    )
    agg: AggMode = _opt(
        "token-mean", "loss aggregation (global normalisers across DP ranks and micro-batches)"
    )
    tis_cap: float | None = _opt(None, "truncated importance sampling cap on pi_old/pi_behaviour; null = off")
    entropy_eps: float = _opt(
        TRAINER_ENTROPY_EPS, "floor of the entropy before its log in the normalisation (released: 1e-8)"
    )
    token_sum_norm_len: int | None = _opt(
        None,
        "constant L_norm of agg=seq-mean-token-sum-norm; null = rollout.max_new_tokens (the padded response length)",
    )

    @property
    def uses_entropy(self) -> bool:
        """Whether the loss needs ĥ (and therefore the entropies)."""
        return self.adaptive_clip or self.adaptive_advantage

    def problems(self) -> list[tuple[tuple[str, ...], str]]:
        """Every invalid setting as ``(fields, message)``; the config validation reports them with their keys."""
        out: list[tuple[tuple[str, ...], str]] = []
        if not 0.0 <= self.clip_low < 1.0:
            out.append(
                (
                    ("clip_low",),
                    f"must be in [0, 1) (the lower bound 1 - clip_low stays > 0), got {self.clip_low}",
                )
            )
        if self.clip_high < 0:
            out.append((("clip_high",), f"must be >= 0, got {self.clip_high}"))
        if self.dual_clip_c is not None and not self.dual_clip_c > 1.0:
            out.append(
                (
                    ("dual_clip_c",),
                    f"must be > 1 (it bounds the ratio from above) or null, got {self.dual_clip_c}",
                )
            )
        if self.clip_alpha < 0 or self.adv_beta < 0:
            out.append((("clip_alpha", "adv_beta"), f"must be >= 0, got {self.clip_alpha}/{self.adv_beta}"))
        if self.adaptive_clip and self.clip_low * (1 + self.clip_alpha) >= 1:
            out.append(
                (
                    ("clip_low", "clip_alpha"),
                    f"clip_low x (1 + clip_alpha) = {self.clip_low * (1 + self.clip_alpha):g} >= 1 lets the adaptive "
                    "lower bound 1 - eps'_low reach 0; lower clip_low or clip_alpha",
                )
            )
        if not 0.0 <= self.pivot_quantile <= 1.0:
            out.append((("pivot_quantile",), f"must be in [0, 1], got {self.pivot_quantile}"))
        for name, allowed in (
            ("entropy_mode", ENTROPY_MODES),
            ("stats_scope", STATS_SCOPES),
            ("agg", AGG_MODES),
        ):
            if getattr(self, name) not in allowed:
                out.append(((name,), f"{getattr(self, name)!r} is unknown; use one of {allowed}"))
        if self.tis_cap is not None and not self.tis_cap > 0:
            out.append((("tis_cap",), f"must be > 0 or null, got {self.tis_cap}"))
        if not self.entropy_eps > 0:
            out.append((("entropy_eps",), f"must be > 0, got {self.entropy_eps}"))
        if self.token_sum_norm_len is not None and self.token_sum_norm_len <= 0:
            out.append((("token_sum_norm_len",), f"must be > 0 or null, got {self.token_sum_norm_len}"))
        return out

    def check(self) -> HapoLossConfig:
        """Raise ``ValueError`` naming every invalid setting; return self."""
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(f"{'/'.join(fields)}: {msg}" for fields, msg in problems))
        return self
