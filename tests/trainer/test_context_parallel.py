"""Context parallelism: Megatron's load-balanced layout of a sequence over CP ranks, the padded lengths it needs,
one HAPO step at CP=2 equal to DP=2 (at TP=2 with sequence parallelism) with a checkpoint that crosses between them
(tests/dist_jobs/job_context_parallel.py), and two RL steps of the trainer at CP=2 with the weight sync."""

from __future__ import annotations

import pytest
import torch

from megatron_hapo.config.schema import sequence_multiple
from megatron_hapo.models.context_parallel import local_positions, split_batch
from megatron_hapo.models.packing import resolve_packing
from tests.torchrun_utils import run_torchrun


@pytest.mark.parametrize("cp", [2, 3, 4])
def test_the_ranks_hold_every_position_once_and_equal_causal_work(cp):
    seq = 2 * cp * 5
    parts = [local_positions(seq, cp, r) for r in range(cp)]
    assert sorted(torch.cat(parts).tolist()) == list(range(seq))
    assert parts[0][:5].tolist() == [0, 1, 2, 3, 4] and parts[0][5:].tolist() == list(range(seq - 5, seq))
    # a query at position p attends p + 1 keys: every rank gets the same share of the causal product
    work = {int((p + 1).sum()) for p in parts}
    assert len(work) == 1, work
    with pytest.raises(ValueError, match="2 x CP = 4 equal chunks"):
        local_positions(10, 2, 0)


@pytest.mark.parametrize(
    "device", ["cpu", "meta"]
)  # meta: nothing is built on another device than the batch's
def test_split_batch_slices_every_per_token_field_and_the_parts_rebuild_the_micro_batch(device):
    from megatron_hapo.trainer.experience import Experience
    from tests.trainer.batching_data import varied_batch

    batch = varied_batch()
    n = len(batch.samples)
    exp = Experience.build(
        batch.samples, [s.temperatures for s in batch.samples], [1.0] * n, batch.group_ids, list(range(n))
    )
    mb = exp.micro_batch([0, 1, 6], 56)  # responses of 40, 3 and 31 tokens
    fields = [k for k, v in vars(mb).items() if torch.is_tensor(v) and v.shape == mb.tokens.shape]
    assert {"tokens", "targets", "mask", "advantages", "old_log_prob", "temperature", "position_ids"} <= set(
        fields
    )
    mb = split_batch(mb, 1, 0)  # a copy of every field
    for k in fields:
        setattr(mb, k, getattr(mb, k).to(device))
    parts = [split_batch(mb, 2, r) for r in range(2)]
    for k in fields:
        assert all(getattr(p, k).shape == (3, 28) and getattr(p, k).device.type == device for p in parts), k
    if device == "cpu":
        for k in fields:  # the parts, put back at their positions, are the micro-batch
            whole = torch.empty_like(getattr(mb, k))
            for r, p in enumerate(parts):
                whole[:, local_positions(56, 2, r)] = getattr(p, k)
            assert torch.equal(whole, getattr(mb, k)), k
        assert parts[1].position_ids[0].tolist() == [*range(14, 28), *range(28, 42)]


def test_a_packed_row_keeps_its_query_rows_and_each_sequence_its_local_slots():
    from megatron_hapo.trainer.experience import Experience
    from tests.trainer.batching_data import varied_batch

    batch = varied_batch()
    n = len(batch.samples)
    exp = Experience.build(
        batch.samples, [s.temperatures for s in batch.samples], [1.0] * n, batch.group_ids, list(range(n))
    )
    row = exp.packed_micro_batch([1, 2, 3, 5], 36, "mask")  # 4 sequences and trailing padding in 36 slots
    advantages = row.advantages.reshape(-1)
    for r in range(2):
        part = split_batch(row, 2, r)
        mine = local_positions(36, 2, r)
        assert part.attention_mask.shape == (1, 1, 18, 36)
        assert torch.equal(part.attention_mask[0, 0], row.attention_mask[0, 0, mine])
        # a sequence's slots on this rank point at the same tokens as in the whole row; the others are -1
        on_rank = torch.isin(row.segments, mine) & (row.segments >= 0)
        assert torch.equal(part.segments >= 0, on_rank)
        got = part.advantages.reshape(-1)[part.segments.clamp_min(0)]
        assert torch.equal(got[on_rank], advantages[row.segments.clamp_min(0)][on_rank])
    row.packed_seq_params = object()  # a THD row
    with pytest.raises(NotImplementedError, match="THD packed rows"):
        split_batch(row, 2, 0)


@pytest.mark.parametrize(
    "tp, sp, cp, multiple",
    [(1, False, 1, 1), (4, True, 1, 4), (1, False, 2, 4), (2, False, 3, 6), (2, True, 2, 4), (4, True, 2, 8)],
)
def test_sequence_multiple_lets_every_cp_rank_split_its_tokens_over_tp(tp, sp, cp, multiple):
    assert sequence_multiple(tp, sp, cp) == multiple
    if cp > 1:  # s / CP tokens per rank, split over TP under sequence parallelism
        assert multiple % (2 * cp) == 0 and (multiple // cp) % (tp if sp else 1) == 0


def test_packing_under_cp_is_the_mask_route_only():
    assert resolve_packing("auto", te_spec=False, token_budget=True, cp=2)[0] == "mask"
    assert resolve_packing("auto", te_spec=True, token_budget=True, cp=2)[0] == "none"
    with pytest.raises(ValueError, match="thd is not split across CP ranks"):
        resolve_packing("thd", te_spec=True, token_budget=True, cp=2)


@pytest.mark.slow
def test_context_parallel_trains_as_data_parallel(tmp_path):
    """CP=2 x TP=2 (sequence parallel) against DP=2 x TP=2 from the same weights, fixed micro-batches, token
    budgets and packed rows: old log-probs, scored sequences, losses, parameters and the HF export agree; a
    checkpoint written at CP=2 loads at DP=2 into the same parameters and the next steps agree. (The job
    also runs at TP=1 on 2 processes; TP=2 covers it and the sequence split of each CP rank's chunks.)"""
    from megatron_hapo.demo.tiny_models import make_tiny_hf_model

    model = make_tiny_hf_model(
        tmp_path / "m", "qwen2", vocab_size=300, dtype="float32", initializer_range=0.5
    )
    out = run_torchrun("job_context_parallel.py", 4, str(model), str(tmp_path / "ckpt"), "2", timeout=600)
    print("\n".join(line for line in out.splitlines() if line.startswith("[job]")))  # shown with -s
    assert "CONTEXT_PARALLEL_OK" in out, out[-3000:]


@pytest.mark.slow
def test_two_rl_steps_through_the_trainer_at_cp2(small_policy, tmp_path):
    """train() at CP=2 (tests/dist_jobs/job_trainer_world2.py): two steps with SGLang in-process on rank 0
    serving the weights the CP ranks trained (rollout vs old log-probs within 1e-3), and a checkpoint."""
    out = run_torchrun(
        "job_trainer_world2.py",
        2,
        str(small_policy),
        str(tmp_path / "run"),
        "1",
        "1",
        "1",
        "null",
        "2",
        timeout=420,
    )
    assert "TRAINER_WORLD2_OK tp=1 pp=1 vp=null cp=2" in out, out[-3000:]
