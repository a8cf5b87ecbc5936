"""Whole-step padding vs token-budget micro-batches vs sequence packing on one synthetic RL step (old-policy
pass + update).

    python benchmarks/bench_batching.py [--responses 32] [--max-new 384] [--repeats 3] [--pack-budget N]

The step: ``responses / 4`` prompts x 4 samples. Prompt lengths are uniform in [24, 64]; response lengths
follow reasoning RL's heavy tail, scaled down for a CPU: ``L = min(max_new, round(exp(N(ln(max_new / 5),
0.9))))``, a log-normal whose median is a fifth of the maximum, with a few responses clipped at the
maximum (HAPO's 7B recipe: up to 10k tokens, most far shorter). Model: a random Qwen2 (hidden 64, 2
layers, vocab 512) on Megatron-Core, fp32, TP = PP = DP = 1, the trainer's own ``learn()``.

Rows (interleaved, ``--repeats`` times each; the table shows the median):
- whole-step padding: micro-batches of ``micro_batch_size`` responses, every one padded to the step's
  longest sequence (the layout before token budgets);
- token budget: ``data.max_tokens_per_micro_batch`` = budget, old pass 2 x budget, each micro-batch padded
  to its own longest sequence, first-fit decreasing (``data.sequence_packing=none``);
- packing: each micro-batch ONE row of several responses back to back (first-fit decreasing) under
  ``--pack-budget`` (default: the longest possible sequence, docs/training.md's advice: on this route
  attention and its mask grow with the row length squared), old pass 2 x that; block-diagonal causal
  attention and per-sequence rotary positions (``data.sequence_packing=mask``, what ``auto`` picks on the
  local spec).
All rows share one Policy (one model, so the same weights and optimizer start every row's step);
its ``packing`` route is set per row.

Padding ratio = computed token slots / real (prompt + response) tokens. Wall times are medians; on a shared
machine they are noisy, so the table also gives the process CPU time of ``learn()`` (old pass + update +
metrics, all threads), which other jobs disturb much less.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def synthetic_step(n_responses: int, max_new: int, vocab: int, seed: int = 0):
    from megatron_hapo.rollout.types import RolloutSample
    from megatron_hapo.trainer.batch import StepBatch

    g = torch.Generator().manual_seed(seed)
    samples, scores = [], []
    for p in range(n_responses // 4):
        prompt = torch.randint(
            3, vocab, (int(torch.randint(24, 65, (1,), generator=g)),), generator=g
        ).tolist()
        for j in range(4):
            z = float(torch.randn(1, generator=g))
            n = max(1, min(max_new, round(math.exp(math.log(max_new / 5) + 0.9 * z))))
            samples.append(
                RolloutSample(
                    prompt_index=p, sample_index=j, prompt_ids=prompt,
                    response_ids=torch.randint(3, vocab, (n,), generator=g).tolist(),
                    logprobs=(-torch.rand(n, generator=g) * 4).tolist(), finish_reason="stop",
                    weight_version="bench", temperatures=(0.9 + 0.2 * torch.rand(n, generator=g)).tolist(),
                )
            )  # fmt: skip
            scores.append(1.0 if (p + j) % 3 == 0 else -1.0)
    groups = [s.prompt_index for s in samples]
    return StepBatch(samples, [None] * len(samples), groups, scores, [s > 0 for s in scores])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--responses", type=int, default=32)
    ap.add_argument("--max-new", type=int, default=384)
    ap.add_argument("--prompt-max", type=int, default=64)
    ap.add_argument("--micro-batch-size", type=int, default=4, help="rows of the whole-step padding row")
    ap.add_argument("--budget", type=int, default=None, help="update token budget; default 2 x longest")
    ap.add_argument(
        "--pack-budget",
        type=int,
        default=None,
        help="packed-row budget; default the longest possible sequence",
    )
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

    import megatron_hapo.parallel as hp
    from megatron_hapo.config import load_config
    from megatron_hapo.demo.tiny_models import make_tiny_hf_model
    from megatron_hapo.trainer.loop import learn
    from megatron_hapo.trainer.policy import Policy

    vocab = 512
    longest = args.prompt_max + args.max_new
    budget = args.budget or 2 * longest
    pack_budget = args.pack_budget or longest
    batch = synthetic_step(args.responses, args.max_new, vocab)
    lens = sorted(len(s.response_ids) for s in batch.samples)
    print(
        f"step: {len(batch)} responses, response length median {lens[len(lens) // 2]}, max {lens[-1]}, "
        f"clipped {sum(x == args.max_new for x in lens)}; real tokens "
        f"{sum(len(s.prompt_ids) + len(s.response_ids) for s in batch.samples)}; budget {budget}, packed rows "
        f"{pack_budget}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        model = make_tiny_hf_model(
            Path(tmp) / "m", "qwen2", vocab_size=vocab, dtype="float32", hidden_size=64, num_layers=2
        )
        base = [
            f"model.hf_path={model}", "model.load_weights=true", "precision.dtype=fp32",
            "data.train_batch_size=" + str(args.responses // 4), "data.mini_batch_size=" + str(args.responses // 8),
            "sampling.train.n=4", f"data.micro_batch_size={args.micro_batch_size}",
            f"data.max_prompt_length={args.prompt_max}", f"rollout.max_new_tokens={args.max_new}",
            "data.max_tokens_per_micro_batch=null", "data.max_tokens_per_old_micro_batch=null",
        ]  # fmt: skip
        rows = {
            "whole-step padding": (
                load_config("examples/configs/tiny_cpu.yaml", base, check_env=False),
                True,
            ),
        }
        for name, packing, b in (("token budget", "none", budget), ("packing", "mask", pack_budget)):
            budgets = [f"data.max_tokens_per_micro_batch={b}", f"data.max_tokens_per_old_micro_batch={2 * b}"]
            over = [*base, *budgets, f"data.sequence_packing={packing}"]
            rows[name] = (load_config("examples/configs/tiny_cpu.yaml", over, check_env=False), False)
        route = {"whole-step padding": "none", "token budget": "none", "packing": "mask"}
        results: dict[str, list[dict]] = {k: [] for k in rows}
        hp.init_distributed()
        hp.initialize_model_parallel(1, 1)
        with hp.device_mode():
            policy = Policy(rows["packing"][0], optimizer_steps=100)
            for name in ("token budget", "packing"):  # warm-up (first calls allocate)
                policy.packing = route[name]
                learn(rows[name][0], policy, batch)
            for rep in range(args.repeats):
                for name, (cfg, whole) in rows.items():
                    policy.packing = route[name]
                    t0, c0 = time.perf_counter(), time.process_time()
                    _, m = learn(cfg, policy, batch, whole_step_padding=whole)
                    m["wall"], m["cpu"] = time.perf_counter() - t0, time.process_time() - c0
                    results[name].append(m)
                    print(
                        f"  repeat {rep}: {name:<20} old {m['time/old_policy_s']:.2f} s, update "
                        f"{m['time/update_s']:.2f} s; learn() CPU time {m['cpu']:.2f} s",
                        flush=True,
                    )
        hp.destroy_model_parallel()

    def med(name, key):
        return statistics.median(m[key] for m in results[name])

    ref = med("whole-step padding", "time/old_policy_s") + med("whole-step padding", "time/update_s")
    ref_cpu = med("whole-step padding", "cpu")
    print()
    print(
        "| layout | padding ratio update | padding ratio old pass | micro-batches update | old pass s | update s "
        "| old + update s | speed-up (wall) | learn() CPU s | speed-up (CPU) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in rows:
        old, upd, cpu = med(name, "time/old_policy_s"), med(name, "time/update_s"), med(name, "cpu")
        print(
            f"| {name} | {med(name, 'perf/padding_ratio/update'):.2f} | {med(name, 'perf/padding_ratio/old'):.2f} "
            f"| {med(name, 'perf/micro_batches_per_rank/update'):.0f} | {old:.2f} | {upd:.2f} | {old + upd:.2f} "
            f"| {ref / (old + upd):.2f}x | {cpu:.2f} | {ref_cpu / cpu:.2f}x |"
        )


if __name__ == "__main__":
    main()
