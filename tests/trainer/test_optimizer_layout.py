"""The optimizer's common state between EP = 1 (one optimizer) and EP > 1 (a chained dense + experts pair), in the
shapes Megatron's distributed optimizer saves and loads (``DistributedOptimizer.state_dict``). The tensors' keys
and a real load across the two are checked by ``tests/dist_jobs/job_expert_resharding.py``."""

import torch

from megatron_hapo.trainer import optimizer_layout


def _common(groups, scale=None):
    state = {"optimizer": {"param_groups": groups}, "param_state_sharding_type": "fully_reshardable"}
    if scale is not None:  # fp16: DynamicGradScaler.state_dict()
        state["grad_scaler"] = {
            "scale": torch.tensor([scale]),
            "growth_tracker": 3,
            "hysteresis_tracker": 2,
        }
    return state


DENSE = {"wd_mult": 1.0, "lr_mult": 1.0, "is_expert_parallel": False, "step": 7}
EXPERTS = {"wd_mult": 1.0, "lr_mult": 1.0, "is_expert_parallel": True, "step": 7}


def test_a_flat_checkpoint_gives_every_part_of_a_chained_run_its_param_groups_and_loss_scale():
    loaded = {
        **_common([DENSE, EXPERTS], scale=512.0),
        0: {"param_state": "dense"},
        1: {"param_state": "experts"},
    }
    reshaped = optimizer_layout.reshape_loaded(loaded, chained=True)
    assert set(reshaped) == {0, 1}
    for i, tensors in ((0, "dense"), (1, "experts")):
        part = reshaped[i]
        assert part["param_state"] == tensors
        assert part["param_state_sharding_type"] == "fully_reshardable"
        assert DENSE in part["optimizer"]["param_groups"] and EXPERTS in part["optimizer"]["param_groups"]
        assert float(part["grad_scaler"]["scale"]) == 512.0
        assert part["grad_scaler"]["growth_tracker"] == 3


def test_a_chained_checkpoint_gives_a_flat_run_the_smaller_of_its_parts_loss_scales():
    loaded = {
        0: _common([DENSE], scale=1024.0),
        1: _common([EXPERTS], scale=256.0),
        "param_state": "all",
    }
    reshaped = optimizer_layout.reshape_loaded(loaded, chained=False)
    assert reshaped["param_state"] == "all"
    groups = reshaped["optimizer"]["param_groups"]
    assert groups[-2:] == [DENSE, EXPERTS]  # the exact matches last, so they win
    assert float(reshaped["grad_scaler"]["scale"]) == 256.0


def test_without_a_loss_scale_none_is_made_up_and_a_checkpoint_in_this_runs_shape_passes_as_it_is():
    loaded = {**_common([DENSE, EXPERTS]), 0: {"param_state": "dense"}, 1: {"param_state": "experts"}}
    assert all("grad_scaler" not in part for part in optimizer_layout.reshape_loaded(loaded, True).values())
    same = {0: _common([DENSE], 8.0), 1: _common([EXPERTS], 8.0)}
    assert optimizer_layout.reshape_loaded(same, chained=True) is same
