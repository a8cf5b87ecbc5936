"""torchrun job (2 x TP processes): context parallelism (CP=2, every sequence split over two ranks) trains
exactly as data parallelism (DP=2, each rank whole sequences), at TP=1 or at TP=2 with sequence parallelism.

usage: torchrun --nproc-per-node 2xTP job_context_parallel.py MODEL_DIR CKPT_DIR [TP]

From the same HF weights, one HAPO step (old-policy pass, an update of Megatron's distributed optimizer,
SDPA attention) at CP=2 and at DP=2, with fixed micro-batches, with token budgets and with packed rows
(block-diagonal mask: each CP rank's query rows against the whole row's keys): old log-probs and
entropies per response, losses, gradient norms, every updated parameter and the HF export agree to REL_TOL;
so do the log-probs of ``score_sequences`` (the rollout check). A checkpoint written at CP=2 loads at DP=2
into the same parameters, and the next step from it matches the CP run's own next step (the distributed
optimizer's state resharded from DP x CP = 2 shards to DP = 2). One update per step: with several, DP=2 and
DP=1 group the step's responses into different mini-batches (trainer/batching.py), CP or not.
Prints CONTEXT_PARALLEL_OK on success.
"""

import sys

import torch
import torch.distributed as dist

import megatron_hapo.parallel as hp
from tests.dist_jobs.job_batching_equivalence import LR, log, rel
from tests.dist_jobs.job_virtual_pipeline import compare_steps, global_params, loaded_problem, step

REL_TOL = 5e-5  # fp32 sums in other orders (budget: other micro-batches); a wrong K/V order gives > 1e-2
VARIANTS = ("fixed", "budget", "packed")


def build(model_dir, variant):
    from megatron.core import parallel_state as ps

    from megatron_hapo.config import load_config
    from megatron_hapo.trainer.policy import Policy
    from tests.trainer.batching_data import N_SAMPLES

    cp, tp = ps.get_context_parallel_world_size(), ps.get_tensor_model_parallel_world_size()
    overrides = [
        f"model.hf_path={model_dir}", "model.load_weights=true", "data.train_batch_size=4",
        "data.mini_batch_size=4", "data.micro_batch_size=2", f"sampling.train.n={N_SAMPLES}",
        f"optim.lr={LR}", "optim.eps=1.0", "precision.dtype=fp32", f"parallel.context_parallel_size={cp}",
        "parallel.use_distributed_optimizer=true", "data.max_prompt_length=16", "rollout.max_new_tokens=40",
        "model.local_attention=sdpa", f"data.sequence_packing={'mask' if variant == 'packed' else 'none'}",
        f"parallel.tensor_model_parallel_size={tp}", f"parallel.sequence_parallel={str(tp > 1).lower()}",
    ]  # fmt: skip
    if variant == "fixed":
        overrides += ["data.max_tokens_per_micro_batch=null", "data.max_tokens_per_old_micro_batch=null"]
    else:
        overrides += ["data.max_tokens_per_micro_batch=96", "data.max_tokens_per_old_micro_batch=200"]
    cfg = load_config(
        "examples/configs/tiny_cpu.yaml", overrides, check_env=False, world_size=dist.get_world_size()
    )
    torch.manual_seed(0)
    policy = Policy(cfg, optimizer_steps=4)
    core = policy.model.module.decoder.layers[0].self_attention.core_attention
    assert type(core).__name__ == "SDPAttention" and (core.cp_group is not None) == (cp > 1), core
    assert policy.packing == ("mask" if variant == "packed" else "none"), policy.packing
    return cfg, policy


def scored(policy):
    """``score_sequences`` of a few odd-length sequences (padded to 2 x CP under CP) at varied temperatures."""
    from megatron_hapo.models.scoring import score_sequences

    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, 300, (n,), generator=g).tolist() for n in (5, 9, 3)]
    responses = [torch.randint(3, 300, (n,), generator=g).tolist() for n in (7, 2, 12)]
    temps = [0.7, [1.0 + 0.1 * k for k in range(2)], 1.3]
    out = score_sequences(policy.chunks, prompts, responses, temps, policy.vocab_size, micro_batch_size=2)
    return torch.cat([torch.stack([s.log_prob, s.entropy]) for s in out], dim=1)


def main():
    model_dir, ckpt_dir = sys.argv[1], sys.argv[2]
    tp = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    hp.init_distributed()
    failures = []
    from megatron_hapo.trainer import checkpoint

    with hp.device_mode():
        runs = {}
        hp.initialize_model_parallel(tp, 1, context_parallel=2, seed=1234)
        for v in VARIANTS:
            cfg, policy = build(model_dir, v)
            if v == "fixed":
                runs["cp", "scored"] = scored(policy)
            runs["cp", v] = step(cfg, policy, seed=0)
            if v == "fixed":  # checkpoint after step 1, then step 2 at CP=2
                ckpt = checkpoint.save(policy, ckpt_dir, 1, {}, keep_last=None)
                runs["cp", "next"] = step(cfg, policy, seed=1)
            del policy
        hp.destroy_model_parallel()
        hp.initialize_model_parallel(tp, 1, seed=1234)  # DP=2
        for v in VARIANTS:
            cfg, policy = build(model_dir, v)
            if v == "fixed":
                runs["dp", "scored"] = scored(policy)
            runs["dp", v] = step(cfg, policy, seed=0)
            del policy
        cfg, policy = build(model_dir, "fixed")
        checkpoint.load(policy, ckpt)
        loaded = global_params(policy)
        runs["dp", "next"] = step(cfg, policy, seed=1)
        del policy
        hp.destroy_model_parallel()
    worst = rel(runs["cp", "scored"], runs["dp", "scored"])
    log(f"score_sequences: CP=2 vs DP=2: {worst:.1e}")
    if not worst <= REL_TOL:
        failures.append(f"score_sequences differs under CP: {worst}")
    problem = loaded_problem("written at CP=2, loaded at DP=2", loaded, runs["cp", "fixed"][0][2])
    failures += [problem] if problem else []
    for v in (*VARIANTS, "next"):
        failure = compare_steps(f"{v}: CP=2 vs DP=2", runs["cp", v], runs["dp", v], REL_TOL)
        failures += [failure] if failure else []
    if failures:
        raise AssertionError("\n".join(failures))
    log("CONTEXT_PARALLEL_OK")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
