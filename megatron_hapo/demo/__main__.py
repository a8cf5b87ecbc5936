"""`make demo`: the main job on a CPU machine.

1. Build the demo policy (a 4-layer Qwen2-style model with a local tokenizer) and warm it up by SFT on
   imperfect scratchpads of the bundled reasoning task (``megatron_hapo/demo/``): skipped steps,
   arithmetic errors, missing answer lines. Cached: a second run with the same recipe reuses it.
2. Train it with HAPO (``examples/configs/demo_reasoning.yaml``): SGLang in-process with the
   adaptive-temperature sampler, rewards from the DAPO scorer (final answer only), Megatron-Core policy
   updates, weight sync every step, held-out avg@4 before training and every 20 steps.
3. Print the per-step table (the trainer's), then a closing summary: held-out accuracy before and after,
   the change in response length, the entropy trajectory; the run directory has plots/metrics.png.

``python -m megatron_hapo.demo [key=value ...]`` passes overrides to the config (e.g. trainer.total_steps=5).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

CONFIG = "examples/configs/demo_reasoning.yaml"
TRAIN_FILE = "examples/data/reasoning_train.parquet"


def policy_recipe() -> dict:
    """The arguments of ``make_demo_model`` for the demo's policy (the study uses the same)."""
    from megatron_hapo.demo.traces import TraceNoise

    return dict(
        task="reasoning",
        hidden_size=128,
        num_layers=4,
        sft_steps=600,
        sft_lr=3e-3,
        sft_batch=64,
        sft_cosine=True,
        trace_noise=TraceNoise(skip=0.3, error=0.1, no_answer=0.2),
    )


def build_policy(model_dir: Path, root: Path = Path(".")) -> Path:
    """The SFT-warmed demo policy in ``model_dir`` (reused when its recipe is unchanged)."""
    from megatron_hapo.demo.policy import make_demo_model

    return make_demo_model(model_dir, sft_files=[str(root / TRAIN_FILE)], **policy_recipe())


def main(argv: list[str] | None = None) -> int:
    overrides = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    import megatron_hapo.parallel  # noqa: F401  (CPU patches before megatron)
    from megatron_hapo.config import load_config
    from megatron_hapo.demo.summary import format_summary, summarize
    from megatron_hapo.trainer import train
    from megatron_hapo.trainer.metrics import read_metrics

    start = time.perf_counter()
    model_dir = Path(os.environ.get("HAPO_DEMO_MODEL", "runs/demo_reasoning_model"))
    os.environ["HAPO_DEMO_MODEL"] = str(model_dir)
    recipe = policy_recipe()
    print(
        f"[demo] 1/2 policy ({recipe['num_layers']} layers, hidden {recipe['hidden_size']}) + "
        f"{recipe['sft_steps']}-step SFT on imperfect scratchpads -> {model_dir} (cached)",
        flush=True,
    )
    build_policy(model_dir)
    t_sft = time.perf_counter() - start
    run_dir = f"runs/demo_reasoning-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = load_config(CONFIG, [f"trainer.run_dir={run_dir}", *overrides], world_size=1)
    print(
        f"[demo] 2/2 HAPO, {cfg.trainer.total_steps} steps x {cfg.data.train_batch_size} prompts x "
        f"{cfg.sampling.train.n} samples, SGLang in-process on CPU",
        flush=True,
    )
    train(cfg)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    for line in format_summary(summarize(read_metrics(cfg.trainer.run_dir))):
        print(f"[demo] {line}")
    print(f"[demo] run directory: {cfg.trainer.run_dir} (metrics.jsonl, plots/metrics.png, checkpoints/)")
    print(f"[demo] wall time {time.perf_counter() - start:.0f} s (policy + SFT {t_sft:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
