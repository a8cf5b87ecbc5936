"""The step's data: generated responses with their rewards and groups, and the ratio temperatures of their
tokens. The per-token tensors Megatron trains on are built once per step from these (experience.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_hapo.data import PromptSample
from megatron_hapo.rollout import RolloutSample


@dataclass
class StepBatch:
    """The responses of one RL step (every rank holds the whole step; each DP rank trains its slice).

    group_ids: one id per response, equal within a prompt's group; scores: shaped rewards; accs: the
    verifier's binary verdicts (dynamic sampling filters on these).
    """

    samples: list[RolloutSample]
    prompts: list[PromptSample]  # one per response (the prompt it answers)
    group_ids: list[int]
    scores: list[float]
    accs: list[bool]
    extra_metrics: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)

    def select(self, keep: list[bool]) -> StepBatch:
        idx = [i for i, k in enumerate(keep) if k]
        return StepBatch(
            [self.samples[i] for i in idx],
            [self.prompts[i] for i in idx],
            [self.group_ids[i] for i in idx],
            [self.scores[i] for i in idx],
            [self.accs[i] for i in idx],
        )

    def concat(self, other: StepBatch) -> StepBatch:
        return StepBatch(
            self.samples + other.samples,
            self.prompts + other.prompts,
            self.group_ids + other.group_ids,
            self.scores + other.scores,
            self.accs + other.accs,
        )

    def first_groups(self, num_groups: int) -> StepBatch:
        """The responses of the first ``num_groups`` distinct groups (groups are contiguous)."""
        seen: list[int] = []
        keep = []
        for g in self.group_ids:
            if g not in seen:
                seen.append(g)
            keep.append(seen.index(g) < num_groups)
        return self.select(keep)


def response_temperatures(sample: RolloutSample, mode: str, base: float, adaptive: bool) -> list[float]:
    """Per-token temperatures of the ratio: the sampler's T_t (``per_token``) or the base T (``base``).

    With adaptive sampling on and ``per_token``, a response without ``temperatures`` is an error: the
    engine did not run the HAPO sampler, and scoring it at the base T would silently change the algorithm.
    """
    if mode == "base" or not adaptive:
        return [base] * len(sample.response_ids)
    if sample.temperatures is None or len(sample.temperatures) != len(sample.response_ids):
        raise RuntimeError(
            "algorithm.adaptive_temperature.enable=true and ratio_temperature=per_token, but a response "
            f"(prompt {sample.prompt_index}, sample {sample.sample_index}) carries no per-token "
            "hapo_temperature: the rollout engine is not running the HAPO sampler (sglang_ext). Start it "
            "with sampling_backend='hapo' / HAPO_SGLANG_SAMPLER=1, or set algorithm.ratio_temperature=base."
        )
    return list(sample.temperatures)
