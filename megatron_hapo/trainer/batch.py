"""The step's data: generated responses with their rewards, and padded per-token tensors for Megatron.

Layout of the token tensors ``[batch, seq]`` (what Megatron's GPTModel consumes and what the loss reads):
position j holds input token j and predicts token j+1, so response token k of a sample with prompt
length P sits at target position P - 1 + k. ``mask`` is 1 exactly at those positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

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


@dataclass
class TokenTensors:
    """Padded ``[batch, seq]`` tensors of a list of responses (see the module docstring for the layout)."""

    tokens: torch.Tensor  # int64 input ids
    targets: torch.Tensor  # int64 next-token ids (0 where masked)
    mask: torch.Tensor  # float 1 at response-token targets
    temperature: torch.Tensor  # float per-token temperature (1 where masked)
    rollout_log_prob: torch.Tensor  # float behaviour log-probs from the engine (0 where masked)

    def slice(self, start: int, stop: int) -> TokenTensors:
        return TokenTensors(*(getattr(self, f)[start:stop] for f in self.__dataclass_fields__))

    def to(self, device) -> TokenTensors:
        return TokenTensors(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


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


def pad_responses(
    samples: list[RolloutSample], temperatures: list[list[float]], seq_len: int
) -> TokenTensors:
    """Right-padded token tensors of ``samples`` with sequences of at most ``seq_len`` tokens."""
    b = len(samples)
    tokens = torch.zeros(b, seq_len, dtype=torch.long)
    targets = torch.zeros(b, seq_len, dtype=torch.long)
    mask = torch.zeros(b, seq_len)
    temps = torch.ones(b, seq_len)
    rollout = torch.zeros(b, seq_len)
    for i, (s, t) in enumerate(zip(samples, temperatures, strict=True)):
        seq = torch.tensor(s.prompt_ids + s.response_ids, dtype=torch.long)
        if len(seq) > seq_len:
            raise ValueError(f"sequence of {len(seq)} tokens exceeds the padded length {seq_len}")
        p, r = len(s.prompt_ids), len(s.response_ids)
        tokens[i, : len(seq)] = seq
        targets[i, : len(seq) - 1] = seq[1:]
        span = slice(p - 1, p - 1 + r)
        mask[i, span] = 1.0
        temps[i, span] = torch.tensor(t, dtype=torch.float32)
        rollout[i, span] = torch.tensor(s.logprobs, dtype=torch.float32)
    return TokenTensors(tokens, targets, mask, temps, rollout)


def place_per_token(values: list[torch.Tensor], samples: list[RolloutSample], seq_len: int) -> torch.Tensor:
    """Per-response vectors (length = response length) placed at their target positions in ``[b, seq]``."""
    out = torch.zeros(len(samples), seq_len)
    for i, (v, s) in enumerate(zip(values, samples, strict=True)):
        p = len(s.prompt_ids)
        out[i, p - 1 : p - 1 + len(s.response_ids)] = v
    return out
