"""The trainer with ``rollout.engine=fleet``: the lead launches one SGLang HTTP server + sglang-router on
CPU, rollouts go through the router and every step's weights reach the server by the distributed
(gloo) transport. One test only: a server start costs ~30-60 s on 2 cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.torchrun_utils import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture
def model(small_policy):
    return small_policy


def test_two_steps_with_a_launched_fleet(model, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "megatron_hapo.trainer", "--config", "examples/configs/tiny_cpu.yaml",
        f"model.hf_path={model}", f"trainer.run_dir={run_dir}", "trainer.total_steps=2",
        "rollout.engine=fleet", "rollout.launch_servers=true", "rollout.num_servers=1",
        "rollout.startup_timeout_s=400", "rollout.request_timeout_s=300",
        "data.train_batch_size=4", "data.mini_batch_size=2", "data.micro_batch_size=2", "sampling.train.n=4",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCHDYNAMO_DISABLE="1", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    logs = sorted((run_dir / "fleet_logs").rglob("*.log"))
    assert proc.returncode == 0, proc.stderr[-6000:] + "".join(p.read_text()[-2000:] for p in logs)
    assert {p.name for p in logs} == {"server0.log", "router.log"}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        # the server samples from the trainer's weights: pushed before step 1 and after step 1's update
        assert r["actor/tis/abs_log_prob_diff"] < 1e-3, r
        assert r["sync/mb"] > 0
    assert rows[0]["temperature/min"] == rows[0]["temperature/max"] == pytest.approx(1.0)
    assert rows[1]["temperature/min"] < 0.999  # HAPO sampler on the server, statistics from step 1
