"""torchrun job (4 processes): a mixture of experts' training checkpoint resumes at another expert parallelism,
EP = 1 included (trainer/optimizer_layout.py: at EP > 1 Megatron keeps the experts' optimizer state apart).

usage: torchrun --nproc-per-node 4 job_expert_resharding.py MODEL_DIR CKPT_DIR   (MODEL_DIR: a tiny Qwen3-MoE)

The reference: at EP=2 (DP=4, expert-DP=2) four HAPO steps (old-policy pass, two updates of Megatron's distributed
optimizer each), with a checkpoint after the first. Then a chain of resumes, each from the last one's checkpoint:

- at EP=1 (every rank all 8 experts, one optimizer) from the EP=2 checkpoint: step 2, then a checkpoint;
- at EP=4 (2 experts per rank, expert-DP=1) from the EP=1 checkpoint: step 3, then a checkpoint;
- at EP=2 again from the EP=4 checkpoint: step 4.

Every load gives the parameters the checkpoint holds (difference 0), and every step after a load matches the
reference's step to REL_TOL: the Adam moments moved with their parameters into the other optimizer layout (with
them lost the step differs by ~5e-4). The first checkpoint also holds a batch generated ahead with routing replay
(rollout.max_staleness=1: ready_batch.pt, each sample's routed experts a numpy array): it loads on the lead as
written, and not at all on the other ranks, which never use it. Prints EXPERT_RESHARDING_OK on success.
"""

import sys

import numpy as np
import torch
import torch.distributed as dist

import megatron_hapo.parallel as hp
from tests.dist_jobs.job_batching_equivalence import LR, log
from tests.dist_jobs.job_models_world2 import layout
from tests.dist_jobs.job_virtual_pipeline import compare_steps, global_params, loaded_problem
from tests.dist_jobs.job_virtual_pipeline import step as one_step

REL_TOL = 1e-5


# a routing-replay batch generated ahead, as RolloutStage.state_dict saves it (its samples' other fields elided)
READY = {
    "samples": [
        {"response_ids": [5, 6, 7], "routed_experts": np.arange(4 * 4, dtype=np.uint8).reshape(4, 4) % 8},
        {"response_ids": [9], "routed_experts": np.full((2, 4), 300, dtype=np.int16)},
    ],
    "group_ids": [0, 0],
}


def ready_batch_problem(loaded, rank: int) -> str | None:
    if rank != 0:
        return (
            None
            if loaded is None
            else f"rank {rank} loaded the batch generated ahead, which only the lead uses"
        )
    got = [(s["response_ids"], s["routed_experts"]) for s in loaded["samples"]]
    want = [(s["response_ids"], s["routed_experts"]) for s in READY["samples"]]
    same = all(
        g[0] == w[0] and g[1].dtype == w[1].dtype and np.array_equal(g[1], w[1])
        for g, w in zip(got, want, strict=True)
    )
    return (
        None
        if same and loaded["group_ids"] == READY["group_ids"]
        else f"the lead's batch generated ahead: {loaded}"
    )


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
        reference = [step(cfg, policy, seed=0)]
        saved = checkpoint.save(
            policy, f"{ckpt_dir}/ep2", 1, {"rollout": {"ready_batch": READY}}, keep_last=None
        )
        reference += [step(cfg, policy, seed=k) for k in (1, 2, 3)]
        del policy
    failures, params = [], reference[0][0][2]
    for k, ep in enumerate((1, 4, 2), start=1):  # each resumes from the checkpoint the one before wrote
        with layout(1, 1, ep=ep):
            cfg, policy = build(model_dir, ep)
            state = checkpoint.load(policy, saved)
            failures.append(loaded_problem(f"{saved} loaded at EP={ep}", all_params(policy), params))
            if k == 1:
                failures.append(ready_batch_problem(state["rollout"]["ready_batch"], dist.get_rank()))
            resumed = step(cfg, policy, seed=k)
            failures.append(
                compare_steps(f"step {k + 1} at EP={ep}, resumed", resumed, reference[k], REL_TOL)
            )
            saved, params = (
                checkpoint.save(policy, f"{ckpt_dir}/ep{ep}", k + 1, {}, keep_last=None),
                resumed[0][2],
            )
            del policy
    failures = [f for f in failures if f]
    if failures:
        raise AssertionError("\n".join(failures))
    log("EXPERT_RESHARDING_OK")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
