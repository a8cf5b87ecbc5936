"""Routing replay's per-token experts on their way from the lead to the ranks: every rank receiving all of them
(``broadcast_from_lead``, as in the step's batch) against each rank receiving its data-parallel share
(``scatter_from_lead``, what ``trainer/loop.py::with_routed_experts`` does), side by side in one run.

    python benchmarks/bench_routed_experts.py [--responses 256] [--tokens 2048] [--per-token 384] [--repeats 3]

It launches itself under torchrun: 4 processes, one thread each, gloo (CPU). ``--responses`` of ``--tokens`` tokens
with ``--per-token`` expert ids each (uint8: 384 = Qwen3-30B-A3B's 48 layers x top-8), in two layouts of the 4
ranks: DP=4, and TP=2 x DP=2 (two ranks per replica). Per layout and way: the median seconds until every rank
holds what it needs (after an untimed first call), and the MB each rank receives.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bench_common import rerun_under_torchrun  # noqa: E402

WORLD = 4
LAYOUTS = {"DP=4": [0, 1, 2, 3], "TP=2 x DP=2": [0, 0, 1, 1]}


def worker(args) -> None:
    import numpy as np
    import torch.distributed as dist

    from megatron_hapo.parallel import init_distributed
    from megatron_hapo.parallel.lead import broadcast_from_lead, init_lead_group, scatter_from_lead

    init_distributed()
    init_lead_group()
    rank = dist.get_rank()
    routed = None
    if rank == 0:
        rng = np.random.default_rng(0)
        routed = [
            rng.integers(0, 128, (args.tokens, args.per_token), dtype=np.uint8) for _ in range(args.responses)
        ]
    rows = []
    for name, replica_of in LAYOUTS.items():
        n = len(set(replica_of))
        shares = None
        if rank == 0:  # response i to data-parallel rank i % n, as a balanced plan would
            shares = [[routed[i] for i in range(r, args.responses, n)] for r in range(n)]
        for way in ("broadcast (all)", "scatter (own share)"):
            times, got = [], None
            for repeat in range(args.repeats + 1):  # the first makes scatter_from_lead's groups: not timed
                dist.barrier()
                t0 = time.perf_counter()
                if way.startswith("broadcast"):
                    got = broadcast_from_lead(routed)
                else:
                    got = scatter_from_lead(shares, replica=replica_of[rank])
                dist.barrier()
                times += [time.perf_counter() - t0] if repeat else []
            received = [None] * WORLD
            dist.all_gather_object(received, len(pickle.dumps(got, protocol=pickle.HIGHEST_PROTOCOL)))
            rows.append((name, way, statistics.median(times), max(received) / 1e6))
    if rank == 0:
        print("| layout | way | seconds (median) | MB received per rank |")
        print("|---|---|---:|---:|")
        for name, way, seconds, mb in rows:
            print(f"| {name} | {way} | {seconds:.3f} | {mb:.1f} |")
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--responses", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--per-token", type=int, default=384)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if "RANK" in os.environ:
        worker(args)
        return
    total = args.responses * args.tokens * args.per_token
    print(
        f"{args.responses} responses x {args.tokens} tokens x {args.per_token} B = {total / 1e6:.0f} MB of routed "
        f"experts; {WORLD} processes on CPU (gloo, one thread each), median of {args.repeats}",
        flush=True,
    )
    sys.exit(rerun_under_torchrun(__file__, WORLD))


if __name__ == "__main__":
    main()
