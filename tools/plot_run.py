"""Plot a run's metrics: ``python tools/plot_run.py RUN_DIR [--keys reward/mean,entropy/mean] [--out FILE]``.

Reads ``RUN_DIR/metrics.jsonl`` (written by the trainer). Without ``--keys`` it draws the run's overview
(``megatron_hapo.trainer.plots.plot_overview``: held-out accuracy, reward, accuracy, response length,
entropy with the pivot quantile, the sampled temperature range, clip fractions, time per stage; smoothed
over ``--smooth`` steps with the raw values faint), the same figure the trainer writes at the end of a
run; with ``--keys`` one plain panel per key; with ``--text`` prints the columns as a table instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megatron_hapo.trainer.plots import DEFAULT_KEYS, load_rows, plot_metrics, plot_overview


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument(
        "--keys", help="comma-separated metric names: one plain panel each (default: the overview)"
    )
    p.add_argument("--smooth", type=int, help="moving-average window in steps (default: a tenth of the run)")
    p.add_argument("--out", type=Path, help="image file (default RUN_DIR/plots/metrics.png)")
    p.add_argument("--text", action="store_true", help="print a table instead of plotting")
    args = p.parse_args(argv)
    try:
        rows = load_rows(args.run_dir)
    except FileNotFoundError as e:
        sys.exit(f"plot_run: {e}")
    out = args.out or args.run_dir / "plots" / "metrics.png"
    if args.keys is None and not args.text:
        try:
            plot_overview(rows, out, window=args.smooth, title=str(args.run_dir))
        except ValueError as e:
            sys.exit(f"plot_run: {args.run_dir}/metrics.jsonl: {e}")
        print(f"plot_run: wrote {out}")
        return 0
    keys = [k for k in (args.keys or ",".join(DEFAULT_KEYS)).split(",") if k]
    unknown = [k for k in keys if all(k not in r for r in rows)]
    if unknown and args.keys is not None:
        sys.exit(
            f"plot_run: no metric {unknown} in {args.run_dir}/metrics.jsonl; have e.g. {sorted(rows[0])[:12]}"
        )
    keys = [k for k in keys if k not in unknown]
    if args.text:
        print("step " + " ".join(f"{k:>20}" for k in keys))
        for r in rows:
            print(f"{r['step']:>4} " + " ".join(f"{r.get(k, float('nan')):>20.4f}" for k in keys))
        return 0
    out = plot_metrics(rows, keys, out)
    print(f"plot_run: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
