"""Fault injection, signals: SIGTERM/SIGINT at seeded random points of every phase of a step (start-up,
rollout, scoring, old-policy pass, update, weight sync, checkpoint save), each followed by a resume that
must reproduce the uninterrupted run's metrics exactly; one point sends a second signal during the save.

Cost (the whole point of the design): ONE process, ONE SGLang engine. The harness (``main`` below, run as
``python -m tests.faults.test_signals PLAN``) trains a baseline run, then a chain of attempts in a second
run directory: attempt ``i`` resumes from the checkpoint attempt ``i-1`` left, and is stopped by a signal
that a timer thread sends at a seeded fraction of the chosen phase (its duration measured in the baseline);
the last attempt runs to the end. Every attempt goes through the real ``train()`` (plan, Megatron model,
scorer pool, resume, loop, save, shutdown path); only the engine is reused between attempts (started once;
``shutdown`` deferred to the end), which saves a start-up per attempt. A fresh engine per resume is what
``tests/trainer/test_eval_and_signals.py`` and ``test_train_e2e.py`` run.

What each point checks: exit code 128 + signal (never 0), the newest good checkpoint is the last step in
metrics.jsonl (or, after a second signal mid-save, the checkpoint before: the interrupted save left no
``step_<N>``), and the next attempt's rows equal the baseline's bit for bit (timings aside). A signal during
the rollout cancels it (the engine aborts it; the step does not happen) and the resume generates that batch
anew, from the rewound data position: the same rows again.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.metrics_utils import is_timing
from tests.torchrun_utils import REPO_ROOT

pytestmark = pytest.mark.slow

CONFIG = "examples/configs/tiny_cpu.yaml"
SMALL = (  # 4 prompts x 4 samples per step, 2 updates, a checkpoint every step
    "data.train_batch_size=4", "data.mini_batch_size=2", "data.micro_batch_size=2", "sampling.train.n=4",
    "checkpoint.save_every=1", "checkpoint.keep_last=2",
)  # fmt: skip
PHASES = ("startup", "rollout", "scoring", "old_policy", "update", "sync", "save")
SEED = 17


def make_plan(seed: int = SEED) -> list[dict]:
    """Two points per phase (start-up: one), in a seeded order, each with a seeded signal, call of the phase
    within its attempt and fraction of the phase's duration; the last save point sends a second signal."""
    rng = random.Random(seed)
    points = [{"phase": p} for p in PHASES for _ in range(1 if p == "startup" else 2)]
    rng.shuffle(points)
    for p in points:
        p["signal"] = rng.choice(["SIGTERM", "SIGTERM", "SIGINT"])
        p["call"] = 1 if p["phase"] == "startup" else rng.choice([1, 2])
        p["fraction"] = round(rng.uniform(0.05, 0.95), 3)
    double = [p for p in points if p["phase"] == "save"][-1]
    double["second_signal"], double["fraction"] = True, round(double["fraction"] / 3, 3)  # both mid-save
    return points


# -- the harness (runs in its own process) -------------------------------------------------------------
class _Injector:
    """Wraps each phase's function; times it, and in a chosen call sends the planned signal(s)."""

    def __init__(self):
        self.point: dict | None = None
        self.calls: dict[str, int] = {}
        self.durations: dict[str, list[float]] = {}
        self.fired: list[dict] = []

    def wrap(self, phase: str, fn):
        injector = self

        def wrapped(*args, **kwargs):
            injector.calls[phase] = injector.calls.get(phase, 0) + 1
            p = injector.point
            if p is None or p["phase"] != phase or p["call"] != injector.calls[phase]:
                t0 = time.perf_counter()
                out = fn(*args, **kwargs)
                injector.durations.setdefault(phase, []).append(time.perf_counter() - t0)
                return out
            return injector._with_signal(p, fn, args, kwargs)

        return wrapped

    def _with_signal(self, p, fn, args, kwargs):
        times = self.durations.get(p["phase"]) or [0.1]
        delay = p["fraction"] * sum(times) / len(times)
        signum = signal.Signals[p["signal"]]
        sent: list[float] = []

        def send():
            sent.append(time.perf_counter())
            os.kill(os.getpid(), signum)
            if p.get("second_signal"):
                time.sleep(delay / 4)
                os.kill(os.getpid(), signum)

        timer = threading.Timer(delay, send)
        t0 = time.perf_counter()
        timer.start()
        raised = False
        try:
            return fn(*args, **kwargs)
        except (
            SystemExit
        ):  # the second signal's TrainingStopped, from inside the phase (not a cancelled rollout)
            raised = True
            raise
        finally:
            end = time.perf_counter()
            self.point = None
            self.fired.append({**p, "raised_in_phase": raised})
            timer.join()  # the signal lands within the phase (at its very end if the phase was quicker)
            self.fired[-1].update(mid_phase=sent[0] < end, after_s=round(sent[0] - t0, 3))
            time.sleep(0.05)  # the handler runs in the main thread at its next bytecode


