"""Distributed entropy statistics and partition invariance over ranks (one torchrun launch, 3 ranks)."""

import pytest

from tests.torchrun_utils import run_torchrun


@pytest.mark.dist
def test_distributed_entropy_stats_and_partition_invariance():
    out = run_torchrun("job_entropy_stats.py", 3, timeout=300)
    assert "all distributed checks passed on 3 ranks" in out
