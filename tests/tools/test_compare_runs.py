"""tools/compare_runs.py on synthetic run directories: grouping, the table's numbers, plots, clear errors."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_tool():
    spec = importlib.util.spec_from_file_location("compare_runs", ROOT / "tools" / "compare_runs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare_runs"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


cr = _load_tool()


def row(step: int, reward: float, acc: float, **extra) -> dict:
    r = {
        "step": step,
        "reward/mean": reward,
        "acc/mean": acc,
        "entropy/mean": 0.5,
        "entropy/pivot": math.log(0.25),
        "response_length/mean": 4.0 + step,
        "temperature/min": 0.9,
        "temperature/max": 1.1,
        "actor/clip_frac": 0.03,
        "actor/clip_frac_low": 0.02,
        "actor/clip_frac_high": 0.01,
    }
    r.update(extra)
    return r


def write_run(run_dir: Path, rows: list[dict], experiment: str | None = None) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if experiment is not None:
        (run_dir / "resolved_config.yaml").write_text(
            f"trainer:\n  experiment_name: {experiment}\n  seed: 1\n"
        )
    return run_dir


def study(tmp_path: Path) -> Path:
    """hapo: 2 seeds, 4 steps; rewards seed 1 = [0, 0, 1, 1], seed 2 = [0, 0, 0.5, 0.5]. dapo: 1 seed."""
    out = tmp_path / "study"
    write_run(
        out / "hapo" / "seed1",
        [{"step": 0, "eval/val/avg@8": 0.2}]
        + [row(s, r, a) for s, r, a in [(1, 0, 0.1), (2, 0, 0.1), (3, 1, 0.3), (4, 1, 0.5)]]
        + [{"step": 4, "eval/val/avg@8": 0.6}],
        "hapo",
    )
    write_run(
        out / "hapo" / "seed2",
        [row(s, r, a) for s, r, a in [(1, 0, 0.1), (2, 0, 0.1), (3, 0.5, 0.3), (4, 0.5, 0.3)]],
        "hapo",
    )
    # DAPO's training batch is filtered: the raw accuracy over everything generated must win over acc/mean
    write_run(
        out / "dapo" / "seed1",
        [
            row(s, -1.0, 0.5, **{"dynamic_sampling/raw_acc_mean": 0.25, "dynamic_sampling/gen_batches": g})
            for s, g in [(1, 1.0), (2, 2.0), (3, 2.0), (4, 3.0)]
        ],
        "dapo",
    )
    return out


def test_table_numbers_from_known_runs(tmp_path):
    out = tmp_path / "report"
    assert cr.main([str(study(tmp_path)), "--out", str(out), "--window", "2", "--no-plots"]) == 0
    summary = json.loads((out / "summary.json").read_text())["methods"]
    hapo, dapo = summary["hapo"], summary["dapo"]
    assert hapo["seeds"] == 2 and hapo["steps"] == [4] and dapo["seeds"] == 1
    # last 2 steps: seed means 1.0 and 0.5 -> mean 0.75, sample std sqrt(0.125)
    assert hapo["final"]["reward"] == pytest.approx([0.75, math.sqrt(0.125)])
    assert hapo["all"]["reward"] == pytest.approx([(0.5 + 0.25) / 2, math.sqrt(0.03125)])
    assert hapo["final"]["accuracy"] == pytest.approx([(0.4 + 0.3) / 2, math.sqrt(0.005)])
    assert dapo["final"]["accuracy"] == pytest.approx([0.25, 0.0])  # raw accuracy, not acc/mean 0.5
    assert hapo["final"]["entropy q-pivot"] == pytest.approx([0.25, 0.0])  # exp of the log-space pivot
    assert hapo["all"]["response length"] == pytest.approx([6.5, 0.0])
    # evaluation rows: only seed 1 evaluated (0.2 before, 0.6 after step 4)
    assert hapo["final"]["eval"] == pytest.approx([0.6, 0.0])
    assert hapo["all"]["eval start"] == pytest.approx([0.2, 0.0])
    assert math.isnan(dapo["final"]["eval"][0])
    assert dapo["all"]["gen batches"] == pytest.approx([2.0, 0.0])
    assert math.isnan(hapo["all"]["gen batches"][0])
    table = (out / "table.md").read_text()
    assert "| hapo | 2 | 4 | 0.600 ± 0.000 | 0.600 ± 0.000 | 0.750 ± 0.354 |" in table
    assert "| dapo | 1 | 4 | - | - | -1.000 ± 0.000 | 0.250 ± 0.000 |" in table


def test_eval_overall_key_wins_over_benchmarks(tmp_path):
    run = write_run(
        tmp_path / "run",
        [
            row(1, 0.0, 0.0),
            # the trainer's eval/avg@k is the mean over benchmarks; without it, the benchmarks' mean
            {"step": 1, "eval/avg@8": 0.5, "eval/a/avg@8": 0.2, "eval/b/avg@8": 0.8, "eval/a/pass@8": 1.0},
            {"step": 2, "eval/a/avg@8": 0.2, "eval/b/avg@8": 0.4, "eval/wall_s": 3.0},
            row(2, 0.0, 0.0),
        ],
    )
    assert cr.load_run(run, "config").evals == pytest.approx({1: 0.5, 2: 0.3})


def test_group_by_directory_and_order(tmp_path):
    out = tmp_path / "report"
    root = tmp_path / "runs"
    write_run(root / "a" / "seed1", [row(1, 0.0, 0.0)])  # no resolved_config.yaml: directory name
    write_run(root / "b_run", [row(1, 1.0, 1.0)])
    assert (
        cr.main([str(root / "a" / "seed1"), str(root / "b_run"), "--out", str(out), "--order", "b_run,a"])
        == 0
    )
    lines = [
        ln
        for ln in (out / "table.md").read_text().splitlines()
        if ln.startswith("| a ") or ln.startswith("| b_run ")
    ]
    assert [ln.split()[1] for ln in lines[:2]] == ["b_run", "a"]
    assert (out / "curves.png").stat().st_size > 10_000


def test_extra_figure(tmp_path):
    out = tmp_path / "report"
    assert cr.main([str(study(tmp_path)), "--out", str(out), "--figure", "main=dapo,hapo"]) == 0
    assert (out / "main.png").is_file() and (out / "curves.png").is_file()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty (the run logged no step)"),
        ('{"step": 1, "reward/mean": 0.1}\n{oops\n', "metrics.jsonl:2: not a JSON line"),
        ('{"reward/mean": 0.1}\n', "metrics.jsonl:1: expected an object with an integer 'step'"),
        (
            json.dumps({k: v for k, v in row(1, 0, 0).items() if k != "entropy/mean"}),
            "step 1 has no 'entropy/mean'",
        ),
        (json.dumps(row(1, "high", 0)), "step 1: 'reward/mean' = 'high' is not a number"),
        ('{"step": 0, "eval/val/avg@8": 0.5}\n', "no training step (only evaluation rows)"),
    ],
)
def test_bad_metrics_give_a_clear_error(tmp_path, capsys, content, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(content)
    assert cr.main([str(run), "--out", str(tmp_path / "report"), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert message in err and str(run) in err
    assert not (tmp_path / "report" / "table.md").exists()


def test_missing_runs_and_bad_options(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cr.main([str(empty), "--out", str(tmp_path / "r")]) == 2
    assert "no metrics.jsonl in it or below it" in capsys.readouterr().err
    assert cr.main([str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    s = study(tmp_path)
    assert cr.main([str(s), "--out", str(tmp_path / "r"), "--figure", "x=hapo,grpo"]) == 2
    assert "no runs of ['grpo']" in capsys.readouterr().err
    assert cr.main([str(s), "--out", str(tmp_path / "r"), "--figure", "nonsense"]) == 2
    assert "expected NAME=method1,method2" in capsys.readouterr().err
