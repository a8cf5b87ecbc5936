"""`make demo`: the main job on a CPU machine.

1. Build the tiny policy (a 2-layer Qwen2-style model with a local tokenizer) and warm it up with a short
   SFT on the bundled arithmetic prompts, so it starts above chance (``trainer/tiny_model.py``).
2. Train it with HAPO (``examples/configs/tiny_cpu.yaml``): SGLang in-process with the adaptive-temperature
   sampler, rewards from the DAPO scorer, Megatron-Core policy updates, weight sync every step.
3. Print reward / accuracy / entropy / temperature per step and where the run directory is.

``python -m megatron_hapo.demo [key=value ...]`` passes overrides to the config (e.g. trainer.total_steps=5).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

CONFIG = "examples/configs/tiny_cpu.yaml"
SFT_STEPS = 400
SFT_NOISE = 0.5  # share of SFT answers without the "Answer:" line: RL learns the format and sharpens answers


def main(argv: list[str] | None = None) -> int:
    overrides = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    import megatron_hapo.parallel  # noqa: F401  (CPU patches before megatron)
    from megatron_hapo.config import load_config
    from megatron_hapo.trainer import train
    from megatron_hapo.trainer.metrics import read_metrics
    from megatron_hapo.trainer.tiny_model import make_demo_model

    start = time.perf_counter()
    model_dir = Path(os.environ.get("HAPO_TINY_MODEL", "runs/tiny_cpu_model"))
    os.environ["HAPO_TINY_MODEL"] = str(model_dir)
    print(f"[demo] 1/2 tiny model + {SFT_STEPS}-step SFT warm-up -> {model_dir}", flush=True)
    make_demo_model(
        model_dir,
        sft_steps=SFT_STEPS,
        sft_noise=SFT_NOISE,
        sft_files=["examples/data/tiny_math_train.parquet"],
    )
    run_dir = f"runs/tiny_cpu-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = load_config(CONFIG, [f"trainer.run_dir={run_dir}", *overrides], world_size=1)
    print(f"[demo] 2/2 HAPO, {cfg.trainer.total_steps} steps, SGLang in-process on CPU", flush=True)
    train(cfg)
    import torch.distributed as dist

    dist.destroy_process_group()
    rows = read_metrics(cfg.trainer.run_dir)
    k = max(1, len(rows) // 4)

    def mean(key: str, part: list[dict]) -> float:
        return sum(r[key] for r in part) / len(part)

    # the SFT-warmed policy learns the answer format within a few steps, then improves slowly and noisily
    # (32 prompts a step): step 1 against the mean of the last k steps shows the change
    print(
        f"[demo] reward: step 1 {rows[0]['reward/mean']:+.3f} -> mean of the last {k} steps "
        f"{mean('reward/mean', rows[-k:]):+.3f}; accuracy {rows[0]['acc/mean']:.2f} -> "
        f"{mean('acc/mean', rows[-k:]):.2f}"
    )
    print(
        f"[demo] run directory: {cfg.trainer.run_dir} (resolved_config.yaml, metrics.jsonl, checkpoints/, "
        "plots/metrics.png)"
    )
    print(f"[demo] wall time {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
