"""The demo's reasoning task: multi-step addition with a scratchpad, generated deterministically.

A problem is a sum of ``n`` numbers (``n`` = its *level*, 3..6; each term 2..19). The reference solution
keeps a running total, one step per line, then the answer line the DAPO scorer reads::

    What is 12+4+17+9? Add one number per line, then give the result on the last line in the form Answer: $Answer
    12+4=16
    16+17=33
    33+9=42
    Answer: 42

Why this task: a few-million-parameter model can learn one 2-3 digit addition per line, but not a sum of
three or more numbers in one line, so *skipping steps lowers accuracy*, and the number of steps (hence the
response length, about 9 tokens a step with one digit per token) grows with the level: ``n - 1`` lines, so
19-53 tokens with the end-of-text token. Terms stop at 19 (they were 2..99 at first) so that the SFT-warmed
policy learns to copy and add them within a CPU warm-up of minutes; the running total still reaches three
digits at level 6. The scorer checks only the final ``Answer:`` line (data_source contains ``math_dapo``: the DAPO
scorer), never the steps.

Rows follow the verl/HAPO prompt schema that ``megatron_hapo.data`` reads::

    {"data_source": "math_dapo_reasoning_sums",
     "prompt": [{"role": "user", "content": "..."}],
     "ability": "math",
     "reward_model": {"style": "rule", "ground_truth": "42"},
     "extra_info": {"split": "train", "index": 0, "level": 4, "terms": [12, 4, 17, 9]}}

``train`` and ``heldout`` are disjoint as multisets of terms (a reordering of a held-out sum is not in
train). Usage (from the repository root)::

    python -m megatron_hapo.demo.task            # write examples/data/reasoning_{train,heldout}.parquet
    python -m megatron_hapo.demo.task --check    # exit 1 if the checked-in files differ from the generator
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

DATA_SOURCE = "math_dapo_reasoning_sums"
SEED = 20250921
LEVELS = (3, 4, 5, 6)  # number of terms
TERM_RANGE = (2, 19)  # 2..99 was not learnable by the demo policy in a CPU warm-up (docs/reproduction.md)
NUM_TRAIN_PER_LEVEL = 600
NUM_HELDOUT_PER_LEVEL = 32
PROMPT = (
    "What is {expr}? Add one number per line, then give the result on the last line in the form "
    "Answer: $Answer"
)
DATA_DIR = Path(__file__).resolve().parents[2] / "examples" / "data"
FILES = {"train": "reasoning_train.parquet", "heldout": "reasoning_heldout.parquet"}


def expression(terms: list[int]) -> str:
    """``[12, 4, 17]`` -> ``"12+4+17"``."""
    return "+".join(str(t) for t in terms)


def solution_steps(terms: list[int]) -> list[tuple[list[int], int]]:
    """The reference scratchpad as (operands, result) per line: the running total plus the next term.

    For terms ``t_1..t_n``: line ``i`` (1..n-1) is ``S_i + t_{i+1} = S_{i+1}`` with ``S_1 = t_1``."""
    if len(terms) < 2:
        raise ValueError(f"a sum needs at least 2 terms, got {terms}")
    steps, total = [], terms[0]
    for t in terms[1:]:
        steps.append(([total, t], total + t))
        total += t
    return steps


def render(steps: list[tuple[list[int], int]], answer: int | None) -> str:
    """Lines ``a+b=c`` and, unless ``answer`` is None, the last line ``Answer: N``."""
    lines = [f"{expression(ops)}={res}" for ops, res in steps]
    if answer is not None:
        lines.append(f"Answer: {answer}")
    return "\n".join(lines)


def reference_solution(terms: list[int]) -> str:
    """The full, correct scratchpad and answer line for ``terms``."""
    return render(solution_steps(terms), sum(terms))


def make_rows(seed: int = SEED) -> dict[str, list[dict]]:
    """``{"train": [...], "heldout": [...]}``: distinct problems per level, the two splits disjoint as
    multisets of terms, deterministic for ``seed`` (Python's ``random.Random``)."""
    rng = random.Random(seed)
    seen: set[tuple[int, ...]] = set()
    picked: dict[str, list[list[int]]] = {"heldout": [], "train": []}
    for level in LEVELS:
        for split, count in (("heldout", NUM_HELDOUT_PER_LEVEL), ("train", NUM_TRAIN_PER_LEVEL)):
            got = 0
            while got < count:
                terms = [rng.randint(*TERM_RANGE) for _ in range(level)]
                key = tuple(sorted(terms))
                if key in seen:
                    continue
                seen.add(key)
                picked[split].append(terms)
                got += 1
    out: dict[str, list[dict]] = {}
    for split, problems in picked.items():
        rng.shuffle(problems)
        out[split] = [
            {
                "data_source": DATA_SOURCE,
                "prompt": [{"role": "user", "content": PROMPT.format(expr=expression(terms))}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": str(sum(terms))},
                "extra_info": {"split": split, "index": i, "level": len(terms), "terms": terms},
            }
            for i, terms in enumerate(problems)
        ]
    return out


def write(out_dir: Path, seed: int = SEED) -> list[Path]:
    """Write ``FILES`` into ``out_dir``; returns the paths written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for split, rows in make_rows(seed).items():
        path = out_dir / FILES[split]
        pq.write_table(pa.Table.from_pylist(rows), path, compression="zstd")
        written.append(path)
    return written


def differences(reference_dir: Path, seed: int = SEED) -> list[str]:
    """Files in ``reference_dir`` whose rows differ from a fresh generation."""
    import pyarrow.parquet as pq

    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        for fresh in write(Path(tmp), seed):
            ref = reference_dir / fresh.name
            if not ref.is_file():
                problems.append(f"{ref}: missing (run python -m megatron_hapo.demo.task)")
            elif pq.read_table(ref).to_pylist() != pq.read_table(fresh).to_pylist():
                problems.append(
                    f"{ref}: rows differ from the generator's (run python -m megatron_hapo.demo.task)"
                )
    return problems


if __name__ == "__main__":  # the command lives in megatron_hapo/cli/demo_task.py
    from megatron_hapo.cli.demo_task import main

    sys.exit(main())
