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
def _policy(model: str):
    import megatron_hapo.parallel as hp
    from megatron_hapo.config import load_config
    from megatron_hapo.trainer.policy import Policy

    cfg = load_config(CONFIG, [f"model.hf_path={model}"], world_size=1)
    hp.init_distributed()
    hp.initialize_model_parallel(1, 1, 1)
    return Policy(cfg, optimizer_steps=100)


def _resume(policy, directory: str) -> int:
    """Load the newest good checkpoint of ``directory`` (bad ones are named on stderr); print its step and
    the stamp it holds."""
    from megatron_hapo.trainer import checkpoint

    path = checkpoint.select("auto", directory)
    step = checkpoint.load(policy, path)["step"] if path is not None else 0
    stamp = float(next(policy.model.module.parameters()).data.flatten()[0])
    print(f"loaded {step} stamp {stamp:.1f}", flush=True)
    return step


def save_until_killed(directory: str, model: str, max_steps: int = 10**6) -> None:
    """Resume from ``directory``, then save step after step (each stamped into the first parameter)."""
    import megatron_hapo.parallel as hp
    from megatron_hapo.trainer import checkpoint

    with hp.device_mode():
        policy = _policy(model)
        if not checkpoint.list_checkpoints(directory):  # zero gradients: Adam gets the state a trainer's has
            policy.optimizer.step()
        step = _resume(policy, directory)
        first = next(policy.model.module.parameters())
        while step < max_steps:
            step += 1
            first.data.flatten()[0] = float(step)  # the step this checkpoint holds, readable after a load
            print(f"saving {step}", flush=True)
            t0 = time.perf_counter()
            checkpoint.save(policy, directory, step, {"note": "saver"}, keep_last=2)
            print(f"saved {step} in {time.perf_counter() - t0:.3f} s", flush=True)


def probe(model: str, *directories: str) -> None:
    """Resume from each directory in turn (one process, one Megatron start for all)."""
    import megatron_hapo.parallel as hp

    with hp.device_mode():
        policy = _policy(model)
        for d in directories:
            _resume(policy, d)


def _saver(directory: Path, model: Path, *extra: str) -> subprocess.Popen:
    return _start("save", str(directory), str(model), *extra)


def _start(*args: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCHDYNAMO_DISABLE="1", PYTHONPATH=str(REPO_ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "tests.faults.test_checkpoints", *args],
        cwd=REPO_ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def _loaded(line: str) -> tuple[int, float]:
    m = re.fullmatch(r"loaded (\d+) stamp (-?[\d.]+)", line.strip())
    assert m, line
    return int(m.group(1)), float(m.group(2))


# -- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from megatron_hapo.demo.policy import make_demo_model

    # ~7M parameters (85 MB with Adam's state): a save takes long enough for a kill to land inside it
    return make_demo_model(tmp_path_factory.mktemp("policy"), hidden_size=384, num_layers=4)


@pytest.fixture(scope="module")
def two_checkpoints(model, tmp_path_factory) -> Path:
    """A directory with real checkpoints step_1 and step_2 (copied by each test that damages it)."""
    directory = tmp_path_factory.mktemp("ckpts")
    proc = _saver(directory, model, "2")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-4000:]
    return directory


# -- crashes ------------------------------------------------------------------------------------------
# points of a save, in order: its directory exists, a shard is written, the trainer state is written (the
# manifest's read and fsync of every file come next), all before the rename that makes it a checkpoint
MILESTONES = {
    "started": lambda tmp: tmp.is_dir(),
    "shard written": lambda tmp: any(tmp.rglob("*.distcp")),
    "state written": lambda tmp: (tmp / "trainer_state.json").is_file(),
}


def _kill_at(proc: subprocess.Popen, tmp: Path, milestone: str) -> None:
    reached, deadline = MILESTONES[milestone], time.monotonic() + 60
    while not reached(tmp) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.0005)
    proc.send_signal(signal.SIGKILL)


