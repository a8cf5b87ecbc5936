"""A group-level model (not a measurement) of dynamic-sampling submission policies: generated tokens
against an ideal filter, and wall time in decode steps, for a keep rate and an over-sampling factor ``f``.

It is why ``over_sample`` is tuned rather than replaced by a one-by-one top-up (docs/rollout.md, "Choosing
f"). The numbers to quote are ``bench_overlap.py``'s; this only compares policies under the assumptions:

- every group in flight decodes one token per step per response (a batched server, not saturated);
- a group is mixed ("kept") with probability ``keep``; a kept group's responses are right with
  probability 1/2 and take 19-50 tokens when right, 35-80 when wrong; a dropped group is all wrong;
- the step needs ``groups`` kept groups; what is in flight when it fills is aborted (its partial tokens
  count as generated).

Policies (``f``: the over-sampling factor, m: kept groups still missing):

- ``rounds``: today's ``_collect_over_sampled``: submit ceil(f m), wait until the round fills or ends;
- ``topup``: submit ceil(f m) at once, then keep ceil(f m) in flight, replacing groups as they drop;
- ``exact``: keep exactly m in flight (no margin);
- ``certain``: ``topup``, but close the step as soon as enough groups are proven mixed by their finished
  responses (one right and one wrong), aborting the unproven ones (would need per-response requests).

    python benchmarks/model_over_sampling.py [--groups 16] [--trials 300]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics

N = 8  # responses per group


def _group(rng: random.Random, keep: float, t0: int) -> dict:
    mixed = rng.random() < keep
    while True:
        accs = [rng.random() < 0.5 for _ in range(N)] if mixed else [False] * N
        if not mixed or (any(accs) and not all(accs)):
            break
    lens = [rng.randint(19, 50) if a else rng.randint(35, 80) for a in accs]
    return {"mixed": mixed, "accs": accs, "lens": lens, "t0": t0}


def _partial(g: dict, t: int) -> int:
    return sum(min(n, t - g["t0"]) for n in g["lens"])


def _proven(g: dict, t: int) -> bool:
    done = [a for a, n in zip(g["accs"], g["lens"], strict=True) if t - g["t0"] >= n]
    return any(done) and not all(done)


def simulate(policy: str, f: float, keep: float, groups: int, seed: int) -> tuple[float, int]:
    """(generated tokens / ideal filter, decode steps) of one step."""
    rng = random.Random(seed)
    t, kept, flight, dropped, wasted, closed = 0, [], [], 0, 0, False

    def submit(k: int) -> None:
        flight.extend(_group(rng, keep, t) for _ in range(k))

    submit(groups if policy == "exact" else math.ceil(groups * f))
    while len(kept) < groups:
        t += 1
        for g in [g for g in flight if t - g["t0"] >= max(g["lens"])]:
            flight.remove(g)
            if g["mixed"]:
                kept.append(g)
            else:
                dropped += sum(g["lens"])
        missing = groups - len(kept)
        if missing <= 0:
            break
        if policy == "rounds":
            if not flight:
                submit(math.ceil(missing * f))
            continue
        if policy == "certain":
            proven = [g for g in flight if _proven(g, t)]
            if not closed and len(proven) >= missing:
                wasted += sum(_partial(g, t) for g in flight if g not in proven)
                flight[:], closed = proven, True
            if closed:
                continue
            missing -= len(proven)
            in_flight = len(flight) - len(proven)
        else:
            in_flight = len(flight)
        target = missing if policy == "exact" else math.ceil(missing * f)
        if in_flight < target:
            submit(target - in_flight)
    wasted += sum(_partial(g, t) for g in flight) + sum(sum(g["lens"]) for g in kept[groups:])
    ideal = sum(sum(g["lens"]) for g in kept[:groups])
    return (ideal + dropped + wasted) / ideal, t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", type=int, default=16)
    ap.add_argument("--trials", type=int, default=300)
    args = ap.parse_args()
    print("| keep rate | f | policy | generated / ideal | decode steps |")
    print("|---:|---:|---|---:|---:|")
    for keep in (0.75, 0.85):
        for f in (1.1, 1.25, 1.5):
            for policy in ("rounds", "topup", "exact", "certain"):
                runs = [simulate(policy, f, keep, args.groups, s) for s in range(args.trials)]
                cost = statistics.fmean(r[0] for r in runs)
                steps = statistics.fmean(r[1] for r in runs)
                print(f"| {keep} | {f} | {policy} | {cost:.3f}x | {steps:.0f} |")


if __name__ == "__main__":
    main()
