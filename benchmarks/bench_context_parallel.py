"""Context parallelism (``parallel.context_parallel_size``) against data parallelism on CPU: what a rank keeps
for the backward, and the step time.

    python benchmarks/bench_context_parallel.py [--layers 4] [--hidden 256] [--seq 2048] [--responses 4]

It launches itself under torchrun: 2 processes, one thread each, gloo. The same step (``--responses``
sequences of ``--seq`` tokens, micro-batches of one sequence, no recompute, SDPA attention, fp32) runs at
CP=2 (each rank holds half of every sequence, ``models/context_parallel.py``) and at DP=2 (each rank whole
sequences, half of them).

Per layout: the bytes the model's forward saves for the backward per micro-batch on a rank (the unique
storages packed by autograd's saved-tensor hooks around ``forward_micro_batch``, the weights' excepted: the
activations the memory plan of ``config/plan.py`` estimates, including the K and V CP all-gathers), and the medians over
``--repeats`` of the trainer's old-policy pass and update (``learn()``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_common import run_workers  # noqa: E402

WORLD = 2


def saved_bytes_per_forward(policy_module) -> list[int]:
    """Patch ``policy_module.forward_micro_batch`` to record, per call, the bytes of the unique storages
    autograd saves for the backward during it; returns the list the calls append to."""
    record: list[int] = []
    original = policy_module.forward_micro_batch

    def recording(model, batch):
        from megatron_hapo.models.activation_memory import saved_for_backward

        # weights saved for the input gradient are resident state, not activations; saved_for_backward
        # leaves them out (under DDP a parameter is a view of the whole parameter buffer's storage)
        with saved_for_backward(model) as saved:
            out = original(model, batch)
        if saved.total():  # the old-policy pass runs without gradients: nothing saved
            record.append(saved.total())
        return out

    policy_module.forward_micro_batch = recording
    return record


def worker(args) -> None:
    import torch.distributed as dist

    import megatron_hapo.parallel as hp
    import megatron_hapo.trainer.policy as policy_module
    from benchmarks.bench_pipeline import uniform_step
    from megatron_hapo.config import load_config
    from megatron_hapo.trainer.loop import learn
    from megatron_hapo.trainer.policy import Policy

    hp.init_distributed()
    lead = dist.get_rank() == 0
    saved = saved_bytes_per_forward(policy_module)
    rows = {}
    with hp.device_mode():
        for cp in (2, 1):
            hp.initialize_model_parallel(1, 1, context_parallel=cp, seed=0)
            cfg = load_config(
                "examples/configs/tiny_cpu.yaml",
                [
                    f"model.hf_path={args.model}", "model.load_weights=false", "precision.dtype=fp32",
                    f"parallel.context_parallel_size={cp}", "model.local_attention=sdpa",
                    "model.recompute_granularity=none", "sampling.train.n=2",
                    f"data.train_batch_size={args.responses // 2}", f"data.mini_batch_size={args.responses // 2}",
                    "data.micro_batch_size=1", "data.max_tokens_per_micro_batch=null",
                    "data.max_tokens_per_old_micro_batch=null", "data.sequence_packing=none",
                    f"data.max_prompt_length={args.seq // 4}", f"rollout.max_new_tokens={args.seq - args.seq // 4}",
                ],
                check_env=False,
                world_size=WORLD,
            )  # fmt: skip
            policy = Policy(cfg, optimizer_steps=1000)
            batch = uniform_step(args.responses, args.seq, 512)
            learn(cfg, policy, batch)  # warm-up
            saved.clear()
            times = []
            for _ in range(args.repeats):
                dist.barrier()
                _, metrics = learn(cfg, policy, batch)
                times.append((metrics["time/old_policy_s"], metrics["time/update_s"]))
            per_mb = statistics.median(saved)
            old, upd = (statistics.median(t) for t in zip(*times, strict=True))
            rows[cp] = (args.seq // cp, per_mb, old, upd, len(saved) // args.repeats)
            if lead:
                print(
                    f"  CP={cp}: saved {per_mb / 2**20:.1f} MiB per micro-batch, old {old:.3f} s, update {upd:.3f} s"
                )
            del policy
            hp.destroy_model_parallel()
    if lead:
        base = rows[1]
        print()
        print("| layout | tokens per rank per micro-batch | micro-batches per rank | saved for backward per micro-batch "
              "| vs DP=2 | old pass s | update s | update vs DP=2 |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for cp, name in ((1, "DP=2"), (2, "CP=2")):
            tokens, per_mb, old, upd, count = rows[cp]
            print(
                f"| {name} | {tokens} | {count} | {per_mb / 2**20:.1f} MiB | {per_mb / base[1]:.2f} | {old:.3f} | "
                f"{upd:.3f} | {upd / base[3]:.2f} |"
            )
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--responses", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", help=argparse.SUPPRESS)  # set by the launcher for the workers
    args = ap.parse_args()
    if args.responses % 4 or args.seq % 4:
        ap.error(
            "--responses and --seq must be multiples of 4 (2 samples per prompt, 2 ranks; 2 x CP chunks)"
        )
    if "RANK" in os.environ:
        worker(args)
        return
    title = (
        f"CP=2 vs DP=2 on CPU (gloo, one thread per rank): qwen2 {args.layers} layers, hidden {args.hidden}, "
        f"{args.responses} sequences of {args.seq} tokens, micro-batches of one sequence, SDPA, no recompute, "
        f"median of {args.repeats}"
    )
    sys.exit(run_workers(__file__, WORLD, args.hidden, args.layers, title))


if __name__ == "__main__":
    main()
