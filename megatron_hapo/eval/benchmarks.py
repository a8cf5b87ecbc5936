"""Benchmark files: the prompt schema of training data (parquet or JSONL, ``data.*`` keys), one file per
benchmark (AIME24, AIME25, AMC, MATH500, OlympiadBench, Minerva, ... supplied by the user).

A row that breaks the schema is an error naming the benchmark, the file and the row: a benchmark's
denominator must never shrink silently. Prompts over the length limit fail too unless the caller asks
for ``truncation="left"`` (or ``"drop"``, which is counted in ``Benchmark.stats``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from megatron_hapo.data import DataError, DatasetStats, PromptDataset, PromptSample, RowKeys

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Benchmark:
    """One loaded benchmark: its name, file, tokenized prompts (in file order) and loading stats."""

    name: str
    path: str
    prompts: list[PromptSample]
    stats: DatasetStats


def benchmark_names(benchmarks: Mapping[str, str | Path] | Sequence[str | Path]) -> dict[str, str]:
    """``{name: path}``: a mapping is taken as is; a list is named by file stem (``aime24.parquet`` ->
    ``aime24``). Two files with the same stem are an error (name them explicitly)."""
    if isinstance(benchmarks, Mapping):
        named = {str(k): str(v) for k, v in benchmarks.items()}
    else:
        named = {}
        for path in benchmarks:
            name = Path(path).stem
            if name in named:
                raise DataError(
                    f"benchmarks {named[name]} and {path} both get the name {name!r} (the file stem); "
                    "give names explicitly (--names, or a {name: path} mapping)"
                )
            named[name] = str(path)
    if not named:
        raise DataError("no benchmark files given")
    return named


def load_benchmarks(
    benchmarks: Mapping[str, str | Path] | Sequence[str | Path],
    tokenizer: Any,
    *,
    max_prompt_length: int = 4096,
    truncation: Literal["drop", "left", "error"] = "error",
    apply_chat_template: bool = True,
    keys: RowKeys | None = None,
    max_prompts: int | None = None,
) -> list[Benchmark]:
    """Read and tokenize every benchmark file (see :func:`benchmark_names` for naming).

    max_prompts: keep only the first N prompts of each file (quick looks; None = all).
    Raises DataError naming the benchmark, file and row of the first bad row.
    """
    if max_prompts is not None and max_prompts < 1:
        raise ValueError(f"max_prompts must be >= 1 or None, got {max_prompts}")
    out = []
    for name, path in benchmark_names(benchmarks).items():
        try:
            ds = PromptDataset(
                [path],
                tokenizer,
                max_prompt_length=max_prompt_length,
                truncation=truncation,
                bad_rows="error",
                apply_chat_template=apply_chat_template,
                keys=keys,
            )
        except DataError as e:
            raise DataError(f"benchmark {name!r}: {e}") from None
        if ds.stats.too_long_dropped:
            logger.warning(
                "benchmark %r: %d prompts over %d tokens were dropped; its score is over the rest only",
                name, ds.stats.too_long_dropped, max_prompt_length,
            )  # fmt: skip
        prompts = [ds[i] for i in range(len(ds))]
        out.append(Benchmark(name, path, prompts[:max_prompts] if max_prompts else prompts, ds.stats))
    return out
