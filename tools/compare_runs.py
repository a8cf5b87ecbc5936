"""Compare training runs grouped by method: ``python tools/compare_runs.py RUN_OR_STUDY_DIR... --out DIR``.

Each argument is a run directory (holding the trainer's ``metrics.jsonl``) or a directory searched for them
(e.g. a ``tools/run_study.py`` study). Runs are grouped by method: ``trainer.experiment_name`` of the run's
``resolved_config.yaml`` (``--group-by dir`` uses the parent directory name of a ``seedN`` run directory,
else the directory name). Per method it reports the mean and the spread over seeds of

- reward and accuracy (``reward/mean``; ``dynamic_sampling/raw_acc_mean`` where present, i.e. over every
  generated response, else ``acc/mean``),
- token entropy: the batch mean (``entropy/mean``) and the entropy at the pivot quantile
  (``exp(entropy/pivot)``: the pivot is a quantile of log-entropy),
- response length (``response_length/mean``),
- the per-token temperature range (``temperature/min``, ``temperature/max``: the temperatures the ratio's
  log-probs use, i.e. the sampler's with ``algorithm.ratio_temperature=per_token``, the base T with ``base``),
- clip fractions (``actor/clip_frac`` and its ``_low`` / ``_high`` parts), rollout batches per step
  (``dynamic_sampling/gen_batches``), held-out accuracy (``eval/<benchmark>/avg@k`` rows),

and writes ``DIR/table.md`` (two tables: the last ``--window`` steps, and the whole run),
``DIR/summary.json`` (the same numbers) and ``DIR/curves.png`` (one panel per metric, mean over seeds
with a +-1 std band, smoothed over ``--smooth`` steps); each ``--figure NAME=m1,m2`` adds ``DIR/NAME.png``
with only those methods.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

# (column, metric keys (the first one a row has wins), transform, required). Required: every training row
# has one of the keys. "accuracy" is over every generated response: with DAPO's dynamic sampling the
# training batch keeps only mixed groups, so its acc/mean is not comparable with the other methods'.
METRICS: list[tuple[str, tuple[str, ...], str, bool]] = [
    ("reward", ("reward/mean",), "id", True),
    ("accuracy", ("dynamic_sampling/raw_acc_mean", "acc/mean"), "id", True),
    ("entropy mean", ("entropy/mean",), "id", True),
    ("entropy q-pivot", ("entropy/pivot",), "exp", False),
    ("response length", ("response_length/mean",), "id", True),
    ("temperature min", ("temperature/min",), "id", False),
    ("temperature max", ("temperature/max",), "id", False),
    ("clip frac", ("actor/clip_frac",), "id", False),
    ("clip frac low", ("actor/clip_frac_low",), "id", False),
    ("clip frac high", ("actor/clip_frac_high",), "id", False),
    ("gen batches", ("dynamic_sampling/gen_batches",), "id", False),  # rollout batches per step (DAPO > 1)
]
EVAL_PREFIX = (
    "eval/"  # eval/<benchmark>/avg@k: held-out accuracy, logged on some steps only (step 0 = before)
)
PANELS = [
    ("held-out accuracy avg@k (every evaluation)", ["eval"]),
    ("training reward (shaped; DAPO: the groups dynamic sampling kept)", ["reward"]),
    ("training accuracy (all generated responses)", ["accuracy"]),
    ("token entropy: batch mean (nats)", ["entropy mean"]),
    ("token entropy at the pivot quantile (nats)", ["entropy q-pivot"]),
    ("response length (tokens)", ["response length"]),
    ("per-token temperature of the ratio: max (solid), min (dashed)", ["temperature max", "temperature min"]),
    ("clip fraction: low (dashed), high (solid)", ["clip frac high", "clip frac low"]),
]


class CompareError(Exception):
    """A run directory or its metrics cannot be used (the message names the file)."""


@dataclass
class Run:
    path: Path
    method: str
    series: dict[str, list[float]]  # column -> value per training step (NaN where the step lacks the key)
    steps: list[int]
    evals: dict[int, float] = field(default_factory=dict)  # step -> held-out avg@k (0 = before training)


@dataclass
class Method:
    name: str
    runs: list[Run] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- loading


def find_run_dirs(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if not p.exists():
            raise CompareError(f"{p}: no such file or directory")
        if p.is_file():
            p = p.parent if p.name == "metrics.jsonl" else p
        if (p / "metrics.jsonl").is_file():
            out.append(p)
            continue
        found = sorted(m.parent for m in p.rglob("metrics.jsonl"))
        if not found:
            raise CompareError(f"{p}: no metrics.jsonl in it or below it (pass trainer run directories)")
        out.extend(found)
    return sorted(dict.fromkeys(out))


def read_rows(path: Path) -> list[dict]:
    metrics = path / "metrics.jsonl"
    rows = []
    for n, line in enumerate(metrics.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise CompareError(f"{metrics}:{n}: not a JSON line ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise CompareError(f"{metrics}:{n}: expected an object with an integer 'step'")
        rows.append(row)
    if not rows:
        raise CompareError(f"{metrics}: empty (the run logged no step)")
    return sorted(rows, key=lambda r: r["step"])


def method_of(path: Path, group_by: str) -> str:
    if group_by == "config":
        cfg = path / "resolved_config.yaml"
        if cfg.is_file():
            import yaml

            data = yaml.safe_load(cfg.read_text()) or {}
            name = (data.get("trainer") or {}).get("experiment_name")
            if name:
                return str(name)
    if path.name.startswith("seed") and path.name[4:].isdigit():
        return path.parent.name
    return path.name


def _number(path: Path, step: int, key: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise CompareError(f"{path / 'metrics.jsonl'}: step {step}: '{key}' = {v!r} is not a number")
    return float(v)


def load_run(path: Path, group_by: str) -> Run:
    """Training rows (any key outside ``eval/``) give the per-step series; ``eval/*/avg@*`` keys (averaged
    over benchmarks) give the held-out accuracy at the steps that evaluated."""
    rows = read_rows(path)
    train = [r for r in rows if any(k != "step" and not k.startswith(EVAL_PREFIX) for k in r)]
    if not train:
        raise CompareError(f"{path / 'metrics.jsonl'}: no training step (only evaluation rows)")
    series: dict[str, list[float]] = {}
    for column, keys, transform, required in METRICS:
        values = []
        for row in train:
            key = next((k for k in keys if row.get(k) is not None), None)
            if key is None:
                if required:
                    raise CompareError(
                        f"{path / 'metrics.jsonl'}: step {row['step']} has no '{keys[-1]}' "
                        f"(it has {sorted(row)[:6]}...)"
                    )
                values.append(math.nan)
                continue
            v = _number(path, row["step"], key, row[key])
            values.append(math.exp(v) if transform == "exp" else v)
        series[column] = values
    evals: dict[int, float] = {}
    for row in rows:
        step = row["step"]
        overall = [k for k in row if k.startswith(EVAL_PREFIX + "avg@")]  # eval/avg@k: over benchmarks
        per_benchmark = [k for k in row if k.startswith(EVAL_PREFIX) and k.count("/") == 2 and "/avg@" in k]
        keys = overall or per_benchmark
        if keys:
            evals[step] = sum(_number(path, step, k, row[k]) for k in keys) / len(keys)
    return Run(path, method_of(path, group_by), series, [r["step"] for r in train], evals)


def group(runs: list[Run]) -> dict[str, Method]:
    methods: dict[str, Method] = {}
    for run in runs:
        methods.setdefault(run.method, Method(run.method)).runs.append(run)
    return methods


# ------------------------------------------------------------------------------------------- statistics


def nanmean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else math.nan


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for one value) of the non-NaN values."""
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return math.nan, math.nan
    m = sum(xs) / len(xs)
    if len(xs) == 1:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def summarize(methods: dict[str, Method], window: int) -> dict:
    """{method: {"seeds", "steps", "final": {column: [mean, std]}, "all": {...}}}: per run the mean over its
    last ``window`` training steps (final) or all of them (all), then mean and std over the method's runs.
    Held-out accuracy ("eval"): final = the last evaluation, all = the mean over evaluations after step 0,
    plus "eval best" (the maximum over the curve, the paper's protocol) and "eval start" (step 0)."""
    out = {}
    for name, method in methods.items():
        lengths = sorted({len(r.steps) for r in method.runs})
        entry = {"seeds": len(method.runs), "steps": lengths, "final": {}, "all": {}}
        for column, *_ in METRICS:
            final = [nanmean(r.series[column][-window:]) for r in method.runs]
            whole = [nanmean(r.series[column]) for r in method.runs]
            entry["final"][column] = list(mean_std(final))
            entry["all"][column] = list(mean_std(whole))
        nan = math.nan
        ev = [r.evals for r in method.runs]
        entry["final"]["eval"] = list(mean_std([e[max(e)] if e else nan for e in ev]))
        entry["final"]["eval best"] = list(mean_std([max(e.values()) if e else nan for e in ev]))
        entry["all"]["eval"] = list(mean_std([nanmean([v for k, v in e.items() if k > 0]) for e in ev]))
        entry["all"]["eval start"] = list(mean_std([e.get(0, nan) for e in ev]))
        out[name] = entry
    return out


def fmt(ms: list[float], digits: int = 3) -> str:
    m, s = ms
    if math.isnan(m):
        return "-"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


TABLE_COLUMNS = {
    "final": [("eval", "held-out avg@k (last eval)", 3), ("eval best", "held-out avg@k (best eval)", 3)],
    "all": [
        ("eval start", "held-out avg@k (step 0)", 3),
        ("eval", "held-out avg@k (mean of evals)", 3),
        ("gen batches", "rollout batches / step", 2),
    ],
}
COMMON_COLUMNS = [
    ("reward", "train reward", 3), ("accuracy", "train accuracy", 3), ("entropy mean", "entropy mean", 3),
    ("entropy q-pivot", "entropy at pivot q", 3), ("response length", "response length", 2),
    ("temperature min", "T min", 3), ("temperature max", "T max", 3), ("clip frac low", "clip frac low", 4),
    ("clip frac high", "clip frac high", 4),
]  # fmt: skip


def markdown(summary: dict, window: int, order: list[str]) -> str:
    lines = []
    for part, title in (("final", f"last {window} steps"), ("all", "whole run (mean over all steps)")):
        cols = TABLE_COLUMNS[part] + COMMON_COLUMNS
        if all(math.isnan(summary[n][part][c][0]) for n in order for c, _, _ in TABLE_COLUMNS[part]):
            cols = COMMON_COLUMNS  # no run evaluated
        lines += [
            f"**{title}** (mean ± std over seeds of each run's value)",
            "",
            "| method | seeds | steps | " + " | ".join(h for _, h, _ in cols) + " |",
            "|---|---|---|" + "---|" * len(cols),
        ]
        for name in order:
            e = summary[name]
            steps = "/".join(str(s) for s in e["steps"])
            cells = " | ".join(fmt(e[part][c], d) for c, _, d in cols)
            lines.append(f"| {name} | {e['seeds']} | {steps} | {cells} |")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- plots


def smooth(xs: list[float], k: int) -> list[float]:
    if k <= 1:
        return xs
    return [nanmean(xs[max(0, i - k + 1) : i + 1]) for i in range(len(xs))]


def _band(ax, xs, curves, color, style, label) -> None:
    """Mean over seeds (``curves``: one list per run, aligned with ``xs``) with a +-1 std band."""
    stats = [mean_std([c[t] for c in curves]) for t in range(len(xs))]
    mean = [m for m, _ in stats]
    if all(math.isnan(m) for m in mean):
        return
    ax.plot(xs, mean, style, color=color, lw=1.4, label=label, marker="o" if len(xs) < 15 else None, ms=3)
    if style == "-" and len(curves) > 1:
        lo, hi = [m - sd for m, sd in stats], [m + sd for m, sd in stats]
        ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0)


def plot(methods: dict[str, Method], order: list[str], out: Path, smooth_k: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = 2
    nrows = math.ceil(len(PANELS) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(11, 2.5 * nrows + 0.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (label, columns) in zip(axes.flat, PANELS):
        for i, name in enumerate(order):
            runs, color = methods[name].runs, colors[i % len(colors)]
            if columns == ["eval"]:
                shared = sorted(set.intersection(*(set(r.evals) for r in runs)))
                _band(ax, shared, [[r.evals[s] for s in shared] for r in runs], color, "-", name)
                continue
            n = min(len(r.steps) for r in runs)
            for j, column in enumerate(columns):
                curves = [smooth(r.series[column][:n], smooth_k) for r in runs]
                _band(ax, runs[0].steps[:n], curves, color, "-" if j == 0 else "--", name if j == 0 else None)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        ax.set_xlabel("step", fontsize=8)
    for ax in axes.flat[len(PANELS) :]:
        ax.axis("off")
    handles, labels = {}, []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    labels = [m for m in order if m in handles]
    fig.legend([handles[m] for m in labels], labels, loc="lower center", ncol=min(len(labels), 5), fontsize=9)
    fig.suptitle(f"{title}: mean over seeds, band +-1 std, training curves smoothed over {smooth_k} steps",
                 fontsize=10)  # fmt: skip
    fig.tight_layout(rect=(0, 0.05 if len(labels) <= 5 else 0.08, 1, 0.97))
    save_small_png(fig, out)
    plt.close(fig)


def save_small_png(fig, out: Path, dpi: int = 80) -> None:
    """PNG with a 256-colour palette (about a third of the size of matplotlib's RGBA, small enough to commit)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    buf.seek(0)
    with Image.open(buf) as im:
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


# ------------------------------------------------------------------------------------------- main


def parse_figures(specs: list[str], methods: dict[str, Method]) -> dict[str, list[str]]:
    figures = {}
    for spec in specs:
        name, sep, names = spec.partition("=")
        chosen = [m for m in names.split(",") if m]
        if not sep or not name or not chosen:
            raise CompareError(f"--figure {spec!r}: expected NAME=method1,method2")
        unknown = [m for m in chosen if m not in methods]
        if unknown:
            raise CompareError(f"--figure {name}: no runs of {unknown}; methods found: {sorted(methods)}")
        figures[name] = chosen
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", type=Path, help="run directories or directories holding them")
    p.add_argument("--out", type=Path, required=True, help="output directory (created)")
    p.add_argument("--window", type=int, default=10, help="final window in steps (default 10)")
    p.add_argument("--smooth", type=int, default=5, help="moving average over this many steps in plots")
    p.add_argument("--group-by", choices=["config", "dir"], default="config")
    p.add_argument("--order", help="comma-separated method order (default: sorted)")
    p.add_argument("--figure", action="append", default=[], metavar="NAME=m1,m2", help="extra plot")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    if args.window < 1:
        p.error("--window must be >= 1")
    try:
        runs = [load_run(d, args.group_by) for d in find_run_dirs(args.paths)]
        methods = group(runs)
        order = sorted(methods)
        if args.order:
            wanted = [m for m in args.order.split(",") if m]
            unknown = [m for m in wanted if m not in methods]
            if unknown:
                raise CompareError(f"--order: no runs of {unknown}; methods found: {sorted(methods)}")
            order = wanted + [m for m in order if m not in wanted]
        figures = parse_figures(args.figure, methods)
    except CompareError as e:
        print(f"compare_runs: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    summary = summarize(methods, args.window)
    table = markdown(summary, args.window, order)
    (args.out / "table.md").write_text(table)
    (args.out / "summary.json").write_text(json.dumps({"window": args.window, "methods": summary}, indent=1))
    print(table)
    if not args.no_plots:
        plot(methods, order, args.out / "curves.png", args.smooth, "all methods")
        for name, chosen in figures.items():
            plot(methods, chosen, args.out / f"{name}.png", args.smooth, name)
    print(f"compare_runs: {len(runs)} runs, {len(methods)} methods -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
