"""Generates the tiny arithmetic prompt set bundled for the CPU demo (deterministic for a given seed).

Every problem is ``a op b`` with single digits a, b and op in {+, -, *}: 300 distinct problems, split
into 260 training and 40 validation rows. Rows follow the verl/HAPO parquet schema::

    {"data_source": "math_dapo_tiny_arith",          # contains "math_dapo" -> the DAPO scorer (+1/-1)
     "prompt": [{"role": "user", "content": "..."}], # asks for a last line "Answer: N"
     "ability": "math",
     "reward_model": {"style": "rule", "ground_truth": "12"},
     "extra_info": {"split": "train", "index": 0, "expression": "3 * 4"}}

Usage (from the repository root)::

    python examples/data/make_tiny_math.py            # rewrite the three files next to this script
    python examples/data/make_tiny_math.py --check    # exit 1 if the checked-in files differ
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

DATA_SOURCE = "math_dapo_tiny_arith"
SEED = 20250916
NUM_VAL = 40
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
PROMPT = "What is {expr}? Give the result on the last line in the form Answer: $Answer"
HERE = Path(__file__).resolve().parent
FORMATS = {"train": ("parquet",), "val": ("parquet", "jsonl")}


def make_rows(seed: int = SEED, num_val: int = NUM_VAL) -> dict[str, list[dict]]:
    """The train and val rows (every problem exactly once), shuffled deterministically by ``seed``."""
    problems = [(a, op, b) for op in OPS for a in range(10) for b in range(10)]
    random.Random(seed).shuffle(problems)
    splits = {"val": problems[:num_val], "train": problems[num_val:]}
    out: dict[str, list[dict]] = {}
    for split, items in splits.items():
        out[split] = [
            {
                "data_source": DATA_SOURCE,
                "prompt": [{"role": "user", "content": PROMPT.format(expr=f"{a} {op} {b}")}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": str(OPS[op](a, b))},
                "extra_info": {"split": split, "index": i, "expression": f"{a} {op} {b}"},
            }
            for i, (a, op, b) in enumerate(items)
        ]
    return out


def write(out_dir: Path, seed: int = SEED) -> list[Path]:
    """Write the files of ``FORMATS`` into ``out_dir``; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for split, rows in make_rows(seed).items():
        if "parquet" in FORMATS[split]:
            path = out_dir / f"tiny_math_{split}.parquet"
            pq.write_table(pa.Table.from_pylist(rows), path, compression="zstd")
            written.append(path)
        if "jsonl" in FORMATS[split]:
            path = out_dir / f"tiny_math_{split}.jsonl"
            path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")
            written.append(path)
    return written


def differences(reference_dir: Path, seed: int = SEED) -> list[str]:
    """Files in ``reference_dir`` whose rows differ from a fresh generation (parquet compared by rows)."""
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        for fresh in write(Path(tmp), seed):
            ref = reference_dir / fresh.name
            if not ref.is_file():
                problems.append(f"{ref}: missing")
            elif fresh.suffix == ".parquet":
                if pq.read_table(ref).to_pylist() != pq.read_table(fresh).to_pylist():
                    problems.append(f"{ref}: rows differ from the generator's")
            elif ref.read_bytes() != fresh.read_bytes():
                problems.append(f"{ref}: content differs from the generator's")
    return problems


def main(argv: list[str] | None = None) -> int:
    from megatron_hapo.cli.data_files import generator_main

    return generator_main(
        argv,
        description=__doc__.splitlines()[0],
        out_dir=HERE,
        seed=SEED,
        write=write,
        differences=differences,
    )


if __name__ == "__main__":
    sys.exit(main())
