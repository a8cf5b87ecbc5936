"""Does the rollout engine sample from the policy the trainer holds? Compare their log-probs.

After a weight sync, the engine's behaviour log-probs of the tokens it generated must equal the
Megatron policy's log-probs of the same tokens at the same per-token temperatures, up to numerical
noise (kernel order, bf16). A stale or corrupted sync shows up as an O(0.1-1) mismatch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from megatron_hapo.rollout.types import RolloutSample


@dataclass(frozen=True)
class MismatchReport:
    """Engine vs trainer log-probs over ``tokens`` response tokens.

    ``kl`` is the k3 estimate of KL(engine || trainer) from the engine's own samples:
    mean(exp(d) - 1 - d) with d = logp_trainer - logp_engine (>= 0, unbiased, low variance).
    """

    tokens: int
    max_abs: float
    mean_abs: float
    kl: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.tokens > 0 and self.max_abs <= self.tolerance

    def __str__(self) -> str:
        verdict = "OK" if self.ok else "MISMATCH"
        return (
            f"log-prob check: {verdict} over {self.tokens} tokens: max |dlogp| {self.max_abs:.3g}, "
            f"mean |dlogp| {self.mean_abs:.3g}, KL(engine||trainer) {self.kl:.3g} (tolerance {self.tolerance:g})"
        )


def compare_logprobs(
    samples: list[RolloutSample], trainer_logprobs: list[torch.Tensor], tolerance: float
) -> MismatchReport:
    if len(samples) != len(trainer_logprobs):
        raise ValueError(f"{len(samples)} samples but {len(trainer_logprobs)} trainer log-prob rows")
    diffs = []
    for s, lp in zip(samples, trainer_logprobs):
        if len(s.logprobs) != lp.numel():
            raise ValueError(
                f"sample {s.prompt_index}/{s.sample_index}: {len(s.logprobs)} engine vs {lp.numel()} trainer"
            )
        diffs.append(lp.double() - torch.tensor(s.logprobs, dtype=torch.float64))
    d = torch.cat(diffs) if diffs else torch.zeros(0, dtype=torch.float64)
    if d.numel() == 0:
        return MismatchReport(0, math.nan, math.nan, math.nan, tolerance)
    return MismatchReport(
        tokens=d.numel(),
        max_abs=d.abs().max().item(),
        mean_abs=d.abs().mean().item(),
        kl=(torch.expm1(d) - d).mean().item(),
        tolerance=tolerance,
    )


def sample_temperatures(sample: RolloutSample, base_temperature: float) -> list[float]:
    """The temperature of each token's log-prob: the HAPO sampler's per-token values, else the base; greedy
    (base 0) has SGLang's log-probs of softmax(z), at T = 1."""
    if sample.temperatures is not None:
        return sample.temperatures
    return [base_temperature if base_temperature > 0 else 1.0] * len(sample.response_ids)
