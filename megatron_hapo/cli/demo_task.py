"""``python -m megatron_hapo.demo.task [--out-dir DIR] [--seed N] [--check]``: write the bundled reasoning
task's parquet files (examples/data/reasoning_{train,heldout}.parquet), or with ``--check`` exit 1 when the
checked-in files differ from the generator (megatron_hapo/demo/task.py)."""

from __future__ import annotations

import sys

from megatron_hapo.cli.data_files import generator_main
from megatron_hapo.demo.task import DATA_DIR, SEED, differences, write


def main(argv: list[str] | None = None) -> int:
    return generator_main(
        argv,
        description=__doc__.splitlines()[0],
        out_dir=DATA_DIR,
        seed=SEED,
        write=write,
        differences=differences,
    )


if __name__ == "__main__":
    sys.exit(main())
