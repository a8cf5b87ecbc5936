"""Megatron at TP=2 -> SGLang through the weight sync; the log-prob check fails before, passes after."""

import pytest

from megatron_hapo.demo.tiny_models import make_tiny_hf_model
from tests.torchrun_utils import REPO_ROOT, run_torchrun


@pytest.mark.slow
@pytest.mark.dist
def test_doctor_at_tp2_detects_stale_engine_and_passes_after_sync(tmp_path):
    # vocab 300 pads to 512 at TP=2: the check also proves padded logits are excluded
    model_dir = make_tiny_hf_model(
        tmp_path / "tiny", family="qwen2", vocab_size=300, dtype="float32", initializer_range=0.3
    )
    out = run_torchrun(
        REPO_ROOT / "tools" / "logprob_doctor.py", 2,
        "--hf", str(model_dir), "--tp", "2", "--perturb", "1.2", "--check-before-sync", "--prompts", "4",
        timeout=900,
    )  # fmt: skip
    before = next(line for line in out.splitlines() if "[doctor] before sync" in line)
    after = next(line for line in out.splitlines() if "[doctor] after sync" in line)
    assert "MISMATCH" in before, before
    assert "OK" in after, after


@pytest.mark.parametrize("base, expected", [(0.7, 0.7), (0.0, 1.0)])
def test_the_doctor_scores_each_token_at_the_temperature_of_its_log_prob(base, expected):
    """The HAPO sampler's per-token temperatures when it reports them, else the base; greedy (base 0) at
    T = 1, where SGLang computes a greedy row's log-probs (a base of 0 failed the op's T > 0 check)."""
    from megatron_hapo.diagnostics.logprob_check import sample_temperatures
    from megatron_hapo.rollout import RolloutSample

    sample = RolloutSample(0, 0, [1, 2], [3, 4, 5], [-0.1, -0.2, -0.3], "stop", "v0")
    assert sample_temperatures(sample, base) == [expected] * 3
    sample.temperatures = [0.9, 1.1, 1.0]
    assert sample_temperatures(sample, base) == [0.9, 1.1, 1.0]
