"""The demo's closing summary from metrics rows."""

import math

import pytest

from megatron_hapo.demo.summary import format_summary, summarize


def _rows(n=10):
    rows = [
        {"step": 0, "eval/reasoning_heldout/avg@4": 0.25, "eval/avg@4": 0.25}
    ]  # + the mean over benchmarks
    for s in range(1, n + 1):
        row = {"step": s, "response_length/mean": 30.0 + s, "entropy/mean": 1.0 - s / 20}
        if s % 5 == 0:
            row["eval/reasoning_heldout/avg@4"] = row["eval/avg@4"] = 0.25 + 0.05 * s
        rows.append(row)
    return rows


def test_summary_compares_before_and_after():
    s = summarize(_rows())
    assert s.heldout == {"eval/reasoning_heldout/avg@4": (0, 0.25, 10, 0.75)}
    assert math.isclose(s.gain(), 0.5)
    assert s.length == (31.5, 39.5)  # steps 1-2 vs 9-10
    assert len(s.entropy) == 5 and s.entropy == sorted(s.entropy, reverse=True)
    text = "\n".join(format_summary(s))
    assert "0.250 (step 0) -> 0.750 (step 10), +0.500" in text and "31.5 -> 39.5 tokens" in text


def test_summary_without_evaluation_or_steps_says_what_is_missing():
    rows = [r for r in _rows() if "response_length/mean" in r]
    rows = [{k: v for k, v in r.items() if not k.startswith("eval/")} for r in rows]
    with pytest.raises(ValueError, match="no held-out evaluation"):
        summarize(rows).gain()
    assert "not evaluated" in format_summary(summarize(rows))[0]
    with pytest.raises(ValueError, match="no training step"):
        summarize([{"step": 0, "eval/x/avg@4": 0.1}])
