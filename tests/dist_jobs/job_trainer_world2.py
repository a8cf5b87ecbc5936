"""torchrun job (2 processes): two RL steps of the trainer, SGLang in-process on rank 0.

Args: MODEL_DIR RUN_DIR TP DISTRIBUTED_OPTIMIZER(0|1) [PP [VP [CP]]]: TP=2, PP=2 (DP=1; VP=2: interleaved, a
model of 4 layers), CP=2 (context parallelism: SDPA attention, one sequence per row) or none of them (DP=2). Asserts
the run wrote two metric rows with finite losses, an engine serving the trainer's weights, and a checkpoint.
"""

import json
import math
import sys
from pathlib import Path

import megatron_hapo.parallel  # noqa: F401  (before megatron)


def main() -> None:
    import torch.distributed as dist

    from megatron_hapo.config import load_config
    from megatron_hapo.trainer import train

    model_dir, run_dir, tp, dist_opt = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
    pp = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    vp = sys.argv[6] if len(sys.argv) > 6 else "null"
    cp = int(sys.argv[7]) if len(sys.argv) > 7 else 1
    overrides = [
        f"model.hf_path={model_dir}",
        f"trainer.run_dir={run_dir}",
        f"parallel.tensor_model_parallel_size={tp}",
        f"parallel.pipeline_model_parallel_size={pp}",
        f"parallel.virtual_pipeline_model_parallel_size={vp}",
        f"parallel.context_parallel_size={cp}",
        f"parallel.use_distributed_optimizer={str(dist_opt).lower()}",
        "trainer.total_steps=2",
        "data.train_batch_size=4",
        "data.mini_batch_size=2",
        "data.micro_batch_size=2",
        "sampling.train.n=4",
    ]
    cfg = load_config("examples/configs/tiny_cpu.yaml", overrides, world_size=2)
    train(cfg)
    if dist.get_rank() == 0:
        rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2], rows
        for r in rows:
            assert math.isfinite(r["actor/pg_loss"]) and math.isfinite(r["optim/grad_norm"]), r
            # the engine serves the trainer's weights: behaviour and old log-probs agree
            assert r["actor/tis/abs_log_prob_diff"] < 1e-3, r
        assert (Path(run_dir) / "checkpoints" / "step_2" / "trainer_state.json").is_file()
        print(f"TRAINER_WORLD2_OK tp={tp} pp={pp} vp={vp} cp={cp}", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
