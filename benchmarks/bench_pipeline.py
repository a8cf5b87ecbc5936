"""Plain 1F1B vs the interleaved pipeline (``parallel.virtual_pipeline_model_parallel_size``) at PP=2 on CPU.

    python benchmarks/bench_pipeline.py [--layers 8] [--hidden 256] [--seq 512] [--micro-batches 2 4 8]

It launches itself under torchrun: 2 processes (the two pipeline stages), one thread each, gloo.

Model: a random Qwen2 (``--hidden``, ``--layers``, vocab 512), fp32, Megatron's local spec. Every micro-batch is
one sequence of ``--seq`` tokens, all the same length, so the pipeline schedule is the only difference between
rows. Per VP (plain, 2, 4 where the layers divide) and M micro-batches: the trainer's ``learn()`` on one
update (old-policy pass, then ``Policy.update`` with one optimizer step), median of ``--repeats``.

The ideal time in units of one micro-batch through one stage (Narayanan et al., 2021): M + P - 1 for plain
1F1B, M + (P - 1) / V interleaved, so the bubble shrinks by V while the point-to-point messages grow by V.
The table gives that ideal ratio beside the measured one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_common import run_workers  # noqa: E402

PP = 2


def uniform_step(n_responses: int, seq: int, vocab: int, seed: int = 0):
    """``n_responses`` / 2 prompts x 2 samples, every sequence ``seq`` tokens (a quarter of it prompt)."""
    from megatron_hapo.rollout.types import RolloutSample
    from megatron_hapo.trainer.batch import StepBatch

    g = torch.Generator().manual_seed(seed)
    prompt_len = seq // 4
    samples, scores = [], []
    for i in range(n_responses):
        n = seq - prompt_len
        samples.append(
            RolloutSample(
                prompt_index=i // 2, sample_index=i % 2,
                prompt_ids=torch.randint(3, vocab, (prompt_len,), generator=g).tolist(),
                response_ids=torch.randint(3, vocab, (n,), generator=g).tolist(),
                logprobs=(-torch.rand(n, generator=g) * 4).tolist(), finish_reason="stop",
                weight_version="bench", temperatures=[1.0] * n,
            )
        )  # fmt: skip
        scores.append(1.0 if i % 2 else -1.0)
    groups = [s.prompt_index for s in samples]
    return StepBatch(samples, [None] * len(samples), groups, scores, [s > 0 for s in scores])


def medians(rows: list[tuple[float, float]]) -> tuple[float, float]:
    """(old pass s, update s) medians over the repeats."""
    old, upd = zip(*rows, strict=True)
    return statistics.median(old), statistics.median(upd)


def ideal(m: int, vp: int | None) -> float:
    return m + (PP - 1) / (vp or 1)


def worker(args) -> None:
    import torch.distributed as dist

    import megatron_hapo.parallel as hp
    from megatron_hapo.config import load_config
    from megatron_hapo.trainer.loop import learn
    from megatron_hapo.trainer.policy import Policy

    hp.init_distributed()
    lead = dist.get_rank() == 0
    vps = [None] + [v for v in (2, 4) if args.layers % (PP * v) == 0]
    results: dict[tuple, list[tuple[float, float]]] = {}
    with hp.device_mode():
        for vp in vps:
            hp.initialize_model_parallel(1, PP, virtual_pipeline_parallel=vp, seed=0)
            cfgs = {}
            for m in args.micro_batches:
                cfgs[m] = load_config(
                    "examples/configs/tiny_cpu.yaml",
                    [
                        f"model.hf_path={args.model}", "model.load_weights=false", "precision.dtype=fp32",
                        f"parallel.pipeline_model_parallel_size={PP}",
                        f"parallel.virtual_pipeline_model_parallel_size={vp or 'null'}",
                        "parallel.use_distributed_optimizer=false", "model.local_attention=unfused",
                        "sampling.train.n=2", f"data.train_batch_size={m // 2}", f"data.mini_batch_size={m // 2}",
                        "data.micro_batch_size=1", "data.max_tokens_per_micro_batch=null",
                        "data.max_tokens_per_old_micro_batch=null", f"data.max_prompt_length={args.seq // 4}",
                        f"rollout.max_new_tokens={args.seq - args.seq // 4}",
                    ],
                    check_env=False,
                    world_size=PP,
                )  # fmt: skip
            policy = Policy(cfgs[args.micro_batches[0]], optimizer_steps=1000)
            for m in args.micro_batches:
                batch = uniform_step(m, args.seq, 512)
                learn(cfgs[m], policy, batch)  # warm-up
                for _ in range(args.repeats):
                    dist.barrier()
                    _, metrics = learn(cfgs[m], policy, batch)
                    results.setdefault((vp, m), []).append(
                        (metrics["time/old_policy_s"], metrics["time/update_s"])
                    )
                if lead:
                    old, upd = medians(results[vp, m])
                    print(f"  VP {vp or '-'} M {m}: old pass {old:.3f} s, update {upd:.3f} s", flush=True)
            del policy
            hp.destroy_model_parallel()
    if lead:
        print()
        print(
            "| M micro-batches | schedule | old pass s | update s | update vs plain | ideal (M + (P-1)/V) / (M + P-1) "
            "| old pass vs plain |"
        )
        print("|---:|---|---:|---:|---:|---:|---:|")
        for m in args.micro_batches:
            base_old, base_upd = medians(results[None, m])
            for vp in vps:
                old, upd = medians(results[vp, m])
                name = "plain 1F1B" if vp is None else f"interleaved, VP={vp}"
                print(
                    f"| {m} | {name} | {old:.3f} | {upd:.3f} | {upd / base_upd:.2f} | "
                    f"{ideal(m, vp) / ideal(m, None):.2f} | {old / base_old:.2f} |"
                )
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--micro-batches", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", help=argparse.SUPPRESS)  # set by the launcher for the workers
    args = ap.parse_args()
    if any(m % 2 for m in args.micro_batches):
        ap.error("--micro-batches must be even (2 samples per prompt)")
    if "RANK" in os.environ:
        worker(args)
        return
    title = (
        f"PP={PP} on CPU (gloo, one thread per stage): qwen2 {args.layers} layers, hidden {args.hidden}, "
        f"micro-batches of one {args.seq}-token sequence, median of {args.repeats}"
    )
    sys.exit(run_workers(__file__, PP, args.hidden, args.layers, title))


if __name__ == "__main__":
    main()
