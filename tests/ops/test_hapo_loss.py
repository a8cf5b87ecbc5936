"""fused_hapo_loss equals composing the op and algorithms.hapo_policy_loss by hand, values and gradients."""

from __future__ import annotations

import pytest
import torch

from megatron_hapo.algorithms import HapoLossConfig, hapo_policy_loss, normalize_entropy
from megatron_hapo.ops import fused_hapo_loss, vocab_parallel_logprob_entropy
from tests.ops._reference import reference_logprob_entropy

B, S, V = 3, 5, 64


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, S, V, generator=g) * 2
    target = torch.randint(0, V, (B, S), generator=g)
    with torch.no_grad():
        lp, _ = reference_logprob_entropy(logits.view(-1, V), target.view(-1))
    # old policy near the current one, so ratios straddle the clip bounds
    old = (lp.view(B, S) + 0.3 * torch.randn(B, S, generator=g, dtype=torch.float64)).float()
    adv = torch.randn(B, S, generator=g)
    mask = torch.ones(B, S)
    mask[1, 3:] = 0
    temp = torch.rand(B, S, generator=g) + 0.5
    rollout = old + 0.1 * torch.randn(B, S, generator=g)
    return logits, target, old, adv, mask, temp, rollout


@pytest.mark.parametrize("flat_logits", [False, True])
def test_fused_loss_equals_manual_composition(flat_logits):
    logits, target, old, adv, mask, temp, rollout = batch()
    with torch.no_grad():
        _, ent_old = reference_logprob_entropy(logits.view(-1, V), target.view(-1), temp.view(-1))
    _, stats = normalize_entropy(ent_old.float().view(B, S), mask)
    config = HapoLossConfig(tis_cap=2.0)
    kwargs = dict(stats=stats, rollout_log_prob=rollout, global_normalizer=40.0)

    x1 = logits.clone().requires_grad_(True)
    inp = x1.view(B * S, V) if flat_logits else x1
    loss, metrics = fused_hapo_loss(
        inp, target, old, adv, mask, config, temperature=temp, chunk_size=4, **kwargs
    )
    loss.backward()

    x2 = logits.clone().requires_grad_(True)
    lp, ent = vocab_parallel_logprob_entropy(x2.view(-1, V), target.view(-1), temp.view(-1), chunk_size=4)
    loss2, metrics2 = hapo_policy_loss(lp.view(B, S), old, adv, ent.view(B, S), mask, config, **kwargs)
    loss2.backward()
    assert torch.equal(loss, loss2) and torch.equal(x1.grad, x2.grad)
    assert metrics.keys() == metrics2.keys() and {"entropy/mean", "tis/weight_mean"} <= metrics.keys()
    for key in metrics:
        torch.testing.assert_close(metrics[key], metrics2[key])

    # ... and the float64 composition (naive log_softmax) agrees to fp32 precision
    x3 = logits.double().requires_grad_(True)
    lp3, ent3 = reference_logprob_entropy(x3.view(-1, V), target.view(-1), temp.view(-1).float())
    loss3, _ = hapo_policy_loss(
        lp3.view(B, S), old.double(), adv.double(), ent3.detach().view(B, S), mask, config, **kwargs
    )
    loss3.backward()
    assert loss.grad_fn is not None and x1.grad.abs().sum() > 0
    torch.testing.assert_close(loss.double(), loss3, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x1.grad.double(), x3.grad, rtol=1e-4, atol=1e-6)


def test_micro_batch_scope_and_scalar_temperature():
    logits, target, old, adv, mask, _, _ = batch(1)
    config = HapoLossConfig(stats_scope="micro_batch", entropy_mode="released", dual_clip_c=3.0)
    x1 = logits.clone().requires_grad_(True)
    loss, _ = fused_hapo_loss(x1, target, old, adv, mask, config, temperature=0.8)
    loss.backward()
    x2 = logits.double().requires_grad_(True)
    lp, ent = reference_logprob_entropy(x2.view(-1, V), target.view(-1), 0.8)
    loss2, _ = hapo_policy_loss(
        lp.view(B, S), old.double(), adv.double(), ent.detach().view(B, S), mask, config
    )
    loss2.backward()
    torch.testing.assert_close(loss.double(), loss2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x1.grad.double(), x2.grad, rtol=1e-4, atol=1e-6)


def test_logits_that_cannot_be_flattened_without_a_copy_are_refused():
    logits, target, old, adv, mask, _, _ = batch()
    config = HapoLossConfig(stats_scope="micro_batch")
    transposed = logits.transpose(0, 1).contiguous().transpose(0, 1)  # [b, s, V] view of [s, b, V] memory
    with pytest.raises(ValueError, match="cannot be flattened"):
        fused_hapo_loss(transposed, target, old, adv, mask, config)
    with pytest.raises(ValueError, match="expected \\[\\*mask.shape, vocab/tp\\]"):
        fused_hapo_loss(logits[:, :4], target, old, adv, mask, config)
    with pytest.raises(ValueError, match="per-token temperature"):
        fused_hapo_loss(logits, target, old, adv, mask, config, temperature=torch.ones(B))
