"""A fixed step for the batching tests: 4 prompts x 4 responses of widely varied lengths (1 to 40 tokens,
a few long, most short, like reasoning RL's heavy tail), HAPO per-token temperatures and mixed rewards."""

from __future__ import annotations

import torch

from megatron_hapo.rollout.types import RolloutSample
from megatron_hapo.trainer.batch import StepBatch

N_PROMPTS, N_SAMPLES, VOCAB = 4, 4, 300
RESPONSE_LENGTHS = [40, 3, 5, 2, 7, 1, 31, 4, 2, 12, 3, 6, 1, 24, 5, 3]


def varied_batch(seed: int = 0) -> StepBatch:
    g = torch.Generator().manual_seed(seed)
    samples, scores = [], []
    for p in range(N_PROMPTS):
        prompt = torch.randint(3, VOCAB, (4 + 3 * p,), generator=g).tolist()
        for j in range(N_SAMPLES):
            n = RESPONSE_LENGTHS[p * N_SAMPLES + j]
            samples.append(
                RolloutSample(
                    prompt_index=p, sample_index=j, prompt_ids=prompt,
                    response_ids=torch.randint(3, VOCAB, (n,), generator=g).tolist(),
                    logprobs=(-torch.rand(n, generator=g) * 4).tolist(), finish_reason="stop",
                    weight_version="fixed", temperatures=(0.9 + 0.2 * torch.rand(n, generator=g)).tolist(),
                )
            )  # fmt: skip
            scores.append(1.0 if (p + j) % 3 == 0 else -1.0)
    groups = [s.prompt_index for s in samples]
    return StepBatch(samples, [None] * len(samples), groups, scores, [s > 0 for s in scores])
