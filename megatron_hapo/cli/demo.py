"""`make demo` (``python -m megatron_hapo.demo``): the main job on a CPU machine.

``python -m megatron_hapo.demo [--task reasoning|tiny_math] [key=value ...]`` (overrides go to the config,
e.g. trainer.total_steps=5).

1. Build the demo policy (a small Qwen2-style model with a local tokenizer) and warm it up by SFT so that it
   starts above chance (``megatron_hapo/demo/policy.py``). Cached: a second run with the same recipe
   reuses it.
2. Train it with HAPO: SGLang in-process with the adaptive-temperature sampler, rewards from the DAPO
   scorer (final answer only), Megatron-Core policy updates, weight sync every step.
3. Print the per-step table (the trainer's), then a closing summary; the run directory has
   plots/metrics.png.

Tasks:

- ``reasoning`` (default): multi-step sums of 3-6 terms (2..19) with a scratchpad
  (``megatron_hapo/demo/task.py``); a 4-layer hidden-128 policy (0.67 M parameters) SFT-warmed for 1600
  steps on imperfect scratchpads (``demo/traces.py``: skipped steps, arithmetic errors, missing answer
  lines), then 20 HAPO steps with held-out avg@4 before training and every 10 steps
  (``examples/configs/demo_reasoning.yaml``). Measured gains and seed spread: docs/reproduction.md
  ("The reasoning task").
- ``tiny_math``: single-digit ``a op b``; a 2-layer hidden-64 policy, 400 SFT steps in which half the
  completions lack the ``Answer:`` line (``examples/configs/tiny_cpu.yaml``). RL learns the format.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from megatron_hapo import console
from megatron_hapo.demo.recipes import TASKS, build_policy, policy_recipe


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    task = "reasoning"
    if "--task" in args:
        i = args.index("--task")
        if i + 1 >= len(args) or args[i + 1] not in TASKS:
            print(f"demo: --task needs one of {sorted(TASKS)}", file=sys.stderr)
            return 2
        task = args[i + 1]
        del args[i : i + 2]
    config = TASKS[task][0]
    threads_set_by_user = "OMP_NUM_THREADS" in os.environ
    # the RL part: one thread (SGLang and Megatron in one process); the SFT warm-up: see below
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    run_dir = f"runs/{Path(config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = next((a.split("=", 1)[1] for a in reversed(args) if a.startswith("trainer.run_dir=")), run_dir)
    # hapo-train's console: the demo's lines, the step table and what needs acting on; Megatron's and
    # SGLang's notices go to run_dir/logs/ (HAPO_VERBOSE=1 shows them)
    console.filter_benign_warnings()  # before Megatron is imported: most are import-time
    with console.logging_to(run_dir) as log_file:  # its handlers go with it (in-process callers: the tests)
        return _demo(task, args, run_dir, log_file, threads_set_by_user)


def _demo(task: str, args: list[str], run_dir: str, log_file: Path, threads_set_by_user: bool) -> int:
    config, _, default_dir, env_var = TASKS[task]
    import megatron_hapo.parallel  # noqa: F401  (CPU patches before megatron)
    from megatron_hapo.config import load_config
    from megatron_hapo.demo.summary import format_summary, summarize
    from megatron_hapo.trainer import train
    from megatron_hapo.trainer.metrics import read_metrics

    start = time.perf_counter()
    model_dir = Path(os.environ.get(env_var, default_dir))
    os.environ[env_var] = str(model_dir)
    recipe = policy_recipe(task)
    print(
        f"[demo] 1/2 {task} policy + {recipe['sft_steps']}-step SFT warm-up -> {model_dir} (reused when built with the same recipe)",
        flush=True,
    )
    _warm_up_on_all_cores(model_dir, task, all_cores=not threads_set_by_user)
    t_sft = time.perf_counter() - start
    cfg = load_config(config, [f"trainer.run_dir={run_dir}", *args], world_size=1)
    print(
        f"[demo] 2/2 HAPO, {cfg.trainer.total_steps} steps x {cfg.data.train_batch_size} prompts x "
        f"{cfg.sampling.train.n} samples, SGLang in-process on CPU (libraries' output: {log_file.parent}/)",
        flush=True,
    )
    train(cfg)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    rows = read_metrics(cfg.trainer.run_dir)
    k = max(1, len([r for r in rows if r.get("step", 0) >= 1]) // 4)
    train_rows = [r for r in rows if r.get("step", 0) >= 1]
    first, last = train_rows[0], train_rows[-k:]
    print(
        f"[demo] reward: step 1 {first['reward/mean']:+.3f} -> mean of the last {k} steps "
        f"{sum(r['reward/mean'] for r in last) / k:+.3f}; accuracy {first['acc/mean']:.2f} -> "
        f"{sum(r['acc/mean'] for r in last) / k:.2f}"
    )
    for line in format_summary(summarize(rows)):
        print(f"[demo] {line}")
    print(f"[demo] run directory: {cfg.trainer.run_dir} (metrics.jsonl, plots/metrics.png, checkpoints/)")
    print(f"[demo] wall time {time.perf_counter() - start:.0f} s (policy + SFT {t_sft:.0f} s)")
    return 0


def _warm_up_on_all_cores(model_dir: Path, task: str, all_cores: bool) -> None:
    """The demo policy's SFT warm-up (``build_policy``), on every core this process may use unless the user
    set OMP_NUM_THREADS: it is the only work running then (no engine yet), and compute-bound (about 1.5 x
    faster on 2 cores than on 1). The thread count is restored for the RL part afterwards."""
    import torch

    before = torch.get_num_threads()
    if all_cores:
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    try:
        build_policy(model_dir, task=task)
    finally:
        torch.set_num_threads(before)


if __name__ == "__main__":
    sys.exit(main())
