"""A quiet console (issue 17, bug 11): a short tiny CPU run prints a first line naming the run directory
and one line per step (a 3-step run printed 33 KB before); Megatron's and SGLang's output is kept in
``run_dir/logs/``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.torchrun_utils import REPO_ROOT

STEPS = 2
BUDGET = 3 * 1024  # bytes, stdout + stderr (the target for a 3-step run)


@pytest.mark.slow
def test_a_short_run_prints_one_line_per_step_and_logs_the_rest(tmp_path):
    from megatron_hapo.demo.policy import make_demo_model

    model = make_demo_model(tmp_path / "model")  # random weights: the console is what is tested
    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", TORCHDYNAMO_DISABLE="1")
    env.pop("HAPO_VERBOSE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_hapo.trainer", "--config", "examples/configs/tiny_cpu.yaml",
         f"model.hf_path={model}", f"trainer.run_dir={run_dir}", f"trainer.total_steps={STEPS}",
         "data.train_batch_size=4", "data.mini_batch_size=4", "data.micro_batch_size=8", "checkpoint.save_every=0"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    printed = proc.stdout + proc.stderr
    assert proc.returncode == 0, printed[-4000:]
    assert len(printed.encode()) < BUDGET, printed
    lines = printed.splitlines()
    assert lines[0].startswith(f"hapo-train: run directory {run_dir}") and f"{run_dir}/logs" in lines[0]
    assert lines[1].split()[:3] == ["step", "reward", "acc"]
    assert [line.split()[0] for line in lines[2:]] == [str(s) for s in range(1, STEPS + 1)]
    # nothing is lost: Megatron's and the trainer's INFO lines, SGLang's settings and its processes' output
    rank0 = (run_dir / "logs" / "rank0.log").read_text()
    assert "megatron.core" in rank0 and "megatron_hapo.data.dataset: prompt dataset" in rank0
    assert "server_args=" in rank0 and "generating" in rank0  # also after the engine re-configured logging
    assert "HAPO adaptive-temperature sampler active" in (run_dir / "logs" / "sglang.log").read_text()
