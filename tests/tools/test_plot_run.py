"""tools/plot_run.py on a synthetic run directory."""

import json
import subprocess
import sys

from tests.torchrun_utils import REPO_ROOT


def _run(*args):
    return subprocess.run([sys.executable, "tools/plot_run.py", *map(str, args)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_plots_the_default_curves_and_names_a_missing_run(tmp_path):
    rows = [{"step": s, "reward/mean": -1 + s / 10, "entropy/mean": 0.5 - s / 100} for s in range(1, 11)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "plots" / "metrics.png").stat().st_size > 5_000
    text = _run(tmp_path, "--text", "--keys", "reward/mean")
    assert text.returncode == 0 and "-0.9000" in text.stdout
    missing = _run(tmp_path / "nope")
    assert missing.returncode != 0 and "metrics.jsonl not found" in missing.stderr
    unknown = _run(tmp_path, "--keys", "reward/mean,bogus/metric")
    assert unknown.returncode != 0 and "bogus/metric" in unknown.stderr


def test_overview_smooths_and_reports_a_run_without_training_steps(tmp_path):
    from megatron_hapo.trainer.plots import plot_overview, smooth

    assert smooth([0.0, 3.0, 0.0, 3.0, float("nan")], 3) == [1.5, 1.0, 2.0, 1.5, 3.0]
    rows = [{"step": 0, "eval/x/avg@4": 0.2}]
    try:
        plot_overview(rows, tmp_path / "m.png")
    except ValueError as e:
        assert "no training step" in str(e)
    else:
        raise AssertionError("an evaluation-only metrics.jsonl must be refused")
