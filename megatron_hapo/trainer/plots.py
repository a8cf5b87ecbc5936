"""Curves of a run's metrics.jsonl as PNG (the trainer writes ``<run_dir>/plots/metrics.png`` at the end of
a run; ``tools/plot_run.py`` draws any run directory).

:func:`plot_overview` is the figure of a run, eight panels against the RL step:

=========================  ==========================================================================
held-out accuracy          ``eval/<benchmark>/avg@k`` (the periodic evaluator; step 0 = before training)
training reward            ``reward/mean`` (shaped score)
training accuracy          ``dynamic_sampling/raw_acc_mean`` (every generated response) or ``acc/mean``
response length            ``response_length/mean`` (tokens)
token entropy              ``entropy/mean`` and the entropy at the pivot quantile ``exp(entropy/pivot)``
                           (the pivot is a quantile of log-entropy) in nats
sampled temperature        the range ``rollout/temperature_min..max`` the sampler drew tokens at, and the
                           token mean ``rollout/temperature_mean``: one panel
clip fractions             ``actor/clip_frac_low`` / ``actor/clip_frac_high`` in % of tokens
time per stage             ``time/rollout_s``, ``time/old_policy_s``, ``time/update_s``, ``time/sync_s``
                           stacked (seconds per step)
=========================  ==========================================================================

Per-step values are noisy (a few dozen prompts per step): each curve is a centred moving average over
``smooth`` steps drawn over the raw values, which stay visible but faint. :func:`plot_metrics` draws one
plain panel per metric key (``tools/plot_run.py --keys``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

# the plain per-key view of tools/plot_run.py --keys (and its --text table)
DEFAULT_KEYS = (
    "reward/mean", "acc/mean", "entropy/mean", "rollout/temperature_mean", "response_length/mean",
    "actor/pg_loss",
)  # fmt: skip
TIME_STAGES = (
    ("time/rollout_s", "rollout"),
    ("time/old_policy_s", "old-policy pass"),
    ("time/update_s", "policy update"),
    ("time/sync_s", "weight sync"),
)
EVAL_PREFIX = "eval/"


def load_rows(run_dir: str | Path) -> list[dict]:
    """The rows of ``run_dir/metrics.jsonl``; FileNotFoundError naming the file when there is none."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (pass the trainer's run directory)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def smooth(values: list[float], window: int) -> list[float]:
    """Centred moving average over ``window`` points (shrinking at the ends; NaNs skipped):
    ``s_i = mean(v_j for |j - i| <= window // 2)``."""
    half = max(window, 1) // 2
    out = []
    for i in range(len(values)):
        part = [v for v in values[max(0, i - half) : i + half + 1] if not math.isnan(v)]
        out.append(sum(part) / len(part) if part else math.nan)
    return out


def series(rows: list[dict], key: str, transform=None) -> tuple[list[int], list[float]]:
    """(steps, values) of the training rows (step >= 1) that have ``key``."""
    pts = [(r["step"], r[key]) for r in rows if r.get("step", 0) >= 1 and r.get(key) is not None]
    f = transform or (lambda v: v)
    return [s for s, _ in pts], [float(f(v)) for _, v in pts]


def eval_keys(rows: list[dict]) -> list[str]:
    """The held-out accuracy keys of the run (``eval/<benchmark>/avg@k``, not the evaluator's mean over
    benchmarks ``eval/avg@k``), sorted."""
    return sorted(
        {k for r in rows for k in r if k.startswith(EVAL_PREFIX) and k.count("/") == 2 and "/avg@" in k}
    )


