"""Evaluation metrics over k sampled answers per prompt. Pure Python: no engine, no torch.

Definitions (one benchmark of P prompts; prompt i has n_i sampled answers, c_i of them correct, where
"correct" is the scorer's binary ``acc``, never the shaped reward ``score``; see HAPO_SPEC B13):

* **avg@k** = (1/P) * sum_i c_i / n_i: the mean over prompts of the mean accuracy of its samples. With
  n_i = k for every prompt this is the paper's "avg@8" (k=8, T=0.5, top-p 0.7).
* **pass@j** (unbiased estimator, Chen et al. 2021) = (1/P) * sum_i [1 - C(n_i - c_i, j) / C(n_i, j)]:
  the probability that at least one of j answers drawn without replacement from prompt i's n_i answers
  is correct, averaged over prompts. pass@1 equals avg@k; pass@n with n samples is the share of prompts
  with at least one correct answer. Requires j <= n_i.
* **mean response length**: mean number of generated tokens over all P*k answers.
* **truncation rate**: share of answers whose generation stopped at the token limit
  (``finish_reason == "length"``).
* **timeouts / errors**: answers whose scoring ran out of time / failed; they count as wrong (acc False)
  and are reported apart so that a slow verifier never hides as a low accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one prompt with ``n`` samples of which ``c`` are correct: 1 - C(n-c,k)/C(n,k)."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n samples per prompt (n={n})")
    if n - c < k:  # every draw of k answers contains a correct one
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@dataclass(frozen=True)
class SampleOutcome:
    """What the metrics need of one scored answer."""

    acc: bool
    length: int  # generated tokens
    finish_reason: str  # "stop" | "length" | "abort"
    timed_out: bool = False
    error: bool = False


@dataclass(frozen=True)
class BenchmarkMetrics:
    """The metrics of one benchmark (definitions in the module docstring). Rates are fractions in [0, 1].

    k: samples per prompt; pass_at: {j: pass@j} for the requested j (always 1 and k).
    """

    num_prompts: int
    k: int
    avg_at_k: float
    pass_at: dict[int, float]
    mean_response_length: float
    truncation_rate: float
    num_samples: int
    num_truncated: int
    num_timeouts: int
    num_errors: int

    def to_dict(self) -> dict:
        out = asdict(self)
        out["pass_at"] = {str(j): v for j, v in self.pass_at.items()}  # JSON keys are strings
        return out


def benchmark_metrics(
    groups: Sequence[Sequence[SampleOutcome]], pass_ks: Sequence[int] = ()
) -> BenchmarkMetrics:
    """Metrics of one benchmark from its answers grouped by prompt (``groups[i]`` = prompt i's answers).

    Every prompt must have the same number k >= 1 of answers. ``pass_ks`` adds pass@j for j <= k to the
    always reported pass@1 and pass@k.
    """
    if not groups:
        raise ValueError("no prompts to compute metrics over")
    k = len(groups[0])
    if k < 1 or any(len(g) != k for g in groups):
        sizes = sorted({len(g) for g in groups})
        raise ValueError(f"every prompt needs the same number (>= 1) of samples, got group sizes {sizes}")
    ks = sorted({1, k, *pass_ks})
    correct = [sum(s.acc for s in g) for g in groups]
    samples = [s for g in groups for s in g]
    num_truncated = sum(s.finish_reason == "length" for s in samples)
    return BenchmarkMetrics(
        num_prompts=len(groups),
        k=k,
        avg_at_k=sum(c / k for c in correct) / len(groups),
        pass_at={j: sum(pass_at_k(k, c, j) for c in correct) / len(groups) for j in ks},
        mean_response_length=sum(s.length for s in samples) / len(samples),
        truncation_rate=num_truncated / len(samples),
        num_samples=len(samples),
        num_truncated=num_truncated,
        num_timeouts=sum(s.timed_out for s in samples),
        num_errors=sum(s.error for s in samples),
    )
