"""ScorerPool: same answers as in-process scoring, deadlines from the start of work, adversarial inputs,
killed/crashed workers replaced, timeouts and errors counted apart from wrong answers."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from megatron_hapo.config import RewardConfig
from megatron_hapo.rewards import ScoreRequest, ScorerPool, compute_score

HELPERS = "tests.rewards.helper_scorers"
CALL_TIMEOUT, GRACE = 2.0, 1.0


@pytest.fixture(scope="module")
def pool():
    with ScorerPool(
        2, call_timeout_s=CALL_TIMEOUT, verify_timeout_s=1, kill_grace_s=GRACE, extra_modules=[HELPERS]
    ) as p:
        p.wait_ready()
        yield p


def test_results_match_in_process_scoring_in_order(pool):
    reqs = []
    for i in range(12):
        reqs.append(ScoreRequest("math_dapo", f"work\nAnswer: {i}", str(i if i % 3 else i + 1)))
        reqs.append(ScoreRequest("minerva_math", f"\\boxed{{{i}/4}}", str(i / 4 if i % 2 else i)))
    batch = pool.score(reqs)
    expected = [compute_score(r.data_source, r.response, r.ground_truth) for r in reqs]
    assert batch.results == expected
    assert batch.num_timeouts == batch.num_errors == batch.num_workers_replaced == 0
    m = batch.metrics()
    assert m["reward/timeouts"] == 0 and 0 < m["reward/acc_mean"] < 1


def test_adversarial_answers_finish_within_the_deadline(pool):
    adversarial = [
        ScoreRequest("aime", "\\boxed{9^{9^{9^{9}}}}", "1"),
        ScoreRequest("math_dapo", "Answer: 9^{9^{9^{9^{9}}}}", "3"),
        ScoreRequest("aime", "\\boxed{" + "\\frac{1}{" * 300 + "2" + "}" * 300 + "}", "1"),
        ScoreRequest("aime", "$" + "+".join(f"x^{{{i}}}" for i in range(5000)) + "$", "1"),
        ScoreRequest("math_dapo", "Answer: (10^{6})!", "5"),
    ]
    fine = [ScoreRequest("math_dapo", "Answer: 7", "7"), ScoreRequest("aime", "\\boxed{7}", "7")]
    t0 = time.monotonic()
    batch = pool.score(adversarial + fine)
    wall = time.monotonic() - t0
    # 7 answers on 2 workers, none may take longer than deadline + grace (+ a replacement's start-up).
    assert wall < 4 * (CALL_TIMEOUT + GRACE) + 5, wall
    assert all(not r["acc"] for r in batch.results[:5])
    assert [r["acc"] for r in batch.results[5:]] == [True, True]
    assert batch.num_timeouts >= 3
    assert batch.num_timeouts == sum(r["timed_out"] for r in batch.results)
    assert all(r["error"] is None for r in batch.results)
    assert [r["score"] for r in batch.results[:5]] == [
        0.0,
        -1.0,
        0.0,
        0.0,
        -1.0,
    ]  # each scorer's failure value


def test_a_worker_ignoring_its_deadline_is_killed_and_replaced(pool):
    pids = pool.worker_pids
    t0 = time.monotonic()
    batch = pool.score(
        [
            ScoreRequest("x", "", "", {"seconds": 60}, scorer="test_sleep"),
            ScoreRequest("math_dapo", "Answer: 1", "1"),
        ]
    )
    assert time.monotonic() - t0 < CALL_TIMEOUT + GRACE + 5
    hung, ok = batch.results
    assert hung["timed_out"] and hung["score"] == -1.0 and not hung["acc"] and hung["error"] is None
    assert ok["acc"]
    assert batch.num_timeouts == 1 and batch.num_workers_replaced == 1
    assert len(set(pool.worker_pids) - set(pids)) == 1
    assert pool.score([ScoreRequest("math_dapo", "Answer: 2", "2")]).results[0]["acc"]  # the pool carries on


def test_deadline_runs_from_the_start_of_work_not_queue_entry(pool):
    # 8 answers of 0.7 s each on 2 workers: the last starts ~2.1 s after the batch, past the 2 s deadline
    # if it were measured from queue entry; none may time out.
    reqs = [ScoreRequest("x", "", "", {"seconds": 0.7}, scorer="test_sleep") for _ in range(8)]
    batch = pool.score(reqs)
    assert batch.num_timeouts == 0 and all(r["acc"] for r in batch.results)
    assert batch.wall_s > CALL_TIMEOUT


def test_crashing_and_raising_scorers_are_errors_not_wrong_answers(pool):
    batch = pool.score(
        [
            ScoreRequest("x", "", "", scorer="test_raise"),
            ScoreRequest("x", "", "", scorer="test_crash"),
            ScoreRequest("x", "", "", scorer="test_malformed"),
            ScoreRequest("math_dapo", "Answer: 3", "3"),
        ]
    )
    raised, crashed, malformed, ok = batch.results
    assert raised["error"] == "ZeroDivisionError: boom"
    assert "worker died (exit code 3)" in crashed["error"]
    assert "not a Score dict" in malformed["error"]
    assert ok["acc"] and ok["error"] is None
    assert batch.num_errors == 3 and batch.num_timeouts == 0 and batch.num_workers_replaced == 1


def test_empty_batch(pool):
    batch = pool.score([])
    assert batch.results == [] and batch.num_timeouts == 0


def test_configuration_errors():
    with pytest.raises(KeyError, match="no reward scorer named 'nope'"):
        ScorerPool(1, scorer="nope")
    with pytest.raises(ModuleNotFoundError):
        ScorerPool(1, extra_modules=["tests.rewards.no_such_module"])
    with pytest.raises(ValueError, match="num_workers >= 1"):
        ScorerPool(0)


def test_worker_start_up_failure_is_reported():
    # spawn: a forked worker would inherit the module this process already imported
    pool = ScorerPool(1, extra_modules=["tests.rewards.helper_broken_in_worker"], start_method="spawn")
    with pytest.raises(RuntimeError, match="failed to start(.|\n)*refuses to load in a worker"):
        pool.score([ScoreRequest("math_dapo", "Answer: 1", "1")])
    with pytest.raises(RuntimeError, match="closed"):
        pool.score([])


def test_from_config():
    cfg = RewardConfig(
        num_workers=1, call_timeout_s=3.0, verify_timeout_s=2, start_method="fork", scorer="dapo"
    )
    with ScorerPool.from_config(cfg) as pool:
        assert (pool.call_timeout_s, pool.verify_timeout_s, pool.scorer) == (3.0, 2, "dapo")
        out = pool.score([ScoreRequest("anything", "Answer: 4", "4")]).results[0]
        assert out["score"] == 1.0  # forced DAPO scorer even though the source does not say math_dapo


def wait_until_dead(pid: int, timeout_s: float = 10.0) -> None:
    """Until ``pid`` has exited (a zombie counts: the pool, its parent, reaps it on its next look)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except FileNotFoundError:
            return
        time.sleep(0.01)
    raise AssertionError(f"worker {pid} still alive {timeout_s} s after SIGKILL")


