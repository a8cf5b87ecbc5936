"""The interleaved (virtual) pipeline: micro-batch counts rounded up to a multiple of PP (Megatron's interleaved
schedule runs them in groups of PP per chunk), and one HAPO step at PP=2 x VP=2 equal to plain PP=2, with a
checkpoint that crosses between them (torchrun: tests/dist_jobs/job_virtual_pipeline.py), and two RL steps
of the trainer at PP=2 x VP=2 with the weight sync to SGLang."""

from __future__ import annotations

import random

import pytest

from megatron_hapo.trainer.batching import plan_step
from tests.torchrun_utils import run_torchrun


def _schedule_calls(plan):
    """The micro-batch list of every schedule call: each rank's mini-batches, then each rank's old pass."""
    return [mini for rank in plan.update for mini in rank] + plan.old


@pytest.mark.parametrize("packed", [False, True])
def test_micro_batch_counts_are_rounded_up_to_the_multiple_with_empty_micro_batches(packed):
    rng = random.Random(1)
    seq_lens = [8 + int(rng.lognormvariate(3.0, 1.0)) % 300 for _ in range(48)]
    kw = dict(max_tokens=512, max_tokens_old=1024, pad_multiple=2, packed=packed)
    plain = plan_step(seq_lens, 2, 3, **kw)
    plan = plan_step(seq_lens, 2, 3, micro_batch_multiple=4, **kw)
    assert any(len(c) % 4 for c in _schedule_calls(plain)), "nothing to round up: the case tests nothing"
    for before, after in zip(_schedule_calls(plain), _schedule_calls(plan), strict=True):
        assert len(after) % 4 == 0 and len(after) - len(before) < 4
        assert after[: len(before)] == before  # the same grouping, then empty micro-batches
        assert all(mb.rows == () and mb.seq_len == 2 for mb in after[len(before) :])
    assert plan.responses == plain.responses
    assert plan_step(seq_lens, 2, 3, micro_batch_multiple=1, **kw) == plain


@pytest.mark.slow
def test_interleaved_pipeline_trains_as_the_plain_one(tmp_path):
    """PP=2 x VP=2 against PP=2 from the same weights, fixed micro-batches, token budgets and packed rows:
    old log-probs, losses, parameters and the HF export agree to 1e-5; a checkpoint written at VP=2 loads
    at plain PP=2 into the same parameters and the next steps agree."""
    from megatron_hapo.demo.tiny_models import make_tiny_hf_model

    # tied embeddings (as Qwen2.5-1.5B): the first stage's first chunk and the last stage's last chunk share
    # the embedding's gradient; the trainer test below runs an untied model
    model = make_tiny_hf_model(
        tmp_path / "m", "qwen2", vocab_size=300, dtype="float32", initializer_range=0.5, num_layers=4,
        tie_word_embeddings=True,
    )  # fmt: skip
    out = run_torchrun("job_virtual_pipeline.py", 2, str(model), str(tmp_path / "ckpt"), timeout=600)
    print("\n".join(line for line in out.splitlines() if line.startswith("[job]")))  # shown with -s
    assert "VIRTUAL_PIPELINE_OK" in out, out[-3000:]


@pytest.mark.slow
def test_two_rl_steps_through_the_trainer_at_pp2_vp2(tmp_path):
    """train() at PP=2 x VP=2 (tests/dist_jobs/job_trainer_world2.py): two steps with SGLang in-process on
    rank 0 serving the weights the chunks export (rollout vs old log-probs within 1e-3), and a checkpoint."""
    from megatron_hapo.demo.policy import make_demo_model

    model = make_demo_model(
        tmp_path / "m",
        sft_steps=100,
        sft_noise=0.5,
        sft_files=["examples/data/tiny_math_train.parquet"],
        num_layers=4,
    )
    out = run_torchrun(
        "job_trainer_world2.py", 2, str(model), str(tmp_path / "run"), "1", "0", "2", "2", timeout=420
    )
    assert "TRAINER_WORLD2_OK tp=1 pp=2 vp=2" in out, out[-3000:]
