"""Activation recompute (``model.recompute_granularity``, the recipes' ``full``) gives the update of no
recompute, with either core attention of the local spec and with one-sequence rows (no mask: causal) or
packed rows (a mask). On the CPU the recomputed forward runs inside autograd's backward, outside the
CUDA-to-CPU compatibility mode, where Megatron's default causal mask used to be built on "cuda"."""

from __future__ import annotations

import pytest
import torch

from tests.parallel_utils import world_of_one
from tests.trainer.batching_data import N_SAMPLES, varied_batch

FIXED = ["data.max_tokens_per_micro_batch=null", "data.max_tokens_per_old_micro_batch=null"]
PACKED = ["data.max_tokens_per_micro_batch=96", "data.max_tokens_per_old_micro_batch=200"]


def _step(model_dir, attention: str, recompute: str, layout: list[str]):
    """(metrics, parameters) after one HAPO step (old-policy pass + two optimizer updates) on a fixed batch."""
    from megatron_hapo.config import load_config
    from megatron_hapo.trainer.loop import learn
    from megatron_hapo.trainer.policy import Policy

    overrides = [
        f"model.hf_path={model_dir}", "model.load_weights=true", f"model.local_attention={attention}",
        f"model.recompute_granularity={recompute}", "data.train_batch_size=4", "data.mini_batch_size=2",
        "data.micro_batch_size=2", f"sampling.train.n={N_SAMPLES}", "optim.lr=1e-2", "precision.dtype=fp32",
        "parallel.use_distributed_optimizer=false", "data.max_prompt_length=16", "rollout.max_new_tokens=40",
        *layout,
    ]  # fmt: skip
    cfg = load_config("examples/configs/tiny_cpu.yaml", overrides, check_env=False)
    with world_of_one():
        torch.manual_seed(0)
        policy = Policy(cfg, optimizer_steps=2)
        _, metrics = learn(cfg, policy, varied_batch())
        params = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    return metrics, params


@pytest.mark.parametrize("layout", [FIXED, PACKED], ids=["one-sequence-rows", "packed-rows"])
@pytest.mark.parametrize("attention", ["unfused", "sdpa"])
def test_recompute_gives_the_update_of_no_recompute(peaked_model, attention, layout):
    ref_metrics, ref_params = _step(peaked_model, attention, "none", layout)
    for recompute in ("selective", "full"):
        metrics, params = _step(peaked_model, attention, recompute, layout)
        for key in ("actor/pg_loss", "optim/grad_norm", "entropy/mean"):
            assert metrics[key] == pytest.approx(ref_metrics[key], rel=1e-5, abs=1e-7), (recompute, key)
        for name, p in params.items():
            torch.testing.assert_close(p, ref_params[name], rtol=1e-5, atol=1e-7, msg=f"{recompute}: {name}")
    assert ref_metrics["optim/grad_norm"] > 0
