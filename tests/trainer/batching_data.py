"""Fixed steps for the trainer tests, built without an engine: prompts x responses of random tokens with
HAPO per-token temperatures and mixed rewards (score +1 where (prompt + sample) % 3 == 0, else -1)."""

from __future__ import annotations

import torch

from megatron_hapo.rollout.types import RolloutSample
from megatron_hapo.trainer.batch import StepBatch

N_PROMPTS, N_SAMPLES, VOCAB = 4, 4, 300
# widely varied lengths (1 to 40 tokens, a few long, most short, like reasoning RL's heavy tail)
RESPONSE_LENGTHS = [40, 3, 5, 2, 7, 1, 31, 4, 2, 12, 3, 6, 1, 24, 5, 3]


def step_batch(
    prompt_lens: list[int],
    response_lens: list[list[int]],
    temperatures: tuple[float, float],
    vocab: int,
    seed: int,
) -> StepBatch:
    """Prompt p has ``prompt_lens[p]`` tokens and ``len(response_lens[p])`` responses of the given lengths;
    per-token temperatures uniform in ``[lo, lo + span)`` for ``temperatures = (lo, span)``."""
    g = torch.Generator().manual_seed(seed)
    lo, span = temperatures
    samples, scores = [], []
    for p, lens in enumerate(response_lens):
        prompt = torch.randint(3, vocab, (prompt_lens[p],), generator=g).tolist()
        for j, n in enumerate(lens):
            samples.append(
                RolloutSample(
                    prompt_index=p, sample_index=j, prompt_ids=prompt,
                    response_ids=torch.randint(3, vocab, (n,), generator=g).tolist(),
                    logprobs=(-torch.rand(n, generator=g) * 4).tolist(), finish_reason="stop",
                    weight_version="fixed", temperatures=(lo + span * torch.rand(n, generator=g)).tolist(),
                )
            )  # fmt: skip
            scores.append(1.0 if (p + j) % 3 == 0 else -1.0)
    groups = [s.prompt_index for s in samples]
    return StepBatch(samples, [None] * len(samples), groups, scores, [s > 0 for s in scores])


def fixed_batch(vocab: int, seed: int = 0) -> StepBatch:
    """4 prompts (6-9 tokens) x 4 responses of 5-8 tokens."""
    lens = [[5 + (p + j) % 4 for j in range(N_SAMPLES)] for p in range(N_PROMPTS)]
    return step_batch([6 + p for p in range(N_PROMPTS)], lens, (0.95, 0.1), vocab, seed)


def varied_batch(seed: int = 0) -> StepBatch:
    """4 prompts (4-13 tokens) x 4 responses of RESPONSE_LENGTHS."""
    lens = [RESPONSE_LENGTHS[p * N_SAMPLES : (p + 1) * N_SAMPLES] for p in range(N_PROMPTS)]
    return step_batch([4 + 3 * p for p in range(N_PROMPTS)], lens, (0.9, 0.2), VOCAB, seed)
