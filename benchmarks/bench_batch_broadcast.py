"""The step's batch on its way from the lead to every rank: Python lists (before) against the per-token arrays
of ``StepBatch.compact`` (what ``RolloutStage.collect`` broadcasts), side by side in one run.

    python benchmarks/bench_batch_broadcast.py [--responses 2048] [--length 1000] [--prompt 200] [--dp 8]

A synthetic batch (``--responses`` of ``--length`` tokens, prompts of ``--prompt`` tokens, groups of 16, the
HAPO sampler's entropies and temperatures, token ids up to 152k). Per form: the lead's pickle (what
``broadcast_object_list`` sends) in bytes per token and seconds; a receiving rank's unpickle in seconds and in
bytes of Python memory per token (tracemalloc, a run of its own); and the Experience of one data-parallel
rank's share (1/``--dp``). The transfer itself is bytes over NCCL or gloo, the same either way.
"""

from __future__ import annotations

import argparse
import gc
import pickle
import random
import sys
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from megatron_hapo.data import PromptSample  # noqa: E402
from megatron_hapo.rollout import RolloutSample  # noqa: E402
from megatron_hapo.trainer.batch import StepBatch, response_temperatures  # noqa: E402
from megatron_hapo.trainer.experience import Experience  # noqa: E402


def make_batch(responses: int, length: int, prompt: int, seed: int = 0) -> StepBatch:
    rng = random.Random(seed)
    groups = max(responses // 16, 1)
    prompts = [PromptSample(g, [rng.randrange(152_000) for _ in range(prompt)], "math", "1", {}, f"row {g}")
               for g in range(groups)]  # fmt: skip
    samples = []
    for i in range(responses):
        g = i % groups
        samples.append(RolloutSample(
            g, i // groups, list(prompts[g].prompt_ids), [rng.randrange(152_000) for _ in range(length)],
            [-rng.random() for _ in range(length)], "stop", "step-1",
            [rng.random() * 3 for _ in range(length)], [0.95 + rng.random() * 0.1 for _ in range(length)],
        ))  # fmt: skip
    return StepBatch(samples, [prompts[s.prompt_index] for s in samples], [s.prompt_index for s in samples],
                     [1.0] * responses, [True] * responses)  # fmt: skip


def timed(fn):
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def python_bytes(blob: bytes) -> int:
    gc.collect()
    tracemalloc.start()
    obj = pickle.loads(blob)
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del obj
    return size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--responses", type=int, default=2048)
    ap.add_argument("--length", type=int, default=1000)
    ap.add_argument("--prompt", type=int, default=200)
    ap.add_argument("--dp", type=int, default=8)
    args = ap.parse_args()
    batch = make_batch(args.responses, args.length, args.prompt)
    tokens = args.responses * (args.length + args.prompt)
    share = range(0, args.responses, args.dp)
    print(f"{args.responses} responses x ({args.prompt} + {args.length}) tokens = {tokens / 1e6:.1f} M tokens; "
          f"one rank's share: {len(share)} responses\n")  # fmt: skip
    print(
        "| form | lead: pickle s | bytes/token | rank: unpickle s | Python bytes/token | rank: Experience s |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, make in (("lists (before)", lambda: batch), ("arrays (StepBatch.compact)", batch.compact)):
        blob, dump_s = timed(lambda make=make: pickle.dumps(make(), protocol=pickle.HIGHEST_PROTOCOL))
        received, load_s = timed(lambda blob=blob: pickle.loads(blob))
        samples = [received.samples[i] for i in share]
        temps = [response_temperatures(s, "per_token", 1.0, adaptive=True) for s in samples]
        _, build_s = timed(lambda samples=samples, temps=temps: Experience.build(
            samples, temps, [0.0] * len(samples), [0] * len(samples), list(share)))  # fmt: skip
        del received, samples, temps
        memory = python_bytes(blob)
        print(f"| {name} | {dump_s:.2f} | {len(blob) / tokens:.1f} | {load_s:.2f} | {memory / tokens:.0f} | "
              f"{build_s:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
