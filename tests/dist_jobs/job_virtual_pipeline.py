"""torchrun job (2 processes, PP=2): an interleaved pipeline (VP=2 model chunks per stage) trains exactly as
the plain one.

usage: torchrun --nproc-per-node 2 job_virtual_pipeline.py MODEL_DIR CKPT_DIR   (MODEL_DIR: a 4-layer model)

From the same HF weights, one HAPO step (old-policy pass, two updates of Megatron's distributed optimizer) at
PP=2 with VP=2 and at PP=2 without: old log-probs and entropies per response, losses, gradient norms and
every updated parameter (by global name, gathered over the pipeline) agree to REL_TOL, with fixed
micro-batches, with token budgets (micro-batch counts rounded up to a multiple of PP with empty
micro-batches) and with packed rows; so does the HF export the weight sync streams. A checkpoint written at VP=2 loads at plain PP=2 into the same
parameters, and the next step from it matches the VP run's own next step (optimizer state resharded); that
step's checkpoint, written at plain PP=2, loads back at VP=2 into the same parameters.
Prints VIRTUAL_PIPELINE_OK on success.
"""

import sys

import torch
import torch.distributed as dist

import megatron_hapo.parallel as hp
from tests.dist_jobs.job_batching_equivalence import LR, compare, log, rel

REL_TOL = 1e-5
VARIANTS = ("fixed", "budget", "packed")


def build(model_dir, variant):
    from megatron_hapo.config import load_config
    from megatron_hapo.trainer.policy import Policy
    from tests.trainer.batching_data import N_SAMPLES

    overrides = [
        f"model.hf_path={model_dir}", "model.load_weights=true", "data.train_batch_size=4",
        "data.mini_batch_size=2", "data.micro_batch_size=2", f"sampling.train.n={N_SAMPLES}",
        f"optim.lr={LR}", "optim.eps=1.0", "precision.dtype=fp32", "parallel.pipeline_model_parallel_size=2",
        "parallel.use_distributed_optimizer=true", "data.max_prompt_length=16", "rollout.max_new_tokens=40",
        "model.local_attention=unfused",
    ]  # fmt: skip
    if variant == "fixed":
        overrides += ["data.max_tokens_per_micro_batch=null", "data.max_tokens_per_old_micro_batch=null"]
    else:  # budgets that give odd micro-batch counts, which the interleaved schedule cannot run
        overrides += ["data.max_tokens_per_micro_batch=96", "data.max_tokens_per_old_micro_batch=200"]
        overrides += [f"data.sequence_packing={'mask' if variant == 'packed' else 'none'}"]
    from megatron.core import parallel_state as ps

    vp = ps.get_virtual_pipeline_model_parallel_world_size()
    if vp:
        overrides += [f"parallel.virtual_pipeline_model_parallel_size={vp}"]
    cfg = load_config("examples/configs/tiny_cpu.yaml", overrides, check_env=False, world_size=2)
    assert cfg.parallel.micro_batch_multiple == (2 if vp else 1)
    torch.manual_seed(0)
    return cfg, Policy(cfg, optimizer_steps=4)


def step(cfg, policy, seed):
    """((metrics, every response's [2, R] old log-probs and entropies, global params), HF export) after one
    step (also used by job_context_parallel.py)."""
    from megatron.core import parallel_state as ps

    from megatron_hapo.checkpoint_io import export_hf_weights
    from megatron_hapo.trainer.loop import learn
    from tests.trainer.batching_data import varied_batch

    seen = {}
    real = policy.old_policy_pass

    def recording(exp, micro_batches):
        seen["counts"] = len(micro_batches)
        real(exp, micro_batches)
        seen["exp"] = exp

    policy.old_policy_pass = recording
    try:
        _, metrics = learn(cfg, policy, varied_batch(seed))
    finally:
        del policy.old_policy_pass
    exp = seen["exp"]
    mine = {}
    for i, g in enumerate(exp.step_index):
        lo = int(exp.offsets[i]) + int(exp.prompt_lens[i]) - 1
        span = slice(lo, lo + int(exp.response_lens[i]))
        mine[g] = torch.stack([exp.old_log_prob[span], exp.entropy[span]]).cpu()
    parts = [None] * ps.get_data_parallel_world_size()  # DP ranks hold different responses
    dist.all_gather_object(parts, mine, group=ps.get_data_parallel_group())
    per_response = {g: t for part in parts for g, t in part.items()}
    assert len(per_response) == len(varied_batch(seed).samples)
    params = global_params(policy)
    exported = {n: t.clone() for n, t in export_hf_weights(policy.chunks)}
    if cfg.parallel.micro_batch_multiple > 1:
        assert seen["counts"] % 2 == 0, seen["counts"]
        assert metrics["perf/micro_batches_per_rank/update"] % 2 == 0, metrics
    return (metrics, per_response, params), exported