def _install(injector: _Injector):
    """Wrap the phase functions; reuse one engine for every attempt."""
    import megatron_hapo.trainer.checkpoint as ckpt
    import megatron_hapo.trainer.rollout_stage as rollout_mod
    from megatron_hapo.rewards.pool import ScorerPool
    from megatron_hapo.rollout.inprocess import InProcessSGLangEngine
    from megatron_hapo.trainer.policy import Policy

    InProcessSGLangEngine.generate = injector.wrap("rollout", InProcessSGLangEngine.generate)
    ScorerPool.score = injector.wrap("scoring", ScorerPool.score)
    Policy.old_policy_pass = injector.wrap("old_policy", Policy.old_policy_pass)
    Policy.update = injector.wrap("update", Policy.update)
    Policy.sync_weights = injector.wrap("sync", Policy.sync_weights)
    ckpt.save = injector.wrap("save", ckpt.save)
    import megatron_hapo.trainer.setup as setup_mod

    setup_mod.plan_resume = injector.wrap("startup", setup_mod.plan_resume)
    import megatron_hapo.trainer.loop as loop_mod

    loop_mod.plan_resume = setup_mod.plan_resume
    engines: list = []
    make = rollout_mod.make_engine

    def shared_engine(cfg, run_dir=None):
        if not engines:
            engines.append(make(cfg, run_dir))
        engines[0].cancelled.clear()  # a stop cancels the engine for good; a real run then shuts it down
        return engines[0]

    rollout_mod.make_engine = shared_engine
    real_shutdown = InProcessSGLangEngine.shutdown
    InProcessSGLangEngine.shutdown = lambda self: None
    return lambda: [real_shutdown(e) for e in engines]


def _attempt(cfg_overrides: list[str]) -> int:
    from megatron_hapo.config import load_config
    from megatron_hapo.trainer.loop import train

    cfg = load_config(CONFIG, [*SMALL, *cfg_overrides], world_size=1)
    try:
        train(cfg)
    except SystemExit as e:  # TrainingStopped, or anything else that tries to end the process
        return e.code if isinstance(e.code, int) else 1
    return 0


def main(plan_path: str) -> None:
    import logging

    import megatron_hapo.parallel  # noqa: F401  (CPU patches before anything imports megatron)
    from megatron_hapo.trainer.checkpoint import select, verify
    from megatron_hapo.trainer.metrics import read_metrics

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    job = json.loads(Path(plan_path).read_text())
    out, model, steps = Path(job["out"]), job["model"], job["steps"]
    injector = _Injector()
    shutdown = _install(injector)
    common = [f"model.hf_path={model}", f"trainer.total_steps={steps}"]
    result = {"baseline_code": _attempt([*common, f"trainer.run_dir={out / 'base'}"]), "attempts": []}
    chain = out / "chain"
    for p in [*job["points"], None]:
        injector.point, injector.calls, fired_before = p, {}, len(injector.fired)
        t0 = time.perf_counter()
        code = _attempt([*common, f"trainer.run_dir={chain}"])
        rows = read_metrics(chain) if (chain / "metrics.jsonl").exists() else []
        newest = select("auto", chain / "checkpoints")
        result["attempts"].append({
            "point": injector.fired[-1] if len(injector.fired) > fired_before else p,
            "code": code, "wall_s": round(time.perf_counter() - t0, 1),
            "rows": [r["step"] for r in rows], "checkpoint": verify(newest) if newest else 0,
        })  # fmt: skip
        Path(out / "result.json").write_text(json.dumps(result, indent=1))
    shutdown()


# -- the test -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(small_policy):
    return small_policy  # the session's SFT-warmed tiny policy (tests/conftest.py), built once


def _rows(run_dir: Path) -> dict[int, dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines)}


def test_a_signal_at_any_point_saves_and_the_resume_repeats_the_run(model, tmp_path, fault_figures):
    points = make_plan()
    steps = 2 + sum(p["call"] for p in points if p["phase"] != "startup")  # enough steps for every point
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"out": str(tmp_path), "model": str(model), "steps": steps, "points": points}))
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCHDYNAMO_DISABLE="1", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.faults.test_signals", str(plan)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-8000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["baseline_code"] == 0
    base, chain = _rows(tmp_path / "base"), _rows(tmp_path / "chain")
    assert sorted(base) == list(range(1, steps + 1))
    attempts, ok, failures = result["attempts"], 0, []
    for i, a in enumerate(attempts[:-1]):
        p, nxt = a["point"], attempts[i + 1]
        signum = signal.Signals[p["signal"]]
        problems = []
        if a["code"] != 128 + signum:
            problems.append(f"exit code {a['code']}, wanted {128 + signum}")
        last_row = a["rows"][-1] if a["rows"] else 0
        # a second signal that aborted the save: the newest good checkpoint is the step before
        want_ckpt = last_row - 1 if p.get("raised_in_phase") else last_row
        if a["checkpoint"] != want_ckpt:
            problems.append(f"newest good checkpoint step {a['checkpoint']}, wanted {want_ckpt}")
        if a["rows"] != list(range(1, last_row + 1)):
            problems.append(f"metrics.jsonl steps {a['rows']}")
        # the resume: the next attempt starts after this checkpoint and repeats the baseline's rows
        if nxt["rows"][: a["checkpoint"]] != list(range(1, a["checkpoint"] + 1)):
            problems.append(f"next attempt's rows {nxt['rows']} do not continue from step {a['checkpoint']}")
        if problems:
            failures.append((i, p, problems))
        else:
            ok += 1
    last = attempts[-1]
    assert last["code"] == 0 and last["rows"] == list(range(1, steps + 1)), last
    # the step a stop ends skips its weight sync (the engine shuts down): its row has no sync/* metrics
    differing = {
        (step, k): (v, chain[step].get(k))
        for step, want in base.items()
        for k, v in want.items()
        if not is_timing(k)
        and chain[step].get(k) != v
        and not (k.startswith("sync/") and k not in chain[step])
    }
    fault_figures("signals", ok if not differing else 0, len(attempts) - 1, "saved and resumed exactly")
    phases = {a["point"]["phase"] for a in attempts[:-1]}
    assert phases == set(PHASES), phases
    assert not failures, failures
    assert not differing, sorted(differing.items())[:10]


if __name__ == "__main__":
    main(sys.argv[1])
