"""The reproduction study in one command (docs/reproduction.md): GRPO, DAPO, HAPO (signed and released) and
the four one-component-off ablations of HAPO, several seeds each, on the demo's reasoning task.

    python tools/run_study.py --quick --jobs 2   # GRPO, DAPO, HAPO (signed, released) x 3 seeds x 30 steps
    python tools/run_study.py --jobs 2           # all 8 methods x 3 seeds x 30 steps
    python tools/run_study.py --methods hapo,dapo --seeds 5 --steps 100 --jobs 2 --out runs/my_study

1. Builds the SFT-warmed demo policy once (``OUT/model``, as ``make demo`` does) and shares it.
2. Runs ``hapo-train --config examples/experiments/METHOD.yaml trainer.seed=S data.seed=S
   trainer.run_dir=OUT/METHOD/seedS`` for every method and seed, one process per run (``--jobs`` at a
   time, never two of one seed together), log in ``OUT/METHOD/seedS.log``. A run whose metrics.jsonl
   already has every step is skipped and an incomplete one starts afresh, so an interrupted study resumes.
3. Writes ``OUT/runs.tsv`` (wall time per run) and calls ``tools/compare_runs.py OUT --out OUT/report``.

Any ``key=value`` after ``--`` is passed to every run (e.g. ``-- data.train_batch_size=16``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from megatron_hapo.demo.recipes import TASKS

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "examples" / "experiments"
METHODS = [
    "grpo",
    "dapo",
    "hapo",
    "hapo_released",
    "hapo_no_temp",
    "hapo_no_tlga",
    "hapo_no_dar",
    "hapo_no_aac",
]
# held-out accuracy levels off by step 10-20 on this task; 40 steps fell back (docs/reproduction.md)
STEPS = 30
QUICK_METHODS = ["grpo", "dapo", "hapo", "hapo_released"]  # the paper's comparison, without the ablations
TASK = "reasoning"  # the demo task the study's configs (examples/experiments/_study.yaml) train on
FIGURES = {  # extra plots of tools/compare_runs.py
    "main": QUICK_METHODS,
    "ablations": ["hapo", "hapo_no_temp", "hapo_no_tlga", "hapo_no_dar", "hapo_no_aac"],
}


def completed_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(int(json.loads(line)["step"]))
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line of an interrupted run
    return max(steps, default=0)


def build_model(model_dir: Path) -> None:
    """The SFT-warmed demo policy (``make demo``'s recipe for TASK), built once and shared by every run."""
    from megatron_hapo.demo.recipes import build_policy

    t0 = time.perf_counter()
    build_policy(model_dir, ROOT, task=TASK)  # reused when the directory holds the same recipe
    print(f"[study] SFT-warmed demo policy -> {model_dir} ({time.perf_counter() - t0:.0f} s)", flush=True)


def run_one(method: str, seed: int, steps: int, out: Path, model_dir: Path, extra: list[str]) -> tuple:
    run_dir = out / method / f"seed{seed}"
    if completed_steps(run_dir) >= steps:
        return method, seed, "skipped (complete)", 0.0
    if run_dir.exists():  # an interrupted run: start afresh (the trainer appends to metrics.jsonl)
        shutil.rmtree(run_dir)
    cmd = [
        sys.executable, "-m", "megatron_hapo.trainer",
        "--config", str(EXPERIMENTS / f"{method}.yaml"),
        f"trainer.seed={seed}", f"data.seed={seed}", f"trainer.total_steps={steps}",
        f"trainer.run_dir={run_dir}", f"model.hf_path={model_dir}", "checkpoint.resume=none", *extra,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCHDYNAMO_DISABLE="1", **{TASKS[TASK][3]: str(model_dir)})
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(out / method / f"seed{seed}.log", "w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    status = "ok" if rc == 0 and completed_steps(run_dir) >= steps else f"FAILED rc={rc}"
    print(f"[study] {method:14s} seed {seed}: {status}, {wall:.0f} s", flush=True)
    return method, seed, status, wall


def run_all(jobs: list[tuple[str, int]], workers: int, fn) -> list[tuple]:
    """``fn(method, seed)`` for every job, ``workers`` at a time, never two runs of the same seed at once:
    the trainer seeds Python's global ``random`` with trainer.seed before it starts the engine, and SGLang
    draws its rendezvous port from that generator, so same-seed runs started together pick the same port
    and one dies with EADDRINUSE."""
    pending, running, results = list(jobs), set(), []
    cond = threading.Condition()

    def worker() -> None:
        while True:
            with cond:
                while pending and all(s in running for _, s in pending):
                    cond.wait()
                if not pending:
                    return
                job = next(j for j in pending if j[1] not in running)
                pending.remove(job)
                running.add(job[1])
            try:
                result = fn(*job)
            except Exception as e:  # noqa: BLE001  (report and go on with the other runs)
                result = (*job, f"FAILED {e!r}", 0.0)
            with cond:
                running.discard(job[1])
                results.append(result)
                cond.notify_all()

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    order = {j: i for i, j in enumerate(jobs)}
    return sorted(results, key=lambda r: order[(r[0], r[1])])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"only {','.join(QUICK_METHODS)} (about 30 min)")
    p.add_argument("--steps", type=int, default=STEPS, help=f"steps per run (default {STEPS})")
    p.add_argument("--seeds", type=int, default=3, help="seeds 1..N per method (default 3)")
    p.add_argument(
        "--methods", help="comma-separated examples/experiments names (default: all, or --quick's)"
    )
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1; 2 cores: 1 or 2)")
    p.add_argument("--out", type=Path, help="study directory (default runs/study_quick or runs/study)")
    args = p.parse_args(argv)
    methods = args.methods.split(",") if args.methods else QUICK_METHODS if args.quick else METHODS
    methods = [m for m in methods if m]
    missing = [m for m in methods if not (EXPERIMENTS / f"{m}.yaml").is_file()]
    if missing:
        p.error(f"no config examples/experiments/{{{','.join(missing)}}}.yaml; have {METHODS}")
    steps = args.steps
    out = (args.out or ROOT / ("runs/study_quick" if args.quick else "runs/study")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"[study] {len(methods)} methods x {args.seeds} seeds x {steps} steps -> {out}", flush=True)
    t0 = time.perf_counter()
    build_model(out / "model")
    # method-major: a method's seeds finish together, and the one-run-per-seed rule never leaves a worker idle
    # before the last method (seed-major would run the whole last seed one run at a time)
    jobs = [(m, s) for m in methods for s in range(1, args.seeds + 1)]
    results = run_all(jobs, max(1, args.jobs), lambda m, s: run_one(m, s, steps, out, out / "model", extra))
    total = time.perf_counter() - t0
    with open(out / "runs.tsv", "a") as f:
        for method, seed, status, wall in results:
            f.write(
                f"{method}\t{seed}\t{steps}\t{status}\t{wall:.1f}\t{time.strftime('%Y-%m-%dT%H:%M:%S')}\n"
            )
    failed = [r for r in results if r[2].startswith("FAILED")]
    print(f"[study] {len(results) - len(failed)}/{len(results)} runs ok, {total / 60:.1f} min", flush=True)
    cmd = [sys.executable, str(ROOT / "tools/compare_runs.py"), str(out), "--out", str(out / "report")]
    cmd += ["--order", ",".join(methods)]
    for name, group in FIGURES.items():
        if all(m in methods for m in group):
            cmd += ["--figure", f"{name}={','.join(group)}"]
    rc = subprocess.run(cmd, cwd=ROOT).returncode
    if failed:
        print(f"[study] failed: {[(m, s) for m, s, _, _ in failed]} (see OUT/METHOD/seedS.log)", flush=True)
    return 1 if failed or rc else 0


if __name__ == "__main__":
    sys.exit(main())