def test_a_worker_that_died_while_idle_is_replaced_and_its_answer_requeued():
    with ScorerPool(1, start_method="fork") as pool:
        pool.wait_ready()
        (victim,) = pool.worker_pids
        os.kill(victim, signal.SIGKILL)
        wait_until_dead(victim)
        batch = pool.score([ScoreRequest("math_dapo", "Answer: 5", "5")])
        assert batch.results[0]["acc"] and batch.num_workers_replaced == 1 and batch.num_errors == 0


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_workers_leave_sigint_and_sigterm_to_the_parent(start_method):
    """A Ctrl-C or torchrun's SIGTERM reaches the whole process group, workers included; the parent decides
    (megatron_hapo/stop_signals.py), so they keep scoring and none is replaced."""
    with ScorerPool(2, start_method=start_method) as pool:
        pool.wait_ready()
        for pid in pool.worker_pids:
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGINT)
        time.sleep(0.5)
        batch = pool.score([ScoreRequest("math_dapo", f"Answer: {i}", str(i)) for i in range(4)])
        assert all(r["acc"] for r in batch.results) and batch.num_workers_replaced == 0


def test_a_pool_never_closed_does_not_hold_the_exit():
    """Its workers ignore SIGTERM, which multiprocessing's exit handler sends before it joins them: the pool
    closes itself at exit first (SIGKILL), so a script that forgot close() still ends."""
    import subprocess
    import sys

    script = "from megatron_hapo.rewards import ScorerPool\npool = ScorerPool(2)\npool.wait_ready()\n"
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
