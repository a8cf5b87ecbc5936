"""The RL loop (DESIGN.md "One RL step"): rollout -> rewards -> dynamic sampling -> old-policy pass ->
step-global entropy statistics -> advantages -> policy update -> weight sync -> metrics -> checkpoint.

Every stage is a component built from the config by :func:`~megatron_hapo.trainer.setup.build_run`.
All ranks run this function; rank 0 owns the SGLang engine and the scorer and broadcasts the batch.
"""

from __future__ import annotations

import time

import torch

import megatron_hapo.parallel as hp
from megatron_hapo.algorithms import EntropyStats
from megatron_hapo.config import RootConfig
from megatron_hapo.trainer import checkpoint
from megatron_hapo.trainer.algorithm import compute_advantages
from megatron_hapo.trainer.batch import pad_responses, response_temperatures
from megatron_hapo.trainer.metrics import batch_metrics
from megatron_hapo.trainer.setup import Run, build_run, close_run


def rl_step(run: Run, step: int, stats: EntropyStats | None) -> tuple[EntropyStats | None, dict]:
    """One RL step; returns this step's entropy statistics (for the next rollout) and its metrics."""
    cfg, policy, t0 = run.cfg, run.policy, time.perf_counter()
    # 1-3. rollout with last step's stats (None at step 1), rewards, dynamic sampling: same batch on every rank
    batch = run.rollout.collect(stats)
    base_t = cfg.sampling.train.temperature
    adaptive = cfg.algorithm.adaptive_temperature.enable
    temps = [
        response_temperatures(s, cfg.algorithm.ratio_temperature, base_t, adaptive) for s in batch.samples
    ]
    seq_len = max(len(s.prompt_ids) + len(s.response_ids) for s in batch.samples)
    data = pad_responses(batch.samples, temps, seq_len)
    # 4. advantages over the whole step's groups (identical on every rank), then this DP rank's slice
    rewards = torch.tensor(batch.scores, dtype=torch.float32)
    advantages = compute_advantages(cfg, rewards, data.mask, batch.group_ids)
    per_rank = len(batch) // run.dp_size
    lo, hi = run.dp_rank * per_rank, (run.dp_rank + 1) * per_rank
    local, local_adv = data.slice(lo, hi), advantages[lo:hi]
    # 5. old-policy pass on this rank's responses; step-global entropy statistics over all DP ranks
    t_old = time.perf_counter()
    old_log_prob, entropy = policy.old_policy_pass(batch.samples[lo:hi], temps[lo:hi], seq_len)
    new_stats = policy.entropy_stats(entropy, local.mask)
    t_old = time.perf_counter() - t_old
    # 6. policy update: mini-batches x micro-batches through Megatron's schedule, fused HAPO loss
    t_upd = time.perf_counter()
    metrics = policy.update(local, old_log_prob, local_adv, new_stats, run.updates_per_step)
    t_upd = time.perf_counter() - t_upd
    # 7. weight sync into the engine, version = step
    metrics.update(policy.sync_weights(run.rollout.engine, version=f"step-{step}"))
    # 8. metrics (batch statistics of rank 0's slice for entropy/temperature, the whole batch otherwise)
    metrics.update(batch_metrics(batch, entropy, local.mask, local.temperature))
    metrics.update({f"entropy/{k}": v for k, v in new_stats.to_dict().items()})
    metrics.update(
        {"time/old_policy_s": t_old, "time/update_s": t_upd, "time/step_s": time.perf_counter() - t0}
    )
    return new_stats, metrics


def train(cfg: RootConfig) -> Run:
    """Run ``cfg`` to ``trainer.total_steps``; resumes per ``checkpoint.resume``. Returns the (closed) run.

    Initialises torch.distributed if needed and tears the model-parallel groups down at the end; the
    default process group stays up (the caller destroys it).
    """
    hp.init_distributed()
    p = cfg.parallel
    hp.initialize_model_parallel(
        p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.context_parallel_size,
        virtual_pipeline_parallel=p.virtual_pipeline_model_parallel_size, seed=cfg.trainer.seed,
    )  # fmt: skip
    with hp.device_mode():
        run = build_run(cfg)
        try:
            stats, start = None, 1
            resume = checkpoint.resolve_resume(cfg.checkpoint.resume, cfg.checkpoint.dir)
            if resume is not None:
                state = checkpoint.load(run.policy, resume)
                run.rollout.sampler.load_state_dict(state["sampler"])
                run.rollout._next_group = state["next_group"]
                stats = EntropyStats.from_dict(state["entropy_stats"]) if state["entropy_stats"] else None
                start = state["step"] + 1
            if start == 1 or resume is not None:  # the engine serves exactly the trainer's weights
                run.policy.sync_weights(run.rollout.engine, version=f"step-{start - 1}")
            for step in range(start, run.total_steps + 1):
                stats, metrics = rl_step(run, step, stats)
                run.logger.log(step, metrics)
                save_every = cfg.checkpoint.save_every
                if (save_every and step % save_every == 0) or step == run.total_steps:
                    trainer_state = {
                        "sampler": run.rollout.sampler.state_dict(),
                        "next_group": run.rollout._next_group,
                        "entropy_stats": stats.to_dict() if stats is not None else None,
                    }
                    checkpoint.save(
                        run.policy, cfg.checkpoint.dir, step, trainer_state, cfg.checkpoint.keep_last
                    )
        finally:
            close_run(run)
    torch.distributed.barrier()  # no rank leaves while another still needs it in a collective
    hp.destroy_model_parallel()
    return run
