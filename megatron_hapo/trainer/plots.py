"""Curves of a run's metrics.jsonl as PNG (the trainer writes ``<run_dir>/plots/metrics.png`` at the end of
a run; ``tools/plot_run.py`` draws any run directory)."""

from __future__ import annotations

import json
from pathlib import Path

# reward, accuracy, entropy, the two temperature views (ratio / sampler), response length, loss
DEFAULT_KEYS = (
    "reward/mean", "acc/mean", "entropy/mean", "temperature/mean", "rollout/temperature_mean",
    "response_length/mean", "actor/pg_loss",
)  # fmt: skip


def load_rows(run_dir: str | Path) -> list[dict]:
    """The rows of ``run_dir/metrics.jsonl``; FileNotFoundError naming the file when there is none."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (pass the trainer's run directory)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_metrics(rows: list[dict], keys: list[str], out: str | Path) -> Path:
    """One panel per key (metric against step) in ``out``; keys that no row has are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(k in r for r in rows)]
    if not keys:
        raise ValueError("none of the requested metrics is in the rows")
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.2 * len(keys)), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys, strict=True):
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        ax.plot([s for s, _ in points], [v for _, v in points], marker=".")
        ax.set_ylabel(key, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
