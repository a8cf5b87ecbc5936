"""TP = 2 and TP = 4 (torchrun, gloo, CPU) equal TP = 1: torch path and, interpreted, the Triton kernels."""

from __future__ import annotations

import importlib.util

import pytest

from tests.torchrun_utils import run_torchrun


@pytest.mark.dist
@pytest.mark.parametrize("tp", [2, 4])
def test_vocab_parallel_matches_tp1(tp):
    # The Triton kernels (interpreted) are checked under TP once, at TP = 2: each launch costs start-up time.
    env = {"TRITON_INTERPRET": "1"} if tp == 2 and importlib.util.find_spec("triton") is not None else {}
    out = run_torchrun("job_ops_tp.py", tp, timeout=300, env=env)
    expected = "'torch', 'triton'" if env else "'torch'"
    assert out.count(f"ops TP checks passed for [{expected}]") == tp, out[-3000:]
