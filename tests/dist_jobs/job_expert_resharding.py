"""torchrun job (4 processes): a mixture of experts' training checkpoint resumes at another expert parallelism.

usage: torchrun --nproc-per-node 4 job_expert_resharding.py MODEL_DIR CKPT_DIR   (MODEL_DIR: a tiny Qwen3-MoE)

At EP=2 (DP=4, expert-DP=2) one HAPO step (old-policy pass, two updates of Megatron's distributed optimizer), a
checkpoint, then the next step: the reference. The checkpoint loads at EP=4 (each rank 2 of the 8 experts,
expert-DP=1: the experts' optimizer state resharded from two shards to one) into the same parameters, and the next
step from it matches the EP=2 run's own next step to REL_TOL: the Adam moments moved with their experts. That
step's checkpoint, written at EP=4, loads back at EP=2 into the same parameters.
Prints EXPERT_RESHARDING_OK on success.
"""

import sys

import torch
import torch.distributed as dist

import megatron_hapo.parallel as hp
from tests.dist_jobs.job_batching_equivalence import LR, log
from tests.dist_jobs.job_models_world2 import layout
from tests.dist_jobs.job_virtual_pipeline import compare_steps, global_params, loaded_problem
from tests.dist_jobs.job_virtual_pipeline import step as one_step

REL_TOL = 1e-5


def build(model_dir, ep):
    from megatron_hapo.config import load_config
    from megatron_hapo.trainer.policy import Policy
    from tests.trainer.batching_data import N_SAMPLES

    overrides = [
        f"model.hf_path={model_dir}", "model.load_weights=true", "data.train_batch_size=4",
        "data.mini_batch_size=2", "data.micro_batch_size=2", f"sampling.train.n={N_SAMPLES}",
        f"optim.lr={LR}", "optim.eps=1.0", "precision.dtype=fp32", f"parallel.expert_model_parallel_size={ep}",
        "parallel.use_distributed_optimizer=true", "data.max_prompt_length=16", "rollout.max_new_tokens=40",
        "model.local_attention=unfused", "data.max_tokens_per_micro_batch=null",
        "data.max_tokens_per_old_micro_batch=null",
    ]  # fmt: skip
    cfg = load_config("examples/configs/tiny_cpu.yaml", overrides, check_env=False, world_size=4)
    torch.manual_seed(0)
    return cfg, Policy(cfg, optimizer_steps=4)


def all_params(policy):
    """Every parameter by global name, gathered over all ranks (each expert-parallel rank holds its experts)."""
    return global_params(policy, group=dist.group.WORLD)


def step(cfg, policy, seed):
    """``job_virtual_pipeline.step`` with every expert's parameters in its result."""
    (metrics, per_response, _), exported = one_step(cfg, policy, seed)
    return (metrics, per_response, all_params(policy)), exported


def main():
    model_dir, ckpt_dir = sys.argv[1], sys.argv[2]
    hp.init_distributed()
    assert dist.get_world_size() == 4, "run with --nproc-per-node 4"
    from megatron_hapo.trainer import checkpoint

    with layout(1, 1, ep=2):
        cfg, policy = build(model_dir, 2)
        first = step(cfg, policy, seed=0)
        ckpt = checkpoint.save(policy, ckpt_dir, 1, {}, keep_last=None)
        ep2_next = step(cfg, policy, seed=1)
        del policy
    with layout(1, 1, ep=4):
        cfg, policy = build(model_dir, 4)
        checkpoint.load(policy, ckpt)
        loaded = all_params(policy)
        ep4_next = step(cfg, policy, seed=1)
        ckpt_ep4 = checkpoint.save(policy, f"{ckpt_dir}/ep4", 2, {}, keep_last=None)
        del policy
    with layout(1, 1, ep=2):
        cfg, policy = build(model_dir, 2)
        checkpoint.load(policy, ckpt_ep4)
        loaded_back = all_params(policy)
        del policy
    failures = [
        problem
        for name, got, want in (
            ("written at EP=2, loaded at EP=4", loaded, first[0][2]),
            ("written at EP=4, loaded at EP=2", loaded_back, ep4_next[0][2]),
        )
        if (problem := loaded_problem(name, got, want))
    ]
    failure = compare_steps("the step after the checkpoint: at EP=4 vs at EP=2", ep4_next, ep2_next, REL_TOL)
    failures += [failure] if failure else []
    if failures:
        raise AssertionError("\n".join(failures))
    log("EXPERT_RESHARDING_OK")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
