"""The trainer's periodic evaluation (eval.every) and its graceful shutdown on SIGTERM, end to end:
``python -m megatron_hapo.trainer`` on the tiny CPU config (real Megatron, SGLang in-process, real
scorer) with a briefly SFT-warmed tiny model."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.metrics_utils import is_timing
from tests.torchrun_utils import REPO_ROOT

pytestmark = pytest.mark.slow

CONFIG = "examples/configs/tiny_cpu.yaml"
SMALL = (  # 4 prompts x 4 samples per step, 2 updates: a step takes a few seconds on 2 cores
    "data.train_batch_size=4", "data.mini_batch_size=2", "data.micro_batch_size=2", "sampling.train.n=4",
)  # fmt: skip


def _cmd(*overrides) -> list[str]:
    return [sys.executable, "-m", "megatron_hapo.trainer", "--config", CONFIG, *SMALL, *overrides]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", TORCHDYNAMO_DISABLE="1", PYTHONPATH=str(REPO_ROOT))


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def model(small_policy):
    return small_policy


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "arith.parquet"
    pq.write_table(pq.read_table(REPO_ROOT / "examples/data/tiny_math_val.parquet").slice(0, 4), path)
    return path


def _run(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        _cmd(f"trainer.run_dir={run_dir}", *overrides), cwd=REPO_ROOT, env=_env(), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _history(run_dir: Path) -> list[tuple[int, dict]]:
    """eval_history.jsonl: (step, result without its wall time) per evaluation."""
    records = [json.loads(line) for line in (run_dir / "eval_history.jsonl").read_text().splitlines()]
    return [(r["step"], {k: v for k, v in r["result"].items() if k != "wall_s"}) for r in records]


def test_periodic_evaluation_before_training_and_every_two_steps_and_its_resume(model, benchmark, tmp_path):
    """Evaluations at steps 0, 2, 4 and 5, the last step (checkpoints at 2, 4 and 5), each one's answers journaled in
    eval_answers/. Then the run's copy is made into one that a stop ended during step 2's evaluation: no later
    checkpoint, step 2's evaluation not recorded, its journal holding one of the 4 prompts. The resume from step 2
    first finishes that evaluation from the journal (the other 3 prompts), then drops the interrupted attempt's
    step-4 and step-5 evaluations and their journals and repeats them: every evaluation and every training row as the uninterrupted
    run had them (seeded evaluation, rollout.seeded_sampling), and the best over all of them reported."""
    run_dir = tmp_path / "run"
    # T 1 and top-p 1: unseeded, the repeated evaluation would draw other answers (the warm policy is confident)
    evals = (f"model.hf_path={model}", "trainer.total_steps=5", f"eval.benchmarks=[{benchmark}]",
             "eval.every=2", "eval.before_train=true", "sampling.val.n=2",
             "sampling.val.temperature=1.0", "sampling.val.top_p=1.0")  # fmt: skip
    proc = _run(run_dir, *evals, "checkpoint.save_every=2", "checkpoint.keep_last=null")
    rows = _rows(run_dir)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 5]  # step 0: the evaluation before training
    evaluated = [r["step"] for r in rows if "eval/arith/avg@2" in r]
    assert evaluated == [0, 2, 4, 5]  # the last step too: the weights the run ends with
    for r in rows:
        if r["step"] in evaluated:
            assert 0.0 <= r["eval/arith/avg@2"] <= r["eval/arith/pass@2"] <= 1.0, r
            assert r["eval/arith/response_length"] > 0 and r["eval/wall_s"] > 0
    history = _history(run_dir)
    assert [step for step, _ in history] == [0, 2, 4, 5]
    assert all(result["settings"]["seed"] == 42 for _, result in history)  # trainer.seed (base.yaml)
    assert "best evaluation so far" in proc.stdout and "| arith |" in proc.stdout
    assert (
        f"eval after step 2: avg@2 {rows[2]['eval/avg@2']:.3f} (arith " in proc.stdout
    )  # the console's line
    answers = run_dir / "eval_answers"
    assert sorted(p.name for p in answers.iterdir()) == [f"step_{s}.jsonl" for s in (0, 2, 4, 5)]

    resumed = tmp_path / "resumed"
    shutil.copytree(run_dir, resumed)
    for step in (4, 5):  # stopped during step 2's evaluation: step 2's checkpoint is the last
        shutil.rmtree(resumed / "checkpoints" / f"step_{step}")
    lines = (resumed / "eval_history.jsonl").read_text().splitlines()
    (resumed / "eval_history.jsonl").write_text("\n".join(lines[:1]) + "\n")  # step 0's only
    interrupted = [
        {k: v for k, v in r.items() if not k.startswith("eval/")} if r["step"] == 2 else r for r in rows
    ]
    (resumed / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in interrupted))
    journal = resumed / "eval_answers" / "step_2.jsonl"
    journal.write_text("\n".join(journal.read_text().splitlines()[:2]) + "\n")  # the header and one prompt
    proc = _run(resumed, *evals, "checkpoint.resume=auto")
    assert (
        f"resuming: 1 of 4 prompts already answered ({journal})"
        in (resumed / "logs" / "rank0.log").read_text()
    )
    printed = proc.stdout.splitlines()
    finished = printed.index(next(line for line in printed if line.startswith("eval after step 2: avg@2")))
    assert printed[finished + 1].split()[:2] == ["step", "reward"]  # the finished evaluation, then the table
    again = _rows(resumed)
    assert [r["step"] for r in again] == [0, 1, 2, 2, 3, 4, 5]  # step 2's training row, then its evaluation
    assert again[3] == {"step": 2, **{k: v for k, v in rows[2].items() if k.startswith("eval/")}} | {
        "eval/wall_s": again[3]["eval/wall_s"]
    }
    for want, got in zip(rows, again[:3] + again[4:], strict=True):
        differing = {k: (v, got.get(k)) for k, v in want.items() if not is_timing(k) and got.get(k) != v}
        differing = {k: d for k, d in differing.items() if not (want["step"] == 2 and k.startswith("eval/"))}
        assert not differing, (want["step"], differing)
    assert _history(resumed) == history
    # the best over the four evaluations, one of them from the first attempt
    best, step = max((r["benchmarks"]["arith"]["avg_at_k"], -step) for step, r in history)
    assert f"| arith | {100 * best:.2f} | {-step} |" in proc.stdout


def test_sigterm_cancels_the_rollout_and_checkpoints_the_last_step(model, tmp_path):
    """SIGTERM to the trainer's whole process group, as torchrun (os.killpg), Slurm and a terminal's Ctrl-C
    send it, while step 2 generates: the stop cancels that rollout instead of waiting for it (the engine
    aborts it), saves step 1 and exits 143. The engine's scheduler and the scorer workers get the signal too,
    and must leave it to the trainer (megatron_hapo/stop_signals.py).

    Random weights (load_weights=false) rarely emit EOS: every response runs to max_new_tokens, and a rollout
    takes 3.5-8 s on 2 cores, against ~1 s of update: a signal 0.5 s after step 1 lands in step 2's rollout."""
    run_dir = tmp_path / "run"
    common = (f"model.hf_path={model}", "model.load_weights=false", "rollout.max_new_tokens=1000",
              f"trainer.run_dir={run_dir}", "checkpoint.save_every=0")  # fmt: skip
    proc = subprocess.Popen(
        _cmd(*common, "trainer.total_steps=200"), cwd=REPO_ROOT, env=_env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 420
        while not _rows(run_dir):
            assert proc.poll() is None, proc.communicate()[1][-6000:]
            assert time.monotonic() < deadline, "no step finished within 420 s"
            time.sleep(0.2)
        time.sleep(0.5)  # step 2's rollout is generating
        os.killpg(proc.pid, signal.SIGTERM)
        signalled = time.monotonic()
        stdout, stderr = proc.communicate(timeout=180)
        stopped_s = time.monotonic() - signalled
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever of the group is left
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-6000:]
    rows = _rows(run_dir)
    assert [r["step"] for r in rows] == [1], stderr[-6000:]
    assert rows[0]["response_length/mean"] > 200  # the rollouts are long (EOS ends a few early)
    cancelled_after = re.search(r"the stop cancelled the rollout after ([\d.]+) s", stderr)
    assert cancelled_after, stderr[-6000:]
    assert "training stopped after step 1 on SIGTERM" in stderr
    assert (run_dir / "checkpoints" / "step_1" / "trainer_state.json").is_file()
    # the signal came ~0.5 s into step 2's rollout: the engine aborted it there rather than finish it. Step 1's
    # rollout, as long, ran in full (a resume from the stop's checkpoint that generates step 2 anew, and repeats
    # the uninterrupted run: tests/faults/test_signals.py). Measured: cancelled after 0.6-1.1 s; in full 3.5-8 s.
    full = rows[0]["time/rollout_s"]
    print(f"{cancelled_after[0]}; exited {stopped_s:.1f} s after the signal; step 1's rollout: {full:.1f} s")
    assert float(cancelled_after[1]) < 0.5 * full, (cancelled_after[0], full)


