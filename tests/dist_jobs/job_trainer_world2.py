"""torchrun job (2 processes): two RL steps of the trainer, SGLang in-process on rank 0.

Args: MODEL_DIR RUN_DIR TP DISTRIBUTED_OPTIMIZER(0|1) [PP [VP [CP]]]: TP=2, PP=2 (DP=1; VP=2: interleaved, a
model of 4 layers), CP=2 (context parallelism: SDPA attention, one sequence per row) or none of them (DP=2). Asserts
the run wrote two metric rows with finite losses, an engine serving the trainer's weights, and a checkpoint.

EXTRA_OVERRIDES (environment): more config overrides, space-separated (trainer.total_steps=3 over a run directory
that holds step 2: a resume, then step 3).

FAIL_LAST_SYNC=1 (environment): rank 0's engine refuses the weight sync after step 2 before any weight moves (an
injected EngineError at its pause), while its model-parallel peers are in the export's collectives: they finish the
export, every rank learns of the failure, the run saves step 2, then rank 0 raises the engine's error and the
others RolloutFailed (no rank hangs).
"""

import json
import math
import os
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
        *os.environ.get("EXTRA_OVERRIDES", "").split(),
    ]
    cfg = load_config("examples/configs/tiny_cpu.yaml", overrides, world_size=2)
    fail_last_sync = os.environ.get("FAIL_LAST_SYNC") == "1"
    if fail_last_sync:
        inject_sync_failure(at_call=3)  # the resume's sync, step 1's, then step 2's
    from megatron_hapo.rollout import EngineError
    from megatron_hapo.trainer.rollout_stage import RolloutFailed

    try:
        train(cfg)
        failed = None
    except (EngineError, RolloutFailed) as exc:
        failed = exc
    if fail_last_sync:
        expected = EngineError if dist.get_rank() == 0 else RolloutFailed
        assert type(failed) is expected and "weight sync" in str(failed), repr(failed)
    else:
        assert failed is None, repr(failed)
    if dist.get_rank() == 0:
        rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
        steps = cfg.trainer.total_steps
        assert [r["step"] for r in rows] == list(range(1, steps + 1)), rows
        for r in rows:
            assert math.isfinite(r["actor/pg_loss"]) and math.isfinite(r["optim/grad_norm"]), r
            # the engine serves the trainer's weights: behaviour and old log-probs agree
            assert r["actor/tis/abs_log_prob_diff"] < 1e-3, r
        assert (Path(run_dir) / "checkpoints" / f"step_{steps}" / "trainer_state.json").is_file()
        print(f"TRAINER_WORLD2_OK tp={tp} pp={pp} vp={vp} cp={cp} failed_sync={fail_last_sync}", flush=True)
    dist.barrier()
    dist.destroy_process_group()


def inject_sync_failure(at_call: int) -> None:
    """The in-process engine's pause (the first thing a weight sync asks of it) raises at call ``at_call``."""
    from megatron_hapo.rollout import EngineError, InProcessSGLangEngine

    pause, calls = InProcessSGLangEngine.pause, []

    def failing_pause(engine):
        calls.append(1)
        if len(calls) == at_call:
            raise EngineError("injected fault: the engine refused this weight sync")
        return pause(engine)

    InProcessSGLangEngine.pause = failing_pause


if __name__ == "__main__":
    main()
