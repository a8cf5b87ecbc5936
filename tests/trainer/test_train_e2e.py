"""End to end: hapo-train on the tiny CPU config (SGLang in-process, Megatron, weight sync), its quiet console,
resume from its checkpoint, two-step runs at TP=2 and at DP=2 (distributed optimizer) under torchrun (PP=2, interleaved:
test_virtual_pipeline.py). Bad configs rejected before any work: tests/test_cli.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from megatron_hapo.trainer import manifest
from megatron_hapo.trainer.checkpoint import STATE_FORMAT
from tests.metrics_utils import is_timing
from tests.torchrun_utils import REPO_ROOT, run_torchrun

pytestmark = pytest.mark.slow  # a 12-step run, a resume and a torchrun job

CONFIG = "examples/configs/tiny_cpu.yaml"
STEPS = 12  # steps 1-10 do not depend on it (constant learning rate): the golden rows below hold
DIST_OPT = ("parallel.use_distributed_optimizer=true",)  # its checkpoint (save + resume) is the harder one


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCHDYNAMO_DISABLE="1", PYTHONPATH=str(REPO_ROOT))
    env.pop("HAPO_VERBOSE", None)  # the quiet console is tested
    return env


def _train(*overrides):
    cmd = [sys.executable, "-m", "megatron_hapo.trainer", "--config", CONFIG, *overrides]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=420)


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory):
    from megatron_hapo.demo.policy import make_demo_model

    return make_demo_model(
        tmp_path_factory.mktemp("tiny_demo"),
        sft_steps=400,
        sft_noise=0.5,
        sft_files=["examples/data/tiny_math_train.parquet"],
    )


@pytest.fixture(scope="module")
def first_run(demo_model, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    proc = _train(f"model.hf_path={demo_model}", f"trainer.run_dir={run_dir}", f"trainer.total_steps={STEPS}",
                  "checkpoint.save_every=4", "checkpoint.keep_last=2", "checkpoint.hf_export=true",
                  "rollout.server_args.enable_cache_report=true",  # a field SGLang's sampling does not read
                  *DIST_OPT)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return run_dir, proc.stdout + proc.stderr


def test_run_directory_and_metrics(first_run):
    run_dir, _ = first_run
    assert (run_dir / "resolved_config.yaml").is_file()
    assert (run_dir / "plots" / "metrics.png").stat().st_size > 10_000  # curves drawn at the end
    rows = _rows(run_dir)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    prompts = yaml.safe_load((run_dir / "resolved_config.yaml").read_text())["data"]["train_batch_size"]
    required = ("reward/mean", "acc/mean", "entropy/mean", "response_length/mean", "temperature/mean",
                "time/step_s", "actor/pg_loss", "optim/grad_norm", "optim/lr", "time/sync_s")  # fmt: skip
    for r in rows:
        missing = [k for k in required if r.get(k) is None]
        assert not missing, (r["step"], missing)
        assert r["actor/tis/abs_log_prob_diff"] < 1e-3  # the engine samples from the trainer's weights
        generated = r["dynamic_sampling/generated_tokens_per_kept_group"] * prompts
        assert (
            r["perf/rollout_tokens_per_s"] == pytest.approx(generated / r["time/rollout_s"]) and generated > 0
        )
    # HAPO adaptive temperature: off at step 1 (no statistics yet), per-token afterwards
    assert rows[0]["temperature/min"] == rows[0]["temperature/max"] == pytest.approx(1.0)
    assert any(r["temperature/min"] < 0.999 for r in rows[1:])
    # the sampler's own per-token temperatures: base T at step 1, spread by +-tau afterwards
    assert rows[0]["rollout/temperature_min"] == rows[0]["rollout/temperature_max"] == pytest.approx(1.0)
    assert all(
        0.95 - 1e-6 <= r["rollout/temperature_min"] <= r["rollout/temperature_max"] <= 1.05 + 1e-6
        for r in rows
    )
    assert any(r["rollout/temperature_min"] < 0.999 for r in rows[1:])
    # keep_last=2, saves at 4, 8, ..., STEPS
    saved = sorted((p.name for p in (run_dir / "checkpoints").iterdir()), key=lambda n: int(n.split("_")[1]))
    assert saved == [f"step_{STEPS - 4}", f"step_{STEPS}"]


def test_the_console_shows_one_line_per_step_and_the_logs_keep_the_rest(first_run):
    """A quiet console (issue 17, bug 11; a 3-step run printed 33 KB before): a first line naming the run
    directory, the table's header, one line per step; Megatron's and SGLang's output is kept in
    ``run_dir/logs/``."""
    run_dir, printed = first_run
    assert len(printed.encode()) < 3 * 1024, printed
    lines = printed.splitlines()
    assert lines[0].startswith(f"hapo-train: run directory {run_dir}") and f"{run_dir}/logs" in lines[0]
    assert lines[1].split()[:3] == ["step", "reward", "acc"]
    assert [line.split()[0] for line in lines[2:]] == [str(s) for s in range(1, STEPS + 1)]
    # nothing is lost: Megatron's and the trainer's INFO lines, SGLang's settings and its processes' output
    rank0 = (run_dir / "logs" / "rank0.log").read_text()
    assert "megatron.core" in rank0 and "megatron_hapo.data.dataset: prompt dataset" in rank0
    assert "server_args=" in rank0 and "generating" in rank0  # also after the engine re-configured logging
    # rollout.server_args, read back from the running engine
    assert "the rollout engine runs with rollout.server_args as given: enable_cache_report=True" in rank0
    # the engine shut down once, stopping its own processes only: SGLang's own exit hook went with it (at exit
    # it logged to closed streams), and SGLang's kill of every child of the process was never called
    assert rank0.count("SGLang engine shut down: its processes") == 1
    assert "include_parent=False" not in rank0 and "kill_process_tree called" in rank0
    assert "HAPO adaptive-temperature sampler active" in (run_dir / "logs" / "sglang.log").read_text()


def test_reward_rises(first_run):
    # the SFT-warmed policy answers without the "Answer:" line half of the time: RL must fix that fast
    rewards = [r["reward/mean"] for r in _rows(first_run[0])]
    start = sum(rewards[:2]) / 2
    second_half = sum(rewards[len(rewards) // 2 :]) / (len(rewards) - len(rewards) // 2)
    assert second_half > start + 0.1, [round(r, 3) for r in rewards]


def test_staleness_0_gives_the_metrics_of_the_loop_before_overlap_existed(first_run):
    """Issue 20: ``rollout.max_staleness=0`` (the default) is the on-policy loop as it was before the overlap.
    The golden rows were written by the trainer of commit 9210436 with this fixture's command (the file
    says how; it ran 24 steps, and the number of steps does not change steps 1-10), one entry per CPU
    kind: fp32 kernels differ in the last bits between CPU models, and the SFT warm-up and sampling turn
    that into another run, so a run must match one entry whole. Steps 1-3 matched the first entry bit for
    bit when it was taken; later steps drift in the last float bits
    (packing and the sampler's entropy changed the summation order since), <= 7e-5 relative by step 10, so
    the comparison allows 1e-3. A new entry must come from the same command at 9210436."""
    golden = json.loads((Path(__file__).parent / "data" / "staleness0_golden.json").read_text())
    rows = {r["step"]: r for r in _rows(first_run[0])}
    assert all(rows[s]["rollout/staleness"] == 0.0 for s in rows)

    def differing(steps: dict) -> dict:
        return {
            (int(step), k): (v, rows[int(step)].get(k))
            for step, want in steps.items()
            for k, v in want.items()
            if not (is_timing(k) or k.startswith("perf/"))
            and rows[int(step)].get(k) != pytest.approx(v, rel=1e-3, abs=1e-6)
        }

    diffs = {m["cpu"]: differing(m["steps"]) for m in golden["machines"]}
    closest = min(diffs, key=lambda cpu: len(diffs[cpu]))
    assert not diffs[closest], (
        f"no golden entry matches (on a new kind of CPU, add one: {golden['how']}); "
        f"closest ({closest}): {dict(sorted(diffs[closest].items())[:8])}"
    )


def test_checkpoint_holds_the_trained_policy_as_hf(first_run, demo_model):
    from transformers import AutoModelForCausalLM

    exported = first_run[0] / "checkpoints" / f"step_{STEPS}" / "hf"
    trained = AutoModelForCausalLM.from_pretrained(exported).state_dict()
    start = AutoModelForCausalLM.from_pretrained(demo_model).state_dict()
    assert trained.keys() == start.keys()
    assert all(trained[k].shape == v.shape for k, v in start.items())
    changed = [k for k, v in start.items() if not torch.equal(trained[k], v)]
    assert len(changed) > len(start) // 2, changed  # STEPS steps of RL moved most tensors


def test_resume_repeats_the_uninterrupted_run_exactly_and_continues(first_run, demo_model, tmp_path):
    """A preempted run's directory, rebuilt from the run: the checkpoint of step STEPS-4 and the metrics of all
    STEPS steps (the attempt went on past its last checkpoint). Resumed to STEPS+2: the rows after the
    checkpoint are dropped and written again, the 4 repeated steps give the same metrics bit for bit (seeded
    rollouts, restored optimizer/scheduler/sampler/statistics; only timings differ), and 2 more steps follow
    with the data order moved on. The copy's trainer_state.json is rewritten in the layout written before
    issue 18 (format 1: the data position at the top level), which must still resume exactly."""
    run_dir, _ = first_run
    resumed = tmp_path / "resumed"
    start = STEPS - 4
    copy = resumed / "checkpoints" / f"step_{start}"
    shutil.copytree(run_dir / "checkpoints" / f"step_{start}", copy)
    shutil.copy(run_dir / "metrics.jsonl", resumed / "metrics.jsonl")
    state = json.loads((copy / "trainer_state.json").read_text())
    assert state.pop("format") == STATE_FORMAT
    state.update(state.pop("rollout"))  # format 1: data_order and next_group beside step
    (copy / "trainer_state.json").write_text(json.dumps(state))
    (copy / "manifest.json").unlink()
    manifest.write(copy, start)
    proc = _train(f"model.hf_path={demo_model}", f"trainer.run_dir={resumed}", f"trainer.total_steps={STEPS + 2}",
                  "checkpoint.resume=auto", "checkpoint.save_every=0", *DIST_OPT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-6000:]
    expected, got = _rows(run_dir), _rows(resumed)
    assert [r["step"] for r in got] == list(range(1, STEPS + 3))  # every step once: appended, not restarted
    assert got[:start] == expected[:start]
    for want, row in zip(expected[start:], got[start:STEPS], strict=True):
        differing = {k: (v, row.get(k)) for k, v in want.items() if not is_timing(k) and row.get(k) != v}
        assert not differing, (row["step"], differing)
    assert got[start]["temperature/min"] < 0.999  # the restored statistics drive the first resumed rollout
    # the data order moved on past where the uninterrupted run ended
    assert _data_order(resumed / "checkpoints" / f"step_{STEPS + 2}") != _data_order(
        run_dir / "checkpoints" / f"step_{STEPS}"
    )


def _data_order(checkpoint: Path) -> tuple[int, int]:
    order = json.loads((checkpoint / "trainer_state.json").read_text())["rollout"]["data_order"]
    return order["epoch"], order["position"]


# PP=2 and CP=2 through the trainer: tests/trainer/test_virtual_pipeline.py (PP=2 x VP=2) and
# tests/trainer/test_context_parallel.py (CP=2, distributed optimizer), the same job; DP=2 with the distributed
# optimizer: the single-agent run of tests/trainer/test_multinode.py
@pytest.mark.parametrize("tp, dist_opt, pp", [(2, 0, 1)], ids=["tp2"])
def test_two_steps_on_two_ranks_and_a_failed_last_sync_saves_the_step(demo_model, tmp_path, tp, dist_opt, pp):
    """TP=2: the weight sync after step 2 fails on rank 0 before any weight moves (injected; FAIL_LAST_SYNC in
    the job), while rank 1 is in the export's collectives: rank 1 finishes the export instead of hanging, both
    ranks learn of the failure, step 2 is saved, and both raise."""
    out = run_torchrun("job_trainer_world2.py", 2, str(demo_model), str(tmp_path / "run"), str(tp), str(dist_opt),
                       str(pp), timeout=420, env={"FAIL_LAST_SYNC": "1"})  # fmt: skip
    assert f"TRAINER_WORLD2_OK tp={tp} pp={pp} vp=null cp=1 failed_sync=True" in out
    assert "the weight sync into the engine failed (EngineError: injected fault" in out