@pytest.mark.parametrize("target", ["rank 1", "torchrun"])
def test_sigterm_to_one_rank_or_to_torchrun_stops_every_rank_after_the_same_step(model, tmp_path, target):
    """Under torchrun (DP=2). SIGTERM to the non-lead rank only, 0.5 s into step 2's rollout (long: random
    weights, as above): rank 1 forwards it through the job's store, so rank 0 cancels that rollout instead of
    finishing it, and the stop flag, all-reduced after the step, makes both ranks stop after step 1 and write
    one checkpoint together. SIGTERM to torchrun (a
    scheduler's stop), started by examples/launch/train_torchrun.sh: torchrun forwards it to each worker's
    process group (the engine's scheduler and the scorer workers included, which leave it to the trainer) and
    waits TORCH_ELASTIC_SHUTDOWN_TIMEOUT, which the launcher raises from torchrun's 30 s.

    The default group's collectives time out after 6 s here, far less than rank 0's engine start, rollout
    and scoring take: rank 1 waits for those on the lead group (parallel/lead.py), never in a collective of
    the default group (where NCCL's watchdog would end a GPU job whose rollout outlasts the timeout)."""
    import psutil

    run_dir = tmp_path / "run"
    args = ["--config", CONFIG, *SMALL, f"model.hf_path={model}", f"trainer.run_dir={run_dir}",
            "trainer.total_steps=200", "checkpoint.save_every=0", "trainer.collective_timeout_minutes=0.1"]  # fmt: skip
    if target == "rank 1":
        args += ["model.load_weights=false", "rollout.max_new_tokens=1000"]
    env = _env()
    if target == "torchrun":
        env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # the launcher runs `python`
        cmd = ["bash", "examples/launch/train_torchrun.sh", CONFIG, "2", *args[2:]]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "-m", "megatron_hapo.trainer", *args]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 480
        while not _rows(run_dir):
            assert proc.poll() is None, proc.communicate()[0][-6000:]
            assert time.monotonic() < deadline, "no step finished within 480 s"
            time.sleep(0.5)
        if target == "torchrun":  # the launcher exec'd torchrun
            assert psutil.Process(proc.pid).environ()["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "1800"
            proc.send_signal(signal.SIGTERM)
        else:
            workers = {
                p.environ().get("RANK"): p
                for p in psutil.Process(proc.pid).children()
                if "RANK" in p.environ()
            }
            time.sleep(0.5)  # step 2's rollout is generating
            workers["1"].send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, output[-6000:]
    last = _rows(run_dir)[-1]["step"]
    assert output.count(f"training stopped after step {last} on SIGTERM") == 2, output[-6000:]  # both ranks
    if target == "rank 1":
        assert (
            last == 1 and "rank 1 received SIGTERM: cancelling the rollout in progress here too" in output
        ), output[-6000:]
        assert "the stop cancelled the rollout after" in output, output[-6000:]
    assert (run_dir / "checkpoints" / f"step_{last}" / "trainer_state.json").is_file()
