"""After a resume every step appears once: rows newer than the checkpoint (the interrupted attempt's) are
dropped from metrics.jsonl and hidden in TensorBoard (issue 17, bug 6: steps [1, 2, 2, 3, 4])."""

from __future__ import annotations

import json

from megatron_hapo.config import load_config
from megatron_hapo.trainer.metrics import RunLogger, read_metrics

CONFIG = "examples/configs/tiny_cpu.yaml"


def _cfg(tensorboard: bool):
    return load_config(
        CONFIG, [f"logging.tensorboard={str(tensorboard).lower()}", "logging.plots=false", "logging.stdout_every=0"],
        world_size=1, check_env=False,
    )  # fmt: skip


def _tb_steps(run_dir) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return [e.step for e in acc.Scalars("reward/mean")]


def _attempt(run_dir, cfg, resume_step, steps):
    log = RunLogger(run_dir, cfg, lead=True, resume_step=resume_step)
    for s in steps:
        log.log(s, {"reward/mean": float(s)})
    log.close()


def test_resume_drops_the_rows_after_the_checkpoint_in_jsonl_and_tensorboard(tmp_path):
    cfg = _cfg(tensorboard=True)
    _attempt(tmp_path, cfg, 0, [0, 1, 2, 3])  # an eval row at step 0, then steps 1-3; checkpoint at 2
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "reward/me')  # and a row torn by a kill
    _attempt(tmp_path, cfg, 2, [3, 4])  # the resume from step 2 writes 3 and 4 again
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert _tb_steps(tmp_path) == [0, 1, 2, 3, 4]


def test_a_fresh_start_over_an_attempt_without_checkpoint_drops_its_rows(tmp_path):
    cfg = _cfg(tensorboard=False)
    _attempt(tmp_path, cfg, 0, [0, 1])  # killed before its first checkpoint
    _attempt(tmp_path, cfg, 0, [0, 1, 2])
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [
        0,
        1,
        2,
    ]


def test_without_a_resume_step_rows_are_kept(tmp_path):
    cfg = _cfg(tensorboard=False)
    _attempt(tmp_path, cfg, None, [1, 2])
    _attempt(tmp_path, cfg, None, [3])
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]


def test_the_cpu_examples_continue_a_stopped_run_when_rerun():
    """Bug 5: the stop message says checkpoint.resume=auto continues; the shipped CPU configs use it."""
    for config in ("examples/configs/tiny_cpu.yaml", "examples/configs/cpu_demo.yaml"):
        assert load_config(config, world_size=1, check_env=False).checkpoint.resume == "auto", config
