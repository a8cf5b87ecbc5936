"""The read-back check's arithmetic (``sync/weight_sync.py::verify_read_back``), on what an engine of each dtype
hands back; the check on real engines is ``test_read_back.py``."""

from __future__ import annotations

import pytest
import torch

from megatron_hapo.sync import WeightSyncError
from megatron_hapo.sync.weight_sync import verify_read_back


class Holding:
    """What ``RolloutEngine.get_weight`` gives back: the engine's copy of the weight, as float32."""

    def __init__(self, value: torch.Tensor):
        self.value = value

    def get_weight(self, name: str) -> torch.Tensor:
        return self.value.float()


@pytest.mark.parametrize("delta", [1e-4, 1e-3, 0.0039])
def test_a_lost_small_update_is_caught_at_the_engines_dtype(delta):
    """A float32 engine still holding a norm weight of 1.0 (a bfloat16 value) after an update of ``delta`` that
    never arrived: at float32 the check fails; accepting any engine dtype (what it did for every engine) it
    passed, since the update rounds back to 1.0 in bfloat16."""
    old, sent = torch.ones(8), torch.ones(8) + delta
    stale = Holding(old)
    with pytest.raises(
        WeightSyncError, match=r"not a rounding to torch.float32\): the weights did not arrive"
    ):
        verify_read_back(stale, "model.norm.weight", sent, torch.float32)
    verify_read_back(stale, "model.norm.weight", sent, None)  # the blind spot of an unknown dtype
    verify_read_back(Holding(sent), "model.norm.weight", sent, torch.float32)  # arrived: exact
    verify_read_back(Holding(sent.to(torch.bfloat16)), "model.norm.weight", sent, torch.bfloat16)  # rounded


def test_the_run_synchronizer_checks_at_the_served_dtype():
    from megatron_hapo.config import load_config
    from megatron_hapo.rollout.types import RequestGate
    from megatron_hapo.sync import make_synchronizer

    class Engine:  # make_synchronizer reads only what it builds the transport from
        name, request_gate, num_engine_ranks = "in-process", RequestGate(), 1

    for dtype in ("float32", "bfloat16"):
        cfg = load_config("examples/configs/tiny_cpu.yaml", [f"model.dtype={dtype}"], check_env=False)
        assert make_synchronizer(cfg, Engine(), "unused").engine_dtype == getattr(torch, dtype)
