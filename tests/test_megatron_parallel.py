"""Megatron-Core runs on CPU through megatron_hapo.parallel: layouts, checkpoints, optimizer.

The checks themselves are in tests/dist_jobs/job_megatron_layouts.py (one torchrun launch per world
size, since each launch costs ~10 s of start-up on a 2-core machine).
"""

import pytest

from tests.torchrun_utils import run_torchrun


@pytest.mark.dist
@pytest.mark.parametrize("world", [2, 4])
def test_layouts_match_tp1_and_checkpoints_reshard(world, tmp_path):
    out = run_torchrun("job_megatron_layouts.py", world, str(tmp_path), timeout=600)
    assert "[job] OK" in out, out[-3000:]


def test_smoke_training_halves_loss_in_process(capsys):
    """The Megatron smoke run (python -m megatron_hapo.cli.smoke), at world size one, inside pytest."""
    from megatron_hapo.cli import smoke

    smoke.main(["--steps", "30"])
    out = capsys.readouterr().out
    assert "loss" in out and "FAILED" not in out
