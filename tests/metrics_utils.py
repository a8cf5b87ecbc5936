"""Comparing a run's metrics.jsonl rows with its exact repeat (a resume, another schedule)."""

from __future__ import annotations


def is_timing(key: str) -> bool:
    """Whether a metric depends on the machine's load rather than on the run: timings, throughputs and
    scorer deadlines (``reward/timeouts``)."""
    return key.startswith("time/") or key.endswith("_s") or "per_s" in key or key == "reward/timeouts"
