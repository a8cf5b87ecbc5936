"""The step's data: generated responses with their rewards and groups, and the ratio temperatures of their
tokens. The per-token tensors Megatron trains on are built once per step from these (experience.py)."""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

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

    def compact(self) -> StepBatch:
        """This batch with every response's per-token lists as ``array.array`` (token ids int32, values
        float64: exact), as it travels from the lead to every rank (``RolloutStage.collect``).

        An array pickles as its raw bytes and unpickles without a Python object per token. Measured on 2.5 M
        tokens (``benchmarks/bench_batch_broadcast.py``): a rank unpickled the lists in 0.42 s into 121 bytes
        of Python objects per token, the arrays in 0.03 s into 27. At recipe scale (512 x 16 responses of ~4k
        tokens) the lists cost ~5 s and ~4 GB on every rank at every step. Readers take either form:
        :func:`token_tensor`."""
        return replace(
            self, samples=[_compact(s) for s in self.samples], extra_metrics=dict(self.extra_metrics)
        )

    def without_routed_experts(self) -> StepBatch:
        """This batch without its samples' routed experts (routing replay): what the lead broadcasts to every
        rank; each rank receives its own responses' experts apart (``trainer/loop.py::with_routed_experts``)."""
        if all(s.routed_experts is None for s in self.samples):
            return self
        return replace(self, samples=[replace(s, routed_experts=None) for s in self.samples])

    def first_groups(self, num_groups: int) -> StepBatch:
        """The responses of the first ``num_groups`` distinct groups (groups are contiguous)."""
        seen: list[int] = []
        keep = []
        for g in self.group_ids:
            if g not in seen:
                seen.append(g)
            keep.append(seen.index(g) < num_groups)
        return self.select(keep)


def response_temperatures(sample: RolloutSample, mode: str, base: float, adaptive: bool) -> Sequence[float]:
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
    return sample.temperatures  # a list, or the array of StepBatch.compact


def _compact(sample: RolloutSample) -> RolloutSample:
    def values(seq):
        return None if seq is None else array("d", seq)

    return replace(
        sample, prompt_ids=array("i", sample.prompt_ids), response_ids=array("i", sample.response_ids),
        logprobs=array("d", sample.logprobs), entropies=values(sample.entropies),
        temperatures=values(sample.temperatures),
    )  # fmt: skip


_ARRAY_DTYPES = {"i": torch.int32, "d": torch.float64}


def token_tensor(values, dtype: torch.dtype) -> torch.Tensor:
    """A per-token sequence of a response (a list, or the ``array.array`` of :meth:`StepBatch.compact`) as a
    1-D ``dtype`` tensor: an array without a Python object per element (``torch.tensor`` would read an
    array element by element, ~7 us each)."""
    if isinstance(values, array):
        if not values:
            return torch.zeros(0, dtype=dtype)
        return torch.frombuffer(values, dtype=_ARRAY_DTYPES[values.typecode]).to(dtype, copy=True)
    return torch.tensor(values, dtype=dtype)
