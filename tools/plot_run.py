"""Plot a run's metrics: ``python tools/plot_run.py RUN_DIR [--keys reward/mean,entropy/mean] [--out FILE]``.

Reads ``RUN_DIR/metrics.jsonl`` (written by the trainer) and draws one panel per key against the step;
without matplotlib, or with ``--text``, prints the columns as a table instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_KEYS = "reward/mean,acc/mean,entropy/mean,temperature/mean,response_length/mean,actor/pg_loss"


def load(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        sys.exit(f"plot_run: {path} not found (pass the trainer's run directory)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--keys", default=DEFAULT_KEYS, help="comma-separated metric names")
    p.add_argument("--out", type=Path, help="image file (default RUN_DIR/metrics.png)")
    p.add_argument("--text", action="store_true", help="print a table instead of plotting")
    args = p.parse_args(argv)
    rows = load(args.run_dir)
    keys = [k for k in args.keys.split(",") if k]
    unknown = [k for k in keys if all(k not in r for r in rows)]
    if unknown:
        sys.exit(
            f"plot_run: no metric {unknown} in {args.run_dir}/metrics.jsonl; have e.g. {sorted(rows[0])[:12]}"
        )
    if args.text:
        print("step " + " ".join(f"{k:>20}" for k in keys))
        for r in rows:
            print(f"{r['step']:>4} " + " ".join(f"{r.get(k, float('nan')):>20.4f}" for k in keys))
        return 0
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.2 * len(keys)), sharex=True, squeeze=False)
    steps = [r["step"] for r in rows]
    for ax, key in zip(axes[:, 0], keys):
        ax.plot(steps, [r.get(key) for r in rows], marker=".")
        ax.set_ylabel(key, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    out = args.out or args.run_dir / "metrics.png"
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"plot_run: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