def global_params(policy, group=None):
    """Every parameter of the model by global name, gathered over ``group`` (default: the pipeline stages)."""
    from megatron.core import parallel_state as ps

    from megatron_hapo.models.params import as_chunks, named_global_parameters

    group = group or ps.get_pipeline_model_parallel_group()
    mine = {n: p.detach().clone() for c in as_chunks(policy.chunks) for n, p in named_global_parameters(c)}
    parts = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, mine, group=group)
    return {n: t for part in parts for n, t in part.items()}


def same_export(a, b):
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    return max(rel(a[n], b[n], floor=LR) for n in a)


def loaded_problem(name, got, want):
    """Log how far the parameters a checkpoint loaded (``got``) are from those it was written with; the failure
    message when they are not the same, or None."""
    worst = max(rel(got[n], want[n], floor=LR) for n in want)
    log(f"checkpoint {name}: params {worst:.1e}")
    return (
        f"a checkpoint {name} holds other parameters ({worst})"
        if got.keys() != want.keys() or worst > 0
        else None
    )


def compare_steps(name, got, ref, tol):
    """Log how far step ``got`` (``step``'s result) is from ``ref``; the failure message, or None."""
    (got, got_export), (ref, ref_export) = got, ref
    worst, bad = compare(name, got, ref, tol=tol)
    worst["export"] = same_export(got_export, ref_export)
    log(f"{name}: " + ", ".join(f"{k} {x:.1e}" for k, x in worst.items()))
    return f"{name} differs: {worst}" if bad or not worst["export"] <= tol else None


def main():
    model_dir, ckpt_dir = sys.argv[1], sys.argv[2]
    hp.init_distributed()
    failures = []
    from megatron_hapo.trainer import checkpoint

    with hp.device_mode():
        runs = {}
        hp.initialize_model_parallel(1, 2, virtual_pipeline_parallel=2, seed=1234)
        for v in VARIANTS:
            cfg, policy = build(model_dir, v)
            assert len(policy.chunks) == 2
            runs["vp", v] = step(cfg, policy, seed=0)
            if v == "fixed":  # checkpoint after step 1, then step 2 at VP=2
                ckpt = checkpoint.save(policy, ckpt_dir, 1, {}, keep_last=None)
                runs["vp", "next"] = step(cfg, policy, seed=1)
            del policy
        hp.destroy_model_parallel()
        hp.initialize_model_parallel(1, 2, seed=1234)
        for v in VARIANTS:
            cfg, policy = build(model_dir, v)
            assert len(policy.chunks) == 1
            runs["plain", v] = step(cfg, policy, seed=0)
            del policy
        cfg, policy = build(model_dir, "fixed")
        checkpoint.load(policy, ckpt)
        loaded = global_params(policy)
        runs["plain", "next"] = step(cfg, policy, seed=1)
        ckpt_plain = checkpoint.save(policy, f"{ckpt_dir}/plain", 2, {}, keep_last=None)
        del policy
        hp.destroy_model_parallel()
        hp.initialize_model_parallel(1, 2, virtual_pipeline_parallel=2, seed=1234)  # and back
        cfg, policy = build(model_dir, "fixed")
        checkpoint.load(policy, ckpt_plain)
        loaded_back = global_params(policy)
        del policy
        hp.destroy_model_parallel()
    for name, got, want in (
        ("written at VP=2, loaded at plain PP=2", loaded, runs["vp", "fixed"][0][2]),
        ("written at plain PP=2, loaded at VP=2", loaded_back, runs["plain", "next"][0][2]),
    ):
        failures += [problem] if (problem := loaded_problem(name, got, want)) else []
    for v in (*VARIANTS, "next"):
        failure = compare_steps(f"{v}: VP=2 vs plain PP=2", runs["vp", v], runs["plain", v], REL_TOL)
        failures += [failure] if failure else []
    if failures:
        raise AssertionError("\n".join(failures))
    log("VIRTUAL_PIPELINE_OK")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
