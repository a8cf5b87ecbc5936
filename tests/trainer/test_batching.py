"""Token-budget micro-batches and balanced data-parallel ranks (trainer/batching.py), their config rules,
and the same step under different batchings giving the same result at TP=2, PP=2 and DP=2 (torchrun)."""

from __future__ import annotations

import random

import pytest

from megatron_hapo.trainer.batching import plan_step, round_up
from tests.torchrun_utils import run_torchrun


def _check_plan(plan, seq_lens, budget, pad_multiple):
    seen = sorted(i for rank in plan.update for mini in rank for mb in mini for i in mb.rows)
    assert seen == list(range(len(seq_lens)))  # every response exactly once in the update
    assert sorted(i for rank in plan.old for mb in rank for i in mb.rows) == seen  # and in the old pass
    counts = {tuple(len(mini) for mini in rank) for rank in plan.update}
    assert len(counts) == 1, f"ranks run different micro-batch counts: {counts}"
    for rank in plan.update:
        for mini in rank:
            for mb in mini:
                assert mb.seq_len % pad_multiple == 0
                assert mb.seq_len == round_up(max((seq_lens[i] for i in mb.rows), default=1), pad_multiple)
                assert mb.slots <= budget


def test_adversarial_mix_balances_tokens_not_responses():
    """One huge response and 200 tiny ones over 2 ranks: the huge one's rank takes few tiny ones, the
    other rank many, the tokens end up equal, and both ranks run the same number of micro-batches."""
    seq_lens = [10] * 120 + [1490] + [10] * 81  # 3500 tokens: 1750 per rank
    plan = plan_step(seq_lens, dp=2, num_mini=1, max_tokens=2048, pad_multiple=2)
    _check_plan(plan, seq_lens, 2048, 2)
    assert plan.rank_tokens() == [1750, 1750]
    assert sorted(len(r) for r in plan.responses) == [27, 175]  # responses are not what is balanced
    st = plan.stats()
    assert st["perf/dp_tokens/max_over_mean"] == st["perf/dp_tokens/min_over_mean"] == 1.0
    assert st["perf/padding_ratio/update"] < 1.05


def test_random_heavy_tail_plans_stay_within_budget():
    rng = random.Random(0)
    for dp, num_mini, budget, mult in [(1, 1, 512, 1), (2, 2, 700, 2), (4, 3, 1024, 4)]:
        seq_lens = [min(500, 8 + int(rng.lognormvariate(3.5, 1.0))) for _ in range(dp * num_mini * 16)]
        plan = plan_step(
            seq_lens, dp, num_mini, max_tokens=budget, max_tokens_old=2 * budget, pad_multiple=mult
        )
        _check_plan(plan, seq_lens, budget, mult)
        assert all(mb.slots <= 2 * budget for rank in plan.old for mb in rank)
        whole = plan_step(seq_lens, dp, num_mini, max_tokens=None, micro_batch_size=4, pad_to_step=True)
        assert plan.stats()["perf/padding_ratio/update"] < whole.stats()["perf/padding_ratio/update"]


def test_fixed_mode_keeps_the_historical_slices():
    plan = plan_step(list(range(1, 17)), dp=2, num_mini=2, max_tokens=None, micro_batch_size=2)
    assert plan.responses == [[0, 1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15]]
    assert [[list(mb.rows) for mb in mini] for mini in plan.update[1]] == [
        [[8, 9], [10, 11]],
        [[12, 13], [14, 15]],
    ]


def test_a_sequence_over_the_budget_is_refused():
    with pytest.raises(ValueError, match="exceeds the micro-batch token budget 64"):
        plan_step([10, 65, 3, 4], dp=1, num_mini=1, max_tokens=64)


@pytest.mark.parametrize(
    "overrides, keys",
    [
        (["data.max_tokens_per_micro_batch=100"], "data.max_tokens_per_micro_batch"),  # < 128 + 32
        (
            ["data.max_tokens_per_micro_batch=4096", "data.max_tokens_per_old_micro_batch=159"],
            "data.max_tokens_per_old_micro_batch",
        ),  # fmt: skip
        (["data.sequence_packing=thd"], "local attention refuses PackedSeqParams"),  # cpu_demo: local spec
        # SP at TP=4: 128 + 32 = 160 is a multiple of 4, 161 is not
        (
            [
                "data.max_tokens_per_micro_batch=161",
                "rollout.max_new_tokens=33",
                "parallel.tensor_model_parallel_size=4",
                "parallel.sequence_parallel=true",
            ],
            "padded to a multiple of 4: 164",
        ),  # fmt: skip
    ],
)
def test_bad_budgets_are_refused_at_config_time(overrides, keys):
    from megatron_hapo.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=keys.replace(".", r"\.").replace("(", r"\(")):
        load_config("examples/configs/cpu_demo.yaml", overrides, check_env=False, world_size=4)


def test_good_budget_is_accepted():
    from megatron_hapo.config import load_config

    cfg = load_config(
        "examples/configs/cpu_demo.yaml", ["data.max_tokens_per_micro_batch=160"], check_env=False
    )
    assert cfg.data.max_tokens_per_micro_batch == 160


def test_same_step_same_result_at_tp2_pp2_dp2(peaked_model):
    """tests/dist_jobs/job_batching_equivalence.py: fixed micro-batches, token budgets, packed rows and
    whole-step padding agree (1e-5; parameters on the scale of one optimizer step at least) at each layout,
    with Megatron's unfused attention and with SDPA (fixed and packed); a per-micro-batch normaliser, and
    packed rows whose attention leaks across sequences, do not."""
    out = run_torchrun("job_batching_equivalence.py", 2, str(peaked_model), timeout=600)
    print("\n".join(line for line in out.splitlines() if line.startswith("[job]")))  # shown with -s
    assert "BATCHING_EQUIVALENCE_OK" in out, out[-3000:]
