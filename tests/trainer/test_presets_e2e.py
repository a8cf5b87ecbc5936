"""A short run with each algorithm preset (``hapo-train --preset dapo|grpo``; HAPO is the main e2e run):
the run completes and the preset's mechanisms show in the metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.torchrun_utils import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("preset", ["dapo", "grpo"])
def test_preset_runs_two_steps(small_policy, tmp_path, preset):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "megatron_hapo.trainer", "--config", "examples/configs/tiny_cpu.yaml",
        "--preset", preset, f"model.hf_path={small_policy}", f"trainer.run_dir={run_dir}", "trainer.total_steps=2",
        "data.train_batch_size=4", "data.mini_batch_size=2", "data.micro_batch_size=2", "sampling.train.n=4",
        "algorithm.dynamic_sampling.max_num_gen_batches=0",  # refill until full: never a flaky error here
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCHDYNAMO_DISABLE="1", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["temperature/min"] == r["temperature/max"] == pytest.approx(1.0)  # no adaptive temperature
        assert r["actor/dar/scaled_up_count"] == 0 == r["actor/dar/scaled_down_count"]  # no redistribution
        assert r["actor/tis/abs_log_prob_diff"] < 1e-3
        if preset == "dapo":  # dynamic sampling: only groups with mixed accuracy are trained on
            assert r["dynamic_sampling/gen_batches"] >= 1 and 0.0 < r["acc/mean"] < 1.0
            assert -2.0 <= r["dynamic_sampling/raw_reward_mean"] <= 1.0  # +-1, minus up to 1 if overlong
