"""Prompt datasets: rows from parquet/JSONL files, de-duplicated on request, rendered with the
tokenizer's chat template, tokenized, and length-limited (drop, left-truncate or fail; always counted).

Everything is loaded and tokenized once at construction (DAPO-Math-17k: ~17k unique prompts), so
length filtering is exact and ``len()`` is known before training starts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from megatron_hapo.data.rows import DataError, PromptRow, RowError, RowKeys, iter_records, parse_record
from megatron_hapo.rewards.registry import ground_truth_problem

if TYPE_CHECKING:
    from megatron_hapo.config.schema import DataConfig

logger = logging.getLogger(__name__)

_TOKENIZE_CHUNK = 1024
_MAX_EXAMPLES = 5  # examples of each problem kept for the log


@dataclass(frozen=True)
class PromptSample:
    """One prompt ready for rollout.

    index: position in the dataset (what the sampler yields); prompt_ids: ``[prompt_len]`` token ids of
    the rendered prompt (chat template + generation prompt; left-truncated if configured);
    data_source / ground_truth / extra_info: passed to the reward scorer; source: ``file row N``.
    """

    index: int
    prompt_ids: list[int]
    data_source: str
    ground_truth: str
    extra_info: dict[str, Any]
    source: str


@dataclass
class DatasetStats:
    """What loading did to the rows; nothing is lost without being counted here.

    rows_read: records in the files; bad_rows: skipped malformed rows (bad_rows=skip); duplicates: rows
    removed by dedup; dedup_conflicts: duplicates whose ground truth differed from the kept row;
    too_long_dropped / truncated: prompts over max_prompt_length; kept: rows in the dataset.
    examples: a few (file row, reason) per problem kind, for the log.
    """

    rows_read: int = 0
    bad_rows: int = 0
    duplicates: int = 0
    dedup_conflicts: int = 0
    too_long_dropped: int = 0
    truncated: int = 0
    kept: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    def note(self, kind: str, text: str) -> None:
        bucket = self.examples.setdefault(kind, [])
        if len(bucket) < _MAX_EXAMPLES:
            bucket.append(text)

    def summary(self) -> str:
        return (
            f"{self.kept} prompts kept of {self.rows_read} rows read: {self.bad_rows} bad rows skipped, "
            f"{self.duplicates} duplicates removed ({self.dedup_conflicts} with a different ground truth), "
            f"{self.too_long_dropped} too long dropped, {self.truncated} left-truncated"
        )


class PromptDataset:
    """Prompts from one or more files, tokenized. ``ds[i]`` is a :class:`PromptSample`.

    files: .parquet / .jsonl paths. tokenizer: a Hugging Face tokenizer (chat template needed when
    ``apply_chat_template``). max_prompt_length: token limit; truncation: ``drop`` | ``left`` | ``error``.
    dedup: keep only the first row of each distinct prompt (by its messages). bad_rows: ``error`` raises
    DataError naming the file and row; ``skip`` skips and counts. keys: column names (RowKeys).
    scorer: the reward scorer rows are routed with (``reward.scorer``; ``auto`` routes by data_source):
    a ground truth that scorer could never match (empty, normalises to nothing, does not parse) is a bad
    row. None skips that check (prompts without rewards).
    """

    def __init__(
        self,
        files: Sequence[str | Path],
        tokenizer: Any,
        *,
        max_prompt_length: int,
        truncation: Literal["drop", "left", "error"] = "drop",
        dedup: bool = False,
        bad_rows: Literal["error", "skip"] = "error",
        apply_chat_template: bool = True,
        keys: RowKeys | None = None,
        scorer: str | None = "auto",
    ):
        if not files:
            raise DataError("no data files given (data.train_files / eval.benchmarks)")
        if max_prompt_length < 1:
            raise DataError(
                f"max_prompt_length must be >= 1 (data.max_prompt_length), got {max_prompt_length}"
            )
        if truncation not in ("drop", "left", "error"):
            raise DataError(f"data.truncation must be drop, left or error, got {truncation!r}")
        if bad_rows not in ("error", "skip"):
            raise DataError(f"data.bad_rows must be error or skip, got {bad_rows!r}")
        if apply_chat_template and not getattr(tokenizer, "chat_template", None):
            name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
            raise DataError(
                f"tokenizer {name!r} has no chat template; use a tokenizer with one or set data.apply_chat_template=false"
            )
        self.files = [str(f) for f in files]
        self.keys = keys or RowKeys()
        self.max_prompt_length = max_prompt_length
        self.truncation = truncation
        self.scorer = scorer
        self.stats = DatasetStats()
        rows = self._read(bad_rows, dedup)
        self._samples = self._tokenize(rows, tokenizer, apply_chat_template)
        self.stats.kept = len(self._samples)
        logger.info("prompt dataset %s: %s", self.files, self.stats.summary())
        for kind, examples in self.stats.examples.items():
            logger.info("  %s, e.g.: %s", kind, "; ".join(examples))
        if not self._samples:
            raise DataError(f"{self.files}: no usable prompts ({self.stats.summary()})")

    @classmethod
    def from_config(
        cls,
        cfg: DataConfig,
        tokenizer: Any,
        files: Sequence[str] | None = None,
        *,
        scorer: str | None = "auto",
    ) -> PromptDataset:
        """The dataset a ``data`` config section describes; ``files`` defaults to ``cfg.train_files``;
        ``scorer``: ``reward.scorer`` (see the class)."""
        keys = RowKeys(
            prompt=cfg.prompt_key,
            data_source=cfg.data_source_key,
            ground_truth=cfg.ground_truth_key,
            extra_info=cfg.extra_info_key,
            default_data_source=cfg.default_data_source,
        )
        return cls(
            list(files if files is not None else cfg.train_files),
            tokenizer,
            max_prompt_length=cfg.max_prompt_length,
            truncation=cfg.truncation,
            dedup=cfg.dedup,
            bad_rows=cfg.bad_rows,
            apply_chat_template=cfg.apply_chat_template,
            keys=keys,
            scorer=scorer,
        )

    # ------------------------------------------------------------------------------------------ loading

    def _read(self, bad_rows: str, dedup: bool) -> list[PromptRow]:
        rows: list[PromptRow] = []
        seen: dict[str, PromptRow] = {}
        for file in self.files:
            for row_idx, record, problem in iter_records(file, self.keys.columns()):
                self.stats.rows_read += 1
                try:
                    if problem is not None:
                        raise RowError(problem)
                    row = parse_record(record, self.keys)
                    if self.scorer is not None:
                        reason = ground_truth_problem(row.data_source, row.ground_truth, self.scorer)
                        if reason is not None:
                            raise RowError(reason)
                except RowError as e:
                    if bad_rows == "error":
                        raise DataError(
                            f"{file} row {row_idx}: {e}. Fix the row, or set data.bad_rows=skip to skip and count such rows"
                        ) from None
                    self.stats.bad_rows += 1
                    self.stats.note("bad rows skipped", f"{file} row {row_idx}: {e}")
                    continue
                row = PromptRow(
                    row.messages, row.data_source, row.ground_truth, row.extra_info, file, row_idx
                )
                if dedup:
                    key = json.dumps(row.messages, sort_keys=True, ensure_ascii=False)
                    first = seen.get(key)
                    if first is not None:
                        self.stats.duplicates += 1
                        if first.ground_truth != row.ground_truth:
                            self.stats.dedup_conflicts += 1
                            self.stats.note(
                                "duplicates with a different ground truth (first kept)",
                                f"{row.where} ({row.ground_truth!r}) vs {first.where} ({first.ground_truth!r})",
                            )
                        continue
                    seen[key] = row
                rows.append(row)
        if self.stats.dedup_conflicts:
            logger.warning(
                "%d duplicated prompts had a different ground truth; the first occurrence was kept",
                self.stats.dedup_conflicts,
            )
        return rows

    def _render(self, row: PromptRow, tokenizer: Any, apply_chat_template: bool) -> str:
        if apply_chat_template:
            return tokenizer.apply_chat_template(row.messages, tokenize=False, add_generation_prompt=True)
        return "\n".join(m["content"] for m in row.messages)

    def _tokenize(
        self, rows: list[PromptRow], tokenizer: Any, apply_chat_template: bool
    ) -> list[PromptSample]:
        samples: list[PromptSample] = []
        limit = self.max_prompt_length
        for start in range(0, len(rows), _TOKENIZE_CHUNK):
            chunk = rows[start : start + _TOKENIZE_CHUNK]
            texts = [self._render(r, tokenizer, apply_chat_template) for r in chunk]
            # The chat template already holds any BOS; raw prompts get the tokenizer's special tokens.
            ids_list = tokenizer(texts, add_special_tokens=not apply_chat_template)["input_ids"]
            for row, ids in zip(chunk, ids_list, strict=True):
                ids = list(ids)
                if len(ids) > limit:
                    if self.truncation == "error":
                        raise DataError(
                            f"{row.where}: prompt is {len(ids)} tokens, over data.max_prompt_length={limit}; "
                            "raise the limit or set data.truncation=drop|left"
                        )
                    if self.truncation == "drop":
                        self.stats.too_long_dropped += 1
                        self.stats.note("too long, dropped", f"{row.where} ({len(ids)} tokens)")
                        continue
                    self.stats.truncated += 1
                    self.stats.note("left-truncated", f"{row.where} ({len(ids)} tokens)")
                    ids = ids[-limit:]
                samples.append(
                    PromptSample(
                        index=len(samples),
                        prompt_ids=ids,
                        data_source=row.data_source,
                        ground_truth=row.ground_truth,
                        extra_info=row.extra_info,
                        source=row.where,
                    )
                )
        return samples

    # ------------------------------------------------------------------------------------------- access

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: int) -> PromptSample:
        return self._samples[index]

    def batch(self, indices: Sequence[int]) -> list[PromptSample]:
        """The samples at ``indices`` (e.g. one batch of the data order), in that order."""
        return [self._samples[i] for i in indices]
