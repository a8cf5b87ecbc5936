"""The command of a bundled data generator: ``[--out-dir DIR] [--seed N] [--check]``.

Shared by ``python -m megatron_hapo.demo.task`` (the reasoning task) and ``examples/data/make_tiny_math.py``:
write the generator's files, or with ``--check`` exit 1 (naming each file) when the checked-in files differ
from what the generator writes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from pathlib import Path


def generator_main(
    argv: list[str] | None,
    *,
    description: str,
    out_dir: Path,
    seed: int,
    write: Callable[[Path, int], Iterable[Path]],
    differences: Callable[[Path, int], list[str]],
) -> int:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out-dir", type=Path, default=out_dir)
    parser.add_argument("--seed", type=int, default=seed)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    if args.check:
        problems = differences(args.out_dir, args.seed)
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    for path in write(args.out_dir, args.seed):
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0
