"""``python -m megatron_hapo.demo.probe MODEL_DIR [--prompts 64] [--samples 2] [--temperature 1]``: held-out
accuracy of a demo policy by level and by full/skipped scratchpad, and its response lengths
(megatron_hapo/demo/probe.py)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from megatron_hapo.demo.probe import probe


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--temperature", type=float, default=1.0)
    args = p.parse_args(argv)
    if not (args.model_dir / "config.json").is_file():
        sys.exit(f"probe: {args.model_dir}/config.json not found (pass a model directory)")
    t0 = time.perf_counter()
    res = probe(args.model_dir, args.prompts, args.samples, args.temperature)
    lengths = res.pop("lengths")
    print("level  kind  responses  accuracy")
    for (level, kind), oks in sorted(res.items()):
        print(f"{level:>5}  {kind:>4}  {len(oks):>9}  {sum(oks) / len(oks):>8.3f}")
    for level, ls in sorted(lengths.items()):
        print(f"level {level}: mean response length {sum(ls) / len(ls):.1f} tokens")
    every = [ok for oks in res.values() for ok in oks]
    print(
        f"accuracy {sum(every) / len(every):.3f} over {len(every)} responses ({time.perf_counter() - t0:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