def test_sigkill_mid_save_keeps_the_previous_checkpoint_loadable_and_used(model, tmp_path, fault_figures):
    from megatron_hapo.trainer.checkpoint import list_checkpoints, verify

    rng = random.Random(5)
    directory, mid_save, tries = tmp_path / "ckpts", 0, 0
    while mid_save < MID_SAVE_KILLS:
        tries += 1
        assert tries <= 8, f"only {mid_save} of {tries - 1} kills landed mid-save"
        proc = _saver(directory, model)
        try:
            first_line = proc.stdout.readline()
            if not first_line:
                pytest.fail(f"the saver died: {proc.communicate()[1][-4000:]}")
            step, stamp = _loaded(first_line)
            newest = list_checkpoints(directory)
            # the previous kill left the newest good checkpoint, and the saver resumed from it
            assert step == (verify(newest[-1]) if newest else 0) and stamp == (step or stamp), (step, stamp)
            # a first save completes (there is a previous checkpoint to keep); then the saver is killed in
            # its next save at a seeded milestone of the save's progress, watched on disk (the kill follows
            # within a millisecond: no guess of how long a save takes on a loaded machine)
            target = step + (1 if step else 2)
            for line in proc.stdout:
                if line.strip() == f"saving {target}":
                    _kill_at(proc, directory / f".tmp_step_{target}", rng.choice(sorted(MILESTONES)))
                    break
            rest = proc.communicate(timeout=60)[0]
        finally:
            if proc.poll() is None:
                proc.kill()
        mid_save += f"saved {target}" not in rest
        # whatever the moment, every step_<N> left is whole (a killed save is only ever .tmp_step_<N>)
        for p in list_checkpoints(directory):
            verify(p)
    print(f"{mid_save} of {tries} SIGKILLs landed mid-save")
    # the last kill's survivor is loaded and used by a final saver run
    proc = _saver(directory, model, "0")
    out, err = proc.communicate(timeout=300)
    step, stamp = _loaded(out.splitlines()[0])
    assert proc.returncode == 0 and step == stamp, err[-3000:]
    fault_figures(
        "crashes", mid_save, mid_save, "SIGKILLs mid-save left the previous checkpoint loadable and used"
    )


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
    (ckpt / "trainer_state.json").write_text('{"step": 2, "data_order"')
    return "trainer_state.json"


def _no_manifest(ckpt: Path) -> str:
    (ckpt / "manifest.json").unlink()
    return "manifest.json"


DAMAGES = (_truncate, _flip, _bad_state, _no_manifest)


def test_a_bad_newest_checkpoint_is_named_and_the_one_before_is_used(
    two_checkpoints, model, tmp_path, fault_figures
):
    """Each damage to step_2 in its own copy: resume names step_2 and what is wrong with it, says it
    resumes from step_1, and really loads step_1 (one probe process loads all copies)."""
    import shutil

    directories, whats = [], []
    for damage in DAMAGES:
        directory = tmp_path / damage.__name__[1:]
        shutil.copytree(two_checkpoints, directory)
        whats.append(damage(directory / "step_2"))
        directories.append(directory)
    proc = _start("probe", str(model), *map(str, directories))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    loaded = [_loaded(line) for line in out.splitlines() if line.startswith("loaded")]
    warnings = [line for line in err.splitlines() if "is unusable" in line or "resuming from" in line]
    ok = 0
    for directory, what, got in zip(directories, whats, loaded, strict=True):
        named = any(str(directory / "step_2") in w and what in w for w in warnings)
        fell_back = any(f"resuming from {directory / 'step_1'}" in w for w in warnings)
        ok += got == (1, 1.0) and named and fell_back
    fault_figures("corruption", ok, len(DAMAGES), "damaged newest checkpoints named, the one before resumed")
    assert loaded == [(1, 1.0)] * len(DAMAGES), (loaded, err[-3000:])
    assert ok == len(DAMAGES), warnings


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


def test_resume_none_over_an_existing_run_is_refused_with_the_ways_forward(
    two_checkpoints, model, tmp_path, monkeypatch
):
    """Checked by ``plan_resume``, which ``train`` calls before ``build_run`` (so before any engine)."""
    import shutil

    import megatron_hapo.parallel as hp
    from megatron_hapo.config import load_config
    from megatron_hapo.trainer import manifest
    from megatron_hapo.trainer.setup import RunDirectoryInUse, plan_resume

    hp.init_distributed()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    fresh = load_config(
        CONFIG, [f"model.hf_path={model}", f"trainer.run_dir={run_dir}", "checkpoint.resume=none"]
    )
    assert plan_resume(fresh).checkpoint is None  # an empty run directory is fine
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n")
    with pytest.raises(RunDirectoryInUse) as refused:
        plan_resume(fresh)
    msg = str(refused.value)
    assert "checkpoint.resume=none" in msg and str(run_dir) in msg and "metrics.jsonl" in msg, msg
    assert "checkpoint.resume=auto" in msg and "trainer.run_dir=" in msg  # the two ways forward
    shutil.copytree(two_checkpoints, run_dir / "checkpoints")
    (run_dir / "metrics.jsonl").unlink()
    with pytest.raises(RunDirectoryInUse, match="step_2"):  # checkpoints alone hold a run too
        plan_resume(fresh)
    cont = load_config(
        CONFIG, [f"model.hf_path={model}", f"trainer.run_dir={run_dir}", "checkpoint.resume=auto"]
    )
    read = []
    digest = manifest.file_digest
    monkeypatch.setattr(manifest, "file_digest", lambda p, fsync=False: read.append(p) or digest(p, fsync))
    plan = plan_resume(cont)
    assert plan.checkpoint == run_dir / "checkpoints" / "step_2" and plan.step == 2
    listed = json.loads((plan.checkpoint / manifest.MANIFEST).read_text())["files"]
    assert sorted(read) == sorted(plan.checkpoint / f for f in listed)  # verified, every file read once


if __name__ == "__main__":
    if sys.argv[1] == "save":
        save_until_killed(sys.argv[2], sys.argv[3], *(int(a) for a in sys.argv[4:]))
    else:
        probe(*sys.argv[2:])
