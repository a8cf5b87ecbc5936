"""tools/run_study.py scheduling: every job runs once, two at a time, never two runs of one seed together."""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load_tool():
    spec = importlib.util.spec_from_file_location("run_study", ROOT / "tools" / "run_study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_study"] = module
    spec.loader.exec_module(module)
    return module


rs = _load_tool()


def test_run_all_never_runs_one_seed_twice_at_once():
    lock, running, overlaps, peak = threading.Lock(), [], [], [0]

    def fn(method, seed):
        with lock:
            if seed in running:
                overlaps.append((method, seed))
            running.append(seed)
            peak[0] = max(peak[0], len(running))
        time.sleep(0.02)
        with lock:
            running.remove(seed)
        if method == "bad":
            raise RuntimeError("boom")
        return method, seed, "ok", 0.0

    jobs = [(m, s) for m in ["a", "b", "bad", "c"] for s in (1, 2, 3)]
    results = rs.run_all(jobs, 2, fn)
    assert [(m, s) for m, s, _, _ in results] == jobs  # in job order, each once
    assert overlaps == [] and peak[0] == 2
    assert [r[2] for r in results if r[0] == "bad"] == ["FAILED RuntimeError('boom')"] * 3


def test_completed_steps_reads_the_last_step(tmp_path):
    assert rs.completed_steps(tmp_path) == 0
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "eval/avg@8": 0.1}\n{"step": 1}\n{"step": 2}\n{"st')
    assert rs.completed_steps(tmp_path) == 2  # a torn last line is ignored


def test_every_method_has_a_config():
    assert all((rs.EXPERIMENTS / f"{m}.yaml").is_file() for m in rs.METHODS)
    for group in rs.FIGURES.values():
        assert set(group) <= set(rs.METHODS)


def test_method_configs_differ_only_in_the_algorithm():
    import dataclasses

    from megatron_hapo.config import load_config

    def flat(cfg) -> dict:
        out = {}
        for section, value in dataclasses.asdict(cfg).items():
            for key, v in value.items() if isinstance(value, dict) else [("", value)]:
                out[f"{section}.{key}"] = v
        return out

    base = flat(load_config(rs.EXPERIMENTS / "hapo.yaml", world_size=1, check_env=False))
    for method in rs.METHODS:
        cfg = load_config(rs.EXPERIMENTS / f"{method}.yaml", world_size=1, check_env=False)
        assert cfg.trainer.experiment_name == method  # what compare_runs groups by
        changed = {k for k, v in flat(cfg).items() if base[k] != v}
        derived = {"trainer.experiment_name", "trainer.run_dir", "checkpoint.dir"}  # run_dir names the method
        assert {k for k in changed if not k.startswith("algorithm.")} <= derived, (method, changed)
    released = load_config(rs.EXPERIMENTS / "hapo_released.yaml", world_size=1, check_env=False)
    assert released.algorithm.loss.entropy_mode == "released"
    assert (
        load_config(rs.EXPERIMENTS / "dapo.yaml", world_size=1, check_env=False).algorithm.loss.clip_high
        == 0.28
    )
