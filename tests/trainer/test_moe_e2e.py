"""A mixture of experts end to end: hapo-train on a tiny Qwen3-MoE (8 experts, 2 per token) under torchrun: rollouts on
SGLang, the update through Megatron's MoE layers, the expert weights synced back and a checkpoint; at TP=2 (routing
itself), and at EP=2 with a resume, replaying the engine's routing (algorithm.rollout_routing_replay: each
data-parallel rank receives its responses' experts from the lead). The job asserts that the trainer's log-probs equal
the engine's at every step; under replay that holds only if every token replays its own experts
(tests/trainer/test_routing_replay.py), and at the learning rate below only if every expert's update reached the
engine (with the experts left unsynced it was 0.31 at EP=2). At world 4, a training checkpoint resumes across EP=2 and
EP=4 (no engine: the step after it against the EP=2 run's own).

The conversion of Qwen3-MoE (logits against HF at TP=1/2 and PP=2, bit-exact round trips) is tested with the
other families in tests/models/test_conversion*.py."""

from __future__ import annotations

import re

import pytest

from megatron_hapo.demo.tiny_models import make_tiny_hf_model
from tests.torchrun_utils import run_torchrun

pytestmark = pytest.mark.slow  # four torchrun jobs (~1.6 min)

# every update moves the router and the experts far: a varied reward, a large step
MOVING = (
    "reward.scorer=test_digit_share reward.extra_modules=[tests.trainer.helper_scorers] "
    "reward.overlong.enable=false optim.lr=1e-2"
)


@pytest.fixture(scope="module")
def moe_model(tmp_path_factory):
    # initializer_range 0.2: the router's choices vary from token to token, so every expert is used
    return make_tiny_hf_model(
        tmp_path_factory.mktemp("moe"), "qwen3_moe", dtype="float32", initializer_range=0.2
    )


@pytest.mark.dist
def test_two_steps_at_tp2_with_sequence_parallelism_and_the_distributed_optimizer(moe_model, tmp_path):
    """Each expert's MLP split over 2 TP ranks (Megatron's alltoall dispatcher), the expert gradients reduced and
    sharded by the distributed optimizer; the job asserts finite losses, a checkpoint and an engine serving the
    trainer's weights."""
    env = {"EXTRA_OVERRIDES": "parallel.sequence_parallel=true"}  # MoE at TP > 1 needs it (config validation)
    out = run_torchrun(
        "job_trainer_world2.py", 2, moe_model, tmp_path / "run", "2", "1", env=env, timeout=480
    )
    assert "TRAINER_WORLD2_OK tp=2" in out, out[-3000:]


@pytest.mark.dist
def test_expert_parallelism_trains_syncs_every_expert_and_resumes(moe_model, tmp_path):
    """EP=2 (DP=2): each rank holds 4 of the 8 experts; the sync gathers them all (the engine's log-probs are the
    trainer's), the checkpoint shards them, and a resume from step 2 runs step 3 at EP=1 (every rank all 8 experts,
    the experts' optimizer state no longer apart: trainer/optimizer_layout.py)."""
    for steps, ep in ((2, 2), (3, 1)):
        overrides = f"parallel.expert_model_parallel_size={ep} algorithm.rollout_routing_replay=true {MOVING}"
        env = {"EXTRA_OVERRIDES": f"{overrides} trainer.total_steps={steps}"}
        out = run_torchrun(
            "job_trainer_world2.py", 2, moe_model, tmp_path / "run", "1", "1", env=env, timeout=480
        )
        assert "TRAINER_WORLD2_OK tp=1" in out, out[-3000:]
    steps_run = re.findall(r"^ +(\d+) +-?\d", out, flags=re.MULTILINE)  # the console's step lines
    assert steps_run == ["3"], steps_run  # the second launch resumed from step 2's checkpoint


@pytest.mark.dist
def test_a_training_checkpoint_resumes_at_another_expert_parallelism(moe_model, tmp_path):
    """World 4: a chain of resumes EP=2 -> EP=1 -> EP=4 -> EP=2 (tests/dist_jobs/job_expert_resharding.py): each
    checkpoint loads into the same parameters, and the step after each load matches the EP=2 run's own step (the
    experts' Adam state moved into the other optimizer layout: one optimizer at EP=1, the experts' apart at EP > 1,
    resharded over expert-DP 2 or 1). With the optimizer state dropped at the load, that step differs by 5e-4
    against a tolerance of 1e-5."""
    out = run_torchrun("job_expert_resharding.py", 4, moe_model, tmp_path / "ckpt", timeout=600)
    assert "EXPERT_RESHARDING_OK" in out, out[-3000:]
