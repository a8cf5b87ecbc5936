"""Reward integrity at load time (issue 17, bug 3) and per-line decoding (bug 8): a ground truth the
scorer could never match, and a line that is not UTF-8, are bad rows, handled per ``data.bad_rows``."""

from __future__ import annotations

import json

import pytest

from megatron_hapo.data import DataError, PromptDataset

from .conftest import row, write_jsonl, write_parquet

UNSCORABLE = [
    ("", "math_dapo", "is empty"),
    ("   ", "math_dapo", "is empty"),
    ("\t\n", "aime24", "is empty"),
    ("dollars", "math_dapo", "empty after the DAPO scorer's normalisation"),  # "Answer: dollars" matched it
    ("$ $", "math_dapo", "empty after the DAPO scorer's normalisation"),
    ("}{", "aime24", "Math-Verify cannot parse"),
    ("\\text{}", "aime24", "Math-Verify cannot parse"),
]


def make(files, tokenizer, **kw):
    return PromptDataset([str(f) for f in files], tokenizer, max_prompt_length=256, **kw)


@pytest.mark.parametrize("gt, source, reason", UNSCORABLE)
def test_unscorable_ground_truth_is_a_bad_row(tmp_path, tokenizer, gt, source, reason):
    f = write_jsonl(tmp_path / "gt.jsonl", [row("fine"), row("What is 1 + 1?", gt=gt, source=source)])
    with pytest.raises(DataError) as e:
        make([f], tokenizer)
    assert f"{f} row 1: " in str(e.value) and reason in str(e.value) and "data.bad_rows=skip" in str(e.value)
    ds = make([f], tokenizer, bad_rows="skip")
    assert len(ds) == 1 and ds.stats.bad_rows == 1 and reason in ds.stats.examples["bad rows skipped"][0]


def test_non_finite_number_and_parquet_empty_string(tmp_path, tokenizer):
    f = tmp_path / "nan.jsonl"
    f.write_text(json.dumps(row("a")) + "\n" + json.dumps(row("b")).replace('"1"', "NaN") + "\n")
    with pytest.raises(DataError, match=r"nan\.jsonl row 1: ground truth .* is nan"):
        make([f], tokenizer)
    p = write_parquet(tmp_path / "e.parquet", [row("a"), row("b", gt=" ")])
    with pytest.raises(DataError, match=r"e\.parquet row 1: ground truth .* is empty"):
        make([p], tokenizer)


def test_the_routed_scorer_decides(tmp_path, tokenizer):
    """'dollars' is a fine Math-Verify gold (a word) but nothing for the DAPO scorer; a forced scorer wins."""
    f = write_jsonl(tmp_path / "s.jsonl", [row("q", gt="dollars", source="aime24")])
    assert make([f], tokenizer)[0].ground_truth == "dollars"
    with pytest.raises(DataError, match="DAPO scorer"):
        make([f], tokenizer, scorer="dapo")
    assert (
        len(make([write_jsonl(tmp_path / "e.jsonl", [row("q", gt="dollars")])], tokenizer, scorer=None)) == 1
    )


def test_a_bad_byte_is_a_bad_row_named_by_its_line(tmp_path, tokenizer):
    f = tmp_path / "bytes.jsonl"
    good = json.dumps(row("What is 2 + 2?")).encode()
    bad = json.dumps(row("What is 3 + 3?")).encode().replace(b"3 + 3", b"3 \xff 3")
    f.write_bytes(good + b"\n\n" + bad + b"\n" + good.replace(b"2 + 2", b"4 + 4") + b"\n")
    with pytest.raises(DataError) as e:
        make([f], tokenizer)
    assert f"{f} row 1: line 3: not UTF-8 (byte 0xff" in str(e.value) and "data.bad_rows=skip" in str(e.value)
    ds = make([f], tokenizer, bad_rows="skip")
    assert len(ds) == 2 and ds.stats.bad_rows == 1 and ds.stats.rows_read == 3