def default_window(n_steps: int) -> int:
    """About a tenth of the run, odd, at least 1."""
    w = max(1, n_steps // 10)
    return w if w % 2 else w + 1


def _curve(ax, steps, values, window, label=None, color=None, style="-"):
    """Raw values faint, the moving average on top, in one colour."""
    if not steps:
        return
    (raw,) = ax.plot(steps, values, style, color=color, alpha=0.25, lw=0.8)
    ax.plot(steps, smooth(values, window), style, color=raw.get_color(), lw=1.8, label=label)


def plot_overview(rows: list[dict], out: str | Path, *, window: int | None = None, title: str = "") -> Path:
    """The eight-panel figure of the module docstring in ``out`` (PNG); panels without data say so.
    ValueError when ``rows`` has no training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps_all = [r["step"] for r in rows if r.get("step", 0) >= 1]
    if not steps_all:
        raise ValueError("no training step in the rows (metrics.jsonl is empty or holds evaluations only)")
    w = window or default_window(len(steps_all))
    fig, axes = plt.subplots(4, 2, figsize=(11, 11), sharex=True)
    ax = axes.ravel()

    def no_data(a, what: str) -> None:
        a.text(0.5, 0.5, f"not in metrics.jsonl: {what}", ha="center", va="center", transform=a.transAxes)

    # held-out accuracy: few points, drawn as they are
    keys = eval_keys(rows)
    for key in keys:
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        ax[0].plot([s for s, _ in pts], [v for _, v in pts], "o-", label=key[len(EVAL_PREFIX) :])
    if keys:
        ax[0].legend(fontsize=7)
    else:
        no_data(ax[0], "eval/*/avg@k\n(held-out evaluation: set eval.benchmarks)")
    ax[0].set_title("held-out accuracy (avg@k, step 0 = before RL)")
    ax[0].set_ylabel("accuracy")

    _curve(ax[1], *series(rows, "reward/mean"), w)
    ax[1].set_title("training reward (mean shaped score)")
    ax[1].set_ylabel("reward")

    acc_key = (
        "dynamic_sampling/raw_acc_mean"
        if any("dynamic_sampling/raw_acc_mean" in r for r in rows)
        else "acc/mean"
    )
    _curve(ax[2], *series(rows, acc_key), w)
    ax[2].set_title(f"training accuracy ({acc_key})")
    ax[2].set_ylabel("accuracy")

    _curve(ax[3], *series(rows, "response_length/mean"), w, label="mean")
    ax[3].set_title("response length")
    ax[3].set_ylabel("tokens")

    _curve(ax[4], *series(rows, "entropy/mean"), w, label="mean over tokens")
    _curve(ax[4], *series(rows, "entropy/pivot", math.exp), w, label="at the pivot quantile", style="--")
    ax[4].set_title("token entropy (old policy)")
    ax[4].set_ylabel("entropy (nats)")
    ax[4].legend(fontsize=7)

    s_min, t_min = series(rows, "rollout/temperature_min")
    s_max, t_max = series(rows, "rollout/temperature_max")
    if s_min and s_min == s_max:
        ax[5].fill_between(s_min, t_min, t_max, alpha=0.2, label="min..max over tokens")
        _curve(ax[5], *series(rows, "rollout/temperature_mean"), w, label="token mean")
        ax[5].legend(fontsize=7)
    else:
        no_data(ax[5], "rollout/temperature_min/max")
    ax[5].set_title("temperature the sampler drew tokens at")
    ax[5].set_ylabel("temperature")

    pct = lambda v: 100.0 * v  # noqa: E731
    _curve(ax[6], *series(rows, "actor/clip_frac_low", pct), w, label="low (ratio < 1 - eps_low)")
    _curve(ax[6], *series(rows, "actor/clip_frac_high", pct), w, label="high (ratio > 1 + eps_high)")
    ax[6].set_title("clipped tokens")
    ax[6].set_ylabel("% of tokens")
    ax[6].legend(fontsize=7)

    stages = [(series(rows, k), label) for k, label in TIME_STAGES if any(k in r for r in rows)]
    if stages and all(s == stages[0][0][0] for (s, _), _ in stages):
        ax[7].stackplot(
            stages[0][0][0], *[v for (_, v), _ in stages], labels=[lab for _, lab in stages], alpha=0.7
        )
        ax[7].legend(fontsize=7, loc="upper left")
    else:
        no_data(ax[7], "time/* stages")
    ax[7].set_title("time per step by stage")
    ax[7].set_ylabel("seconds")

    for a in (ax[0], ax[2]):  # accuracies on their whole range: a gain reads at its true size
        a.set_ylim(-0.02, 1.02)
    for a in ax:
        a.grid(alpha=0.3)
    for a in axes[-1]:
        a.set_xlabel("RL step")
    fig.suptitle(title or f"smoothed over {w} steps (raw values faint)", fontsize=10)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


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
