"""Rollout routing replay (R3): the engine's experts per token through the step's data into Megatron's routers.

The trainer runs with it are in test_moe_e2e.py (in-process engine, TP=1 and TP=2 with sequence parallelism): the
trainer's log-probs there equal the engine's only when each token replays its own experts (with the experts one
position off, |Δ log p| was 1.75 instead of 9e-7)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_hapo.demo.tiny_models import make_tiny_hf_model
from megatron_hapo.models.context_parallel import split_batch
from megatron_hapo.rollout import RolloutSample
from megatron_hapo.trainer.experience import Experience
from tests.torchrun_utils import run_torchrun

LAYERS, TOP_K = 2, 2


def _sample(i: int, prompt: list[int], response: list[int], routed: np.ndarray | None) -> RolloutSample:
    return RolloutSample(
        prompt_index=i, sample_index=0, prompt_ids=prompt, response_ids=response, logprobs=[-1.0] * len(response),
        finish_reason="stop", weight_version="v", routed_experts=routed,
    )  # fmt: skip


def _routed(seq_len: int, first: int) -> np.ndarray:
    """Distinct ids per token: token j of the sequence -> first + 4j .. first + 4j + 3 (layers x top-k)."""
    return (first + np.arange((seq_len - 1) * LAYERS * TOP_K)).reshape(seq_len - 1, -1).astype(np.int16)


def _experience(samples, routing=(LAYERS, TOP_K)) -> Experience:
    n = len(samples)
    temps = [[1.0] * len(s.response_ids) for s in samples]
    return Experience.build(samples, temps, [1.0] * n, list(range(n)), list(range(n)), routing=routing)


def test_every_token_carries_its_experts_into_every_micro_batch_layout():
    a = _sample(0, [1, 2], [3, 4, 5], _routed(5, 0))
    b = _sample(1, [6], [7, 8], _routed(3, 100))
    exp = _experience([a, b])
    flat = exp.routed_experts  # [T + 1, layers, top_k]
    assert flat.shape == (5 + 3 + 1, LAYERS, TOP_K) and flat.dtype == torch.int16
    assert torch.equal(flat[:4].reshape(4, -1), torch.from_numpy(a.routed_experts))
    assert torch.equal(flat[4], flat[3])  # the last token (never run by the engine) takes the one before it
    assert torch.equal(flat[5:7].reshape(2, -1), torch.from_numpy(b.routed_experts)) and torch.equal(
        flat[7], flat[6]
    )
    assert flat[8].tolist() == [[0, 1], [0, 1]]  # the pad slot: any valid experts (its outputs are masked)

    rows = exp.micro_batch([1, 0], seq_len=8)  # [b, s, layers, top_k], as the tokens
    assert rows.routed_experts.shape == (2, 8, LAYERS, TOP_K)
    assert torch.equal(rows.routed_experts, flat[rows.index])
    assert torch.equal(rows.routed_experts[0, :3], flat[5:8]) and torch.equal(
        rows.routed_experts[0, 3:], flat[[8] * 5]
    )
    packed = exp.packed_micro_batch([0, 1], seq_len=10, packing="mask")
    assert torch.equal(packed.routed_experts[0, :8], flat[:8])
    for cp_rank in (0, 1):  # context parallelism: each rank's positions, as for the tokens
        part = split_batch(rows, cp_size=2, cp_rank=cp_rank)
        assert torch.equal(part.routed_experts, flat[part.index]), cp_rank


def test_without_replay_nothing_is_carried_and_a_sample_without_experts_is_refused():
    plain = _experience([_sample(0, [1], [2, 3], None)], routing=None)
    assert plain.routed_experts is None and plain.micro_batch([0], 4).routed_experts is None
    with pytest.raises(
        ValueError, match=r"carries none routed experts, expected \(2, 2 MoE layers x top-2\)"
    ):
        _experience([_sample(0, [1], [2, 3], None)])
    with pytest.raises(
        ValueError, match=r"carries shape \(2, 4\) routed experts, expected \(2, 3 MoE layers"
    ):
        _experience([_sample(0, [1], [2, 3], _routed(3, 0))], routing=(3, TOP_K))


@pytest.mark.slow
@pytest.mark.dist
def test_megatron_routers_replay_at_tp2_sp_and_pp2_and_through_recomputation(tmp_path):
    """tests/dist_jobs/job_routing_replay.py (~10 s): replayed logits against a per-row reference at TP=2 SP and
    PP=2; gradients at PP=2 (1F1B) with and without full recomputation."""
    model = make_tiny_hf_model(tmp_path / "moe", "qwen3_moe", dtype="float32", initializer_range=0.2)
    out = run_torchrun("job_routing_replay.py", 2, str(model), timeout=300)
    assert "[job] OK" in out, out[-3000:]


@pytest.mark.dist
def test_each_replica_receives_only_its_share_from_the_lead():
    """parallel/lead.py::scatter_from_lead, how each data-parallel rank gets its responses' routed experts: 4 ranks
    in six layouts (tests/dist_jobs/job_scatter_from_lead.py, ~10 s)."""
    out = run_torchrun("job_scatter_from_lead.py", 4, timeout=300)
    assert "job_scatter_from_lead: all checks passed" in out, out[-3000:]
