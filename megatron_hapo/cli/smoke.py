"""``python -m megatron_hapo.cli.smoke [--tp N --pp M --steps K]`` (or under ``torchrun``): a tiny GPT trained
through Megatron-Core's real machinery (megatron_hapo/parallel/smoke.py), printing the loss; exit 1 unless
the loss halves. A first check of a new machine's torch + megatron-core install."""

from __future__ import annotations

import argparse
import time

import torch

import megatron_hapo.parallel as hp
from megatron_hapo.parallel.smoke import TinyGPTConfig, build_trainable, synthetic_batch, train_step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="A tiny GPT trained through Megatron-Core (DDP, distributed optimizer, the TP/PP schedule)."
    )
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)

    env = hp.init_distributed()
    hp.initialize_model_parallel(tensor_parallel=args.tp, pipeline_parallel=args.pp)
    cfg = TinyGPTConfig()
    from megatron.core import parallel_state as ps

    dp_rank = ps.get_data_parallel_rank()
    with hp.device_mode():
        model, optimizer = build_trainable(cfg)
        batches = [synthetic_batch(cfg, seed=100 * dp_rank + i) for i in range(cfg.num_microbatches)]
        start = time.perf_counter()
        losses = [train_step(model, optimizer, batches, cfg) for _ in range(args.steps)]
        elapsed = time.perf_counter() - start
    if env.rank == 0:
        layout = f"TP={args.tp} PP={args.pp} DP={ps.get_data_parallel_world_size()}"
        print(
            f"[smoke] Megatron-Core GPTModel on {env.device.type}, {layout}, {env.backend}, distributed optimizer"
        )
        for i in range(0, args.steps, max(1, args.steps // 6)):
            print(f"[smoke] step {i:3d}  loss {losses[i]:.4f}")
        print(
            f"[smoke] step {args.steps - 1:3d}  loss {losses[-1]:.4f}  ({elapsed / args.steps * 1e3:.0f} ms/step)"
        )
    if not losses[-1] < 0.5 * losses[0]:
        raise SystemExit(f"[smoke] FAILED: loss did not halve ({losses[0]:.4f} -> {losses[-1]:.4f})")
    hp.destroy_model_parallel()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
