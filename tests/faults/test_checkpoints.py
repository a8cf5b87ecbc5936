"""Fault injection, checkpoints: SIGKILL during a save (repeated until it lands mid-save at least 3 times),
truncated and corrupted newest checkpoints, and the run-directory checks that come before any engine.

The checkpoints are real (Megatron distributed checkpoint of the tiny policy, written by
``trainer.checkpoint.save``) and written by a saver process (``python -m tests.faults.test_checkpoints
DIR MODEL``, ``main`` below): it resumes from the newest good checkpoint (printing which one and a
parameter value that identifies the step it holds), then saves step after step, each save stamped into
the model's first parameter, until it is killed. No SGLang engine is needed for any of it.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.torchrun_utils import REPO_ROOT

pytestmark = pytest.mark.slow

CONFIG = "examples/configs/tiny_cpu.yaml"
MID_SAVE_KILLS = 3


# -- the saver (runs in its own process) ---------------------------------------------------------------
def main(directory: str, model: str, max_steps: int = 10**6) -> None:
    import megatron_hapo.parallel as hp
    from megatron_hapo.config import load_config
    from megatron_hapo.trainer import checkpoint
    from megatron_hapo.trainer.policy import Policy

    cfg = load_config(CONFIG, [f"model.hf_path={model}"], world_size=1)
    hp.init_distributed()
    hp.initialize_model_parallel(1, 1, 1)
    with hp.device_mode():
        policy = Policy(cfg, optimizer_steps=100)
        first = next(policy.model.module.parameters())
        path = checkpoint.select("auto", directory)  # names and skips bad ones (warnings on stderr)
        step = 0
        if path is not None:
            step = checkpoint.load(policy, path)["step"]
        print(f"loaded {step} stamp {float(first.data.flatten()[0]):.1f}", flush=True)
        while step < max_steps:
            step += 1
            first.data.flatten()[0] = float(step)  # the step this checkpoint holds, readable after a load
            print(f"saving {step}", flush=True)
            t0 = time.perf_counter()
            checkpoint.save(policy, directory, step, {"note": "saver"}, keep_last=2)
            print(f"saved {step} in {time.perf_counter() - t0:.3f} s", flush=True)


def _saver(directory: Path, model: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCHDYNAMO_DISABLE="1", PYTHONPATH=str(REPO_ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "tests.faults.test_checkpoints", str(directory), str(model), *extra],
        cwd=REPO_ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def _loaded(line: str) -> tuple[int, float]:
    m = re.fullmatch(r"loaded (\d+) stamp (-?[\d.]+)", line.strip())
    assert m, line
    return int(m.group(1)), float(m.group(2))


# -- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from megatron_hapo.trainer.tiny_model import make_demo_model

    return make_demo_model(tmp_path_factory.mktemp("policy"))


@pytest.fixture(scope="module")
def two_checkpoints(model, tmp_path_factory) -> Path:
    """A directory with real checkpoints step_1 and step_2 (copied by each test that damages it)."""
    directory = tmp_path_factory.mktemp("ckpts")
    proc = _saver(directory, model, "2")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-4000:]
    return directory


# -- crashes ------------------------------------------------------------------------------------------
def test_sigkill_mid_save_keeps_the_previous_checkpoint_loadable_and_used(model, tmp_path, fault_figures):
    from megatron_hapo.trainer.checkpoint import list_checkpoints, verify

    rng = random.Random(5)
    directory, durations, mid_save, ok, tries = tmp_path / "ckpts", [0.2], 0, 0, 0
    while mid_save < MID_SAVE_KILLS:
        tries += 1
        assert tries <= 12, f"only {mid_save} of {tries - 1} kills landed mid-save"
        proc = _saver(directory, model)
        try:
            step, stamp = _loaded(proc.stdout.readline())
            newest = list_checkpoints(directory)
            # the previous kill left the newest good checkpoint, and the saver resumed from it
            assert step == (verify(newest[-1]) if newest else 0) and stamp == (step or stamp), (step, stamp)
            for line in proc.stdout:  # let a save or two finish, then kill at a random point of the next
                if m := re.match(r"saved (\d+) in ([\d.]+) s", line):
                    durations.append(float(m.group(2)))
                elif (m := re.match(r"saving (\d+)", line)) and int(m.group(1)) >= step + 2:
                    target = int(m.group(1))
                    time.sleep(rng.uniform(0.0, 1.2) * sum(durations[-4:]) / len(durations[-4:]))
                    proc.send_signal(signal.SIGKILL)
                    break
            rest = proc.communicate(timeout=60)[0]
        finally:
            if proc.poll() is None:
                proc.kill()
        landed = f"saved {target}" not in rest
        mid_save += landed
        # whatever the moment, every step_<N> left is whole (a killed save is only ever .tmp_step_<N>)
        for p in list_checkpoints(directory):
            verify(p)
        ok += landed
    # the last kill's survivor is loaded and used by a final saver run
    proc = _saver(directory, model, "0")
    out, err = proc.communicate(timeout=300)
    step, stamp = _loaded(out.splitlines()[0])
    assert proc.returncode == 0 and step == stamp, err[-3000:]
    fault_figures("crashes", ok, mid_save, "SIGKILLs mid-save left the previous checkpoint loadable and used")


# -- corruption ---------------------------------------------------------------------------------------
def _truncate(ckpt: Path) -> str:
    shard = max((p for p in ckpt.rglob("*.distcp")), key=lambda p: p.stat().st_size)
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    return shard.name


def _flip(ckpt: Path) -> str:
    shard = max((p for p in ckpt.rglob("*.distcp")), key=lambda p: p.stat().st_size)
    with open(shard, "r+b") as f:
        f.seek(shard.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    return shard.name


def _bad_state(ckpt: Path) -> str:
    (ckpt / "trainer_state.json").write_text('{"step": 2, "sampler"')
    return "trainer_state.json"


def _no_manifest(ckpt: Path) -> str:
    (ckpt / "manifest.json").unlink()
    return "manifest.json"


@pytest.mark.parametrize("damage", [_truncate, _flip, _bad_state, _no_manifest], ids=lambda f: f.__name__[1:])
def test_a_bad_newest_checkpoint_is_named_and_the_one_before_is_used(
    damage, two_checkpoints, model, tmp_path, fault_figures, caplog
):
    import shutil

    from megatron_hapo.trainer.checkpoint import select

    directory = tmp_path / "ckpts"
    shutil.copytree(two_checkpoints, directory)
    what = damage(directory / "step_2")
    with caplog.at_level("WARNING"):
        chosen = select("auto", directory)
    assert chosen == directory / "step_1"
    warned = caplog.text
    assert "step_2" in warned and what in warned and "resuming from" in warned and "step_1" in warned, warned
    # and the fallback really loads: the saver resumes from step 1 (stamp 1), names step_2 as bad
    proc = _saver(directory, model, "0")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert _loaded(out.splitlines()[0]) == (1, 1.0)
    assert "step_2 is unusable" in err and what in err
    fault_figures("corruption", 1, 1, "damaged newest checkpoints named, the one before resumed")


def _train(*overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCHDYNAMO_DISABLE="1", PYTHONPATH=str(REPO_ROOT))
    cmd = [sys.executable, "-m", "megatron_hapo.trainer", "--config", CONFIG, *overrides]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_no_good_checkpoint_is_refused_before_the_engine_starts(two_checkpoints, model, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(two_checkpoints, run_dir / "checkpoints")
    for step in (1, 2):
        _flip(run_dir / "checkpoints" / f"step_{step}")
    proc = _train(f"model.hf_path={model}", f"trainer.run_dir={run_dir}", "checkpoint.resume=auto")
    assert proc.returncode != 0
    assert "no usable checkpoint in" in proc.stderr and "step_1" in proc.stderr and "step_2" in proc.stderr
    assert "starting in-process SGLang engine" not in proc.stderr and "sglang" not in proc.stderr.lower()


def test_resume_none_over_an_existing_run_is_refused_with_the_ways_forward(two_checkpoints, model, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(two_checkpoints, run_dir / "checkpoints")
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n")
    proc = _train(f"model.hf_path={model}", f"trainer.run_dir={run_dir}", "checkpoint.resume=none")
    assert proc.returncode != 0
    msg = proc.stderr
    assert "checkpoint.resume=none" in msg and str(run_dir) in msg, msg[-3000:]
    assert "checkpoint.resume=auto" in msg and "trainer.run_dir=" in msg  # the two ways forward
    assert "sglang" not in msg.lower()
    assert (run_dir / "checkpoints" / "step_2").is_dir()  # nothing was touched


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:]))
