"""Overlapped rollout (``rollout.max_staleness`` 0 vs 1) and over-sampled dynamic sampling (refill vs
``over_sample``) on the tiny CPU task (or ``--task reasoning``: the demo's task and policy, whose
longer, uneven responses and higher keep rate are closer to a real run), side by side in one run.

One SGLang server (HAPO sampler) is launched here and pinned to CPU core 0 (``taskset``, every thread of its
process tree); each training run is ``hapo-train`` pinned to core 1, attached to that server
(``rollout.server_addresses``; every run first syncs its own initial weights into it). Per run:

- steps/s over the steps after the first (the first has nothing generated ahead);
- trainer idle = ``time/rollout_wait_s`` / ``time/step_s``; fleet idle = 1 - ``time/rollout_s`` / ``time/step_s``
  (``rollout_s``: generation + scoring of a batch, timed where it ran);
- with dynamic sampling: ``generated_tokens_per_kept_group`` / ``kept_tokens_per_group`` (1.0 = an ideal
  filter that generated only the kept groups), split into kept + dropped (``dropped_tokens_per_kept_group``:
  the all-equal groups scored, which any filter on finished groups pays for) and the rest (the method's own
  overhead: refill's surplus kept groups, over-sampling's aborted and late groups).

    PYTHONPATH=$PWD python benchmarks/bench_overlap.py [--steps 6] [--model DIR]
    PYTHONPATH=$PWD python benchmarks/bench_overlap.py --task reasoning --skip-overlap --model runs/demo_reasoning_model \
        --over-sample 1.1 1.25
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def pin_tree(pid: int, core: int) -> int:
    """Pin every thread of ``pid`` and its descendants to ``core``; returns how many processes."""
    import psutil

    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for p in procs:
        subprocess.run(["taskset", "-a", "-p", "-c", str(core), str(p.pid)], check=True, capture_output=True)
    return len(procs)


CONFIGS = {"tiny_math": "examples/configs/tiny_cpu.yaml", "reasoning": "examples/configs/demo_reasoning.yaml"}


def train(
    config: str, model: str, url: str, key: str | None, run_dir: Path, steps: int, *overrides: str
) -> list[dict]:
    cmd = [
        "taskset", "-c", "1", sys.executable, "-m", "megatron_hapo.trainer",
        "--config", config, f"model.hf_path={model}", f"trainer.run_dir={run_dir}",
        f"trainer.total_steps={steps}", "rollout.engine=fleet", f"rollout.server_addresses=[{url}]",
        "rollout.num_servers=1", "algorithm.loss.tis_cap=2.0", "checkpoint.save_every=0",
        "checkpoint.keep_last=1", *overrides,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCHDYNAMO_DISABLE="1", PYTHONPATH=str(REPO))
    if key:
        env["HAPO_ROLLOUT_API_KEY"] = key
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"run {overrides} failed:\n{proc.stderr[-4000:]}")
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def summary(rows: list[dict]) -> dict:
    rows = [r for r in rows if "time/step_s" in r]  # training steps (not a step-0 evaluation row)
    steady = rows[1:] or rows

    def mean(key):
        return statistics.fmean(r[key] for r in steady)

    step_s = mean("time/step_s")
    out = {
        "steps_per_s": 1.0 / step_s,
        "step_s": step_s,
        "train_s": mean("time/train_s"),
        "trainer_idle": mean("time/rollout_wait_s") / step_s,
        "fleet_idle": max(0.0, 1.0 - mean("time/rollout_s") / step_s),
        "staleness": mean("rollout/staleness"),
    }
    if "dynamic_sampling/kept_tokens_per_group" in rows[0]:
        gen = sum(r["dynamic_sampling/generated_tokens_per_kept_group"] for r in rows)
        kept = sum(r["dynamic_sampling/kept_tokens_per_group"] for r in rows)
        out["tokens_vs_ideal"] = gen / kept
        # what a filter on finished groups pays for the all-equal groups it scored (older runs: absent)
        if "dynamic_sampling/dropped_tokens_per_kept_group" in rows[0]:
            dropped = sum(r["dynamic_sampling/dropped_tokens_per_kept_group"] for r in rows)
            out["scored_vs_ideal"] = (kept + dropped) / kept
            out["own_overhead"] = gen / (kept + dropped)
        out["generated_per_kept"] = statistics.fmean(r["dynamic_sampling/generated_per_kept"] for r in rows)
        out["gen_rounds"] = statistics.fmean(r["dynamic_sampling/gen_batches"] for r in rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--task", choices=sorted(CONFIGS), default="tiny_math")
    ap.add_argument(
        "--model",
        default=None,
        help="the SFT-warmed policy of the task (default: built here; the tiny one only)",
    )
    ap.add_argument(
        "--over-sample",
        type=float,
        nargs="+",
        default=[1.5],
        help="one or more over_sample factors, each run after refill (the knob trades tokens for latency)",
    )
    ap.add_argument(
        "--train-args",
        default="",
        help="extra overrides of every run, e.g. 'data.mini_batch_size=1 data.micro_batch_size=1' (more "
        "optimizer updates per step: a training side as long as the generation side, as on a real fleet)",
    )
    ap.add_argument("--skip-overlap", action="store_true")
    ap.add_argument("--skip-dynamic", action="store_true")
    args = ap.parse_args()

    from megatron_hapo.rollout.fleet import FleetConfig, SGLangFleet

    work = Path(tempfile.mkdtemp(prefix="bench_overlap_"))
    model = args.model
    if model is None and args.task != "tiny_math":
        raise SystemExit(f"--task {args.task} needs --model (python -m megatron_hapo.demo builds it)")
    if model is None:
        from megatron_hapo.demo.policy import make_demo_model

        model = str(
            make_demo_model(work / "model", sft_steps=40, sft_files=["examples/data/tiny_math_train.parquet"])
        )
    fleet = SGLangFleet(FleetConfig(
        model_path=model, num_servers=1, router=False, progress=False, hapo_sampler=True,
        log_dir=str(work / "fleet_logs"), request_timeout_s=600,
    ))  # fmt: skip
    try:
        n = pin_tree(fleet.servers[0].process.pid, 0)
        print(
            f"server {fleet.servers[0].url}: {n} processes pinned to core 0; trainers on core 1", flush=True
        )
        url, key = fleet.servers[0].url, fleet.api_key
        results = {}
        runs = []
        if not args.skip_overlap:
            runs += [("max_staleness=0", ("rollout.max_staleness=0",)),
                     ("max_staleness=1", ("rollout.max_staleness=1",))]  # fmt: skip
        if not args.skip_dynamic:
            ds = ("algorithm.dynamic_sampling.enable=true",)
            runs += [("dynamic sampling, refill", ds)]
            runs += [(f"dynamic sampling, over_sample={f}", (*ds, f"algorithm.dynamic_sampling.over_sample={f}"))
                     for f in args.over_sample]  # fmt: skip
        for name, overrides in runs:
            run_dir = work / name.replace(" ", "_").replace(",", "")
            rows = train(
                CONFIGS[args.task], model, url, key, run_dir, args.steps, *args.train_args.split(), *overrides
            )
            results[name] = summary(rows)
            print(name, json.dumps(results[name]), flush=True)
    finally:
        fleet.shutdown()
    print()
    print("| run | steps/s | step s | train s | trainer idle | fleet idle | staleness |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['steps_per_s']:.3f} | {r['step_s']:.2f} | {r['train_s']:.2f} | "
              f"{r['trainer_idle']:.0%} | {r['fleet_idle']:.0%} | {r['staleness']:.2f} |")  # fmt: skip
    if "max_staleness=0" in results and "max_staleness=1" in results:
        speedup = results["max_staleness=1"]["steps_per_s"] / results["max_staleness=0"]["steps_per_s"]
        print(f"\noverlap speed-up: {speedup:.2f}x steps/s (target >= 1.3x)")
    # every run logs the token metrics (1.0 without dynamic sampling): tabulate the dynamic-sampling runs only
    dyn = {k: v for k, v in results.items() if k.startswith("dynamic sampling")}
    if dyn:
        print(
            "\n| dynamic sampling | generated tokens / ideal filter | of which: kept + dropped groups scored "
            "| generated / scored (own overhead) | generated / kept responses | rounds per step | step s |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, r in dyn.items():
            scored = f"{r['scored_vs_ideal']:.2f}x" if "scored_vs_ideal" in r else "-"
            own = f"{r['own_overhead']:.2f}x" if "own_overhead" in r else "-"
            print(
                f"| {name} | {r['tokens_vs_ideal']:.2f}x | {scored} | {own} | {r['generated_per_kept']:.2f} "
                f"| {r['gen_rounds']:.2f} | {r['step_s']:.1f} |"
            )
        print(
            "(target: over-sampling <= 1.3x an ideal filter. Kept + dropped is what any filter that scores "
            "finished groups pays for the groups it saw; generated / scored is the method's own cost: "
            "refill's surplus kept groups, over-sampling's aborted and late groups)"
        )


if __name__ == "__main__":
    main()
