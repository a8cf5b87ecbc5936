"""``python -m megatron_hapo.demo.task [--out-dir DIR] [--seed N] [--check]``: write the bundled reasoning
task's parquet files (examples/data/reasoning_{train,heldout}.parquet), or with ``--check`` exit 1 when the
checked-in files differ from the generator (megatron_hapo/demo/task.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megatron_hapo.demo.task import DATA_DIR, SEED, differences, write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--seed", type=int, default=SEED)
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


if __name__ == "__main__":
    sys.exit(main())
