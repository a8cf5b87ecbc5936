"""Reads prompt rows from parquet (the verl/HAPO schema) or JSONL and checks each one.

A row, in both formats::

    {"prompt": [{"role": "user", "content": "..."}, ...],   # or a plain string = one user turn
     "data_source": "math_dapo",
     "reward_model": {"ground_truth": "34", ...},
     "extra_info": {...}}                                    # optional

Column names are configurable (``data.prompt_key`` etc.; the ground truth is a dotted path). A row
that breaks the schema raises :class:`DataError` naming the file and the row (0-based record index;
for JSONL also the line number), or is skipped and counted when the caller asks for that.
"""

from __future__ import annotations

import codecs
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_hapo.config.errors import HapoError

_PARQUET_BATCH_ROWS = 4096
DATA_SUFFIXES = (".parquet", ".jsonl", ".json")  # what iter_records reads (config validation checks it too)


class DataError(HapoError, ValueError):
    """A dataset file or row is unusable; the message names the file, the row and what to do."""


class RowError(ValueError):
    """One row breaks the schema (the reason; the caller adds file and row)."""


@dataclass(frozen=True)
class RowKeys:
    """Where the fields live in a record: column names, ground truth as a dotted path."""

    prompt: str = "prompt"
    data_source: str = "data_source"
    ground_truth: str = "reward_model.ground_truth"
    extra_info: str = "extra_info"
    default_data_source: str | None = None

    def columns(self) -> list[str]:
        """Top-level columns to read."""
        return list(
            dict.fromkeys([self.prompt, self.data_source, self.ground_truth.split(".")[0], self.extra_info])
        )


@dataclass(frozen=True)
class PromptRow:
    """One checked row. messages: chat turns ``[{"role", "content"}, ...]``; file/row: where it came from."""

    messages: list[dict[str, Any]]
    data_source: str
    ground_truth: str
    extra_info: dict[str, Any] = field(default_factory=dict)
    file: str = ""
    row: int = -1

    @property
    def where(self) -> str:
        return f"{self.file} row {self.row}"


def _dig(record: dict[str, Any], dotted: str) -> Any:
    value: Any = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _messages(prompt: Any, key: str) -> list[dict[str, Any]]:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise RowError(f"'{key}' is an empty string")
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list | tuple) or not prompt:
        raise RowError(
            f"'{key}' must be a non-empty list of {{role, content}} messages or a string, got {type(prompt).__name__}"
        )
    out = []
    for i, m in enumerate(prompt):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise RowError(
                f"'{key}'[{i}] must be a {{role: str, content: str}} message, got {str(m)[:120]!r}"
            )
        out.append(dict(m))
    return out


def parse_record(record: Any, keys: RowKeys) -> PromptRow:
    """Check one raw record and turn it into a PromptRow (without file/row). Raises RowError."""
    if not isinstance(record, dict):
        raise RowError(f"a row must be a JSON object / struct, got {type(record).__name__}")
    if keys.prompt not in record:
        raise RowError(f"no '{keys.prompt}' field (data.prompt_key)")
    messages = _messages(record[keys.prompt], keys.prompt)
    source = record.get(keys.data_source)
    if source is None:
        source = keys.default_data_source
    if not isinstance(source, str) or not source:
        raise RowError(
            f"no '{keys.data_source}' string (data.data_source_key); set data.default_data_source for files without it"
        )
    gt = _dig(record, keys.ground_truth)
    if isinstance(gt, bool) or not isinstance(gt, str | int | float):
        got = "nothing" if gt is None else type(gt).__name__
        raise RowError(
            f"ground truth '{keys.ground_truth}' (data.ground_truth_key) must be a string or number, got {got}"
        )
    if isinstance(gt, float) and not math.isfinite(gt):
        raise RowError(f"ground truth '{keys.ground_truth}' is {gt}, not an answer")
    if isinstance(gt, str) and not gt.strip():
        # an empty reference scores nothing, or worse: "" == "" once normalised gave +1 to "Answer: dollars"
        raise RowError(
            f"ground truth '{keys.ground_truth}' is empty ({gt!r}): nothing can be scored against it"
        )
    extra = record.get(keys.extra_info)
    if extra is None:
        extra = {}
    if not isinstance(extra, dict):
        raise RowError(f"'{keys.extra_info}' must be an object/struct or absent, got {type(extra).__name__}")
    return PromptRow(messages=messages, data_source=source, ground_truth=str(gt), extra_info=dict(extra))


def iter_records(path: str | Path, columns: list[str] | None = None) -> Iterator[tuple[int, Any, str | None]]:
    """Yield ``(row_index, record, problem)`` for every record of a .parquet or .jsonl/.json file.

    A .json file is JSON Lines too, or one JSON array of records (``pandas.DataFrame.to_json(orient="records")``,
    ``json.dump(rows)``): the first character that is not white space tells which.
    columns: parquet columns to read (those present; None = all); JSONL records are read whole.
    ``problem`` is None, or why the record could not even be decoded (JSONL: a line that is not UTF-8 or
    not JSON; it names the line); then record is None.
    Raises DataError for a missing file, an unknown extension, an unreadable parquet file or a JSON array that
    is not valid JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _iter_parquet(path, columns)
    elif suffix == ".json" and _starts_an_array(path):
        yield from _iter_json_array(path)
    elif suffix in DATA_SUFFIXES:
        yield from _iter_jsonl(path)
    else:
        raise DataError(f"{path}: unknown format '{suffix}'; use .parquet or .jsonl")


def _iter_parquet(path: Path, columns: list[str] | None) -> Iterator[tuple[int, Any, str | None]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    if columns is not None:
        present = set(pf.schema_arrow.names)
        columns = [c for c in columns if c in present]  # absent ones are reported per row by parse_record
    row = 0
    for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns):
        for record in batch.to_pylist():
            yield row, record, None
            row += 1


def _starts_an_array(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(4096).removeprefix(codecs.BOM_UTF8).lstrip()
    return head.startswith(b"[")


def _iter_json_array(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    try:
        records = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        where = (
            f"line {e.lineno}, column {e.colno}: {e.msg}" if isinstance(e, json.JSONDecodeError) else str(e)
        )
        raise DataError(f"{path}: a JSON array of records that does not parse ({where})") from None
    for row, record in enumerate(records):
        yield row, record, None


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    # Decoded line by line (not as one text stream) so that a bad byte costs one row, named by its line,
    # instead of the whole file with an anonymous UnicodeDecodeError.
    row = 0
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if line_no == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)  # written by some Windows editors and exporters
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield (
                    row,
                    None,
                    f"line {line_no}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})",
                )
                row += 1
                continue
            if not line.strip():
                continue  # blank lines hold no row
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                yield row, None, f"line {line_no}: invalid JSON ({e.msg})"
            else:
                yield row, record, None
            row += 1
