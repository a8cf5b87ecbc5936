"""How a policy loss's per-micro-batch metrics combine into one value per RL step. Each loss declares a
:class:`MetricReductions` when it registers (``register_policy_loss(name, metrics=...)``); the trainer
gathers every DP rank's micro-batch metrics per update (optimizer step) and calls :func:`reduce_metrics`.

With u = 1..U the step's updates, c ∈ C_u the micro-batches of update u (all DP ranks) and n_c the
micro-batch's weight (its valid tokens, ``weight`` = ``"n_tokens"``):

    SUM          Σ_u Σ_c x_c                      counts (tokens, clipped tokens)
    UPDATE_SUM   (1/U) Σ_u Σ_c x_c                a loss whose micro-batch values are shares of the update's
                                                   global normaliser (they sum to the update's loss)
    TOKEN_MEAN   (1/U) Σ_u Σ_c n_c x_c / Σ_c n_c  means and fractions over tokens
    MIN / MAX    min / max over every c of every u

A micro-batch with ``n_c = 0`` (all padding) reports nothing. Pure Python: no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

SUM = "sum"
UPDATE_SUM = "update_sum"
TOKEN_MEAN = "token_mean"
MIN = "min"
MAX = "max"
REDUCTIONS = (SUM, UPDATE_SUM, TOKEN_MEAN, MIN, MAX)


@dataclass(frozen=True)
class MetricReductions:
    """``rules``: metric name, or ``"prefix/*"`` for every metric under a prefix, -> one of :data:`REDUCTIONS`
    (an exact name wins over a prefix, a longer prefix over a shorter). ``weight``: the metric holding a
    micro-batch's token count (TOKEN_MEAN's n_c); it must be declared too."""

    rules: Mapping[str, str]
    weight: str = "n_tokens"
    _exact: Mapping[str, str] = field(init=False, repr=False, compare=False)
    _prefixes: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        bad = {k: v for k, v in self.rules.items() if v not in REDUCTIONS}
        if bad:
            raise ValueError(f"MetricReductions: unknown reduction(s) {bad}; use one of {REDUCTIONS}")
        if self.weight not in self.rules:
            raise ValueError(
                f"MetricReductions: the weight metric {self.weight!r} has no rule; declare it (usually SUM)"
            )
        exact = {k: v for k, v in self.rules.items() if not k.endswith("/*")}
        prefixes = sorted(
            ((k[:-1], v) for k, v in self.rules.items() if k.endswith("/*")), key=lambda p: -len(p[0])
        )
        object.__setattr__(self, "rules", MappingProxyType(dict(self.rules)))
        object.__setattr__(self, "_exact", MappingProxyType(exact))
        object.__setattr__(self, "_prefixes", tuple(prefixes))

    def of(self, metric: str) -> str:
        """The reduction of ``metric``; raises ``KeyError`` naming it when no rule covers it."""
        if metric in self._exact:
            return self._exact[metric]
        for prefix, reduction in self._prefixes:
            if metric.startswith(prefix):
                return reduction
        raise KeyError(
            f"metric {metric!r} has no declared reduction (declared: {sorted(self.rules)}); add it to the "
            "MetricReductions its policy loss registers with (algorithms/metric_reduction.py)"
        )


def reduce_metrics(
    updates: Sequence[Sequence[Mapping[str, float]]], reductions: MetricReductions
) -> dict[str, float]:
    """One value per metric from ``updates[u]`` = the micro-batch metrics of update u over all DP ranks
    (equations in the module docstring). A metric missing from some micro-batches counts as 0 there (SUM,
    UPDATE_SUM, TOKEN_MEAN) or is skipped (MIN, MAX)."""
    out: dict[str, float] = {}
    num_updates = len(updates)
    w = reductions.weight
    for update in updates:
        micro = [c for c in update if float(c.get(w, 1.0)) > 0]
        if not micro:
            continue
        tokens = sum(c.get(w, 0.0) for c in micro) or 1.0
        for k in set().union(*micro):
            how = reductions.of(k)
            if how == SUM:
                out[k] = out.get(k, 0.0) + sum(c.get(k, 0.0) for c in micro)
            elif how == UPDATE_SUM:
                out[k] = out.get(k, 0.0) + sum(c.get(k, 0.0) for c in micro) / num_updates
            elif how == MIN:
                out[k] = min(out.get(k, float("inf")), min(c[k] for c in micro if k in c))
            elif how == MAX:
                out[k] = max(out.get(k, float("-inf")), max(c[k] for c in micro if k in c))
            else:  # TOKEN_MEAN
                out[k] = (
                    out.get(k, 0.0) + sum(c.get(k, 0.0) * c.get(w, 0.0) for c in micro) / tokens / num_updates
                )
    return out
