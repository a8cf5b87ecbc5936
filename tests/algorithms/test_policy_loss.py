"""hapo_policy_loss: TV5, equality with the released loss, gradients, partition invariance, edge cases."""

import dataclasses
import math

import pytest
import torch

from megatron_hapo.algorithms import (
    AGG_MODES,
    EntropyStats,
    HapoLossConfig,
    aggregate_loss,
    hapo_policy_loss,
    hapo_token_terms,
    loss_normalizer,
    normalize_entropy,
)
from tests.algorithms import released_reference as ref

F64 = torch.float64

# TV5 (HAPO_SPEC §14): A, ĥ (signed), r
TV5_A = [1.0, 1.0, 1.0, -1.0, -1.0, -1.0, 1.0, -2.0]
TV5_H = [0.5, 0.5, 1.0, -0.5, -0.5, -1.0, -0.5, 0.3]
TV5_R = [1.0, 1.2, 1.5, 1.0, 0.75, 1.05, 1.3, 12.0]
TV5_EXPECTED = {
    "signed": (
        [1.0, 1.5, 2.0, -0.5, -1.0, 0.0, 1.0, -2.6],  # A′
        [-1.0, -1.8, -2.8, 0.5, 0.75, 0.0, -1.2, 26.0],  # loss
        [-1.0, -1.8, 0.0, 0.5, 0.75, 0.0, 0.0, 0.0],  # ∂loss/∂logp
    ),
    "released": (
        [1.0, 1.5, 2.0, -1.0, -1.5, -1.0, 1.5, -2.6],
        [-1.0, -1.8, -2.8, 1.0, 1.2, 1.05, -1.95, 26.0],
        [-1.0, -1.8, 0.0, 1.0, 0.0, 1.05, -1.95, 0.0],
    ),
}
DAPO_LOSS = [-1.0, -1.2, -1.28, 1.0, 0.8, 1.05, -1.28, 20.0]
DAPO_GRAD = [-1.0, -1.2, 0.0, 1.0, 0.0, 1.05, 0.0, 0.0]


def _tv5_inputs():
    log_prob = torch.log(torch.tensor(TV5_R, dtype=F64)).requires_grad_()
    old = torch.zeros(8, dtype=F64)
    adv = torch.tensor(TV5_A, dtype=F64)
    # with stats (m=0, σ=1, s₊=s₋=1) an entropy e^ĥ maps back to ĥ: this drives the full stats path
    entropy = torch.exp(torch.tensor(TV5_H, dtype=F64))
    return log_prob, old, adv, entropy, torch.ones(8, dtype=torch.bool)


@pytest.mark.parametrize("mode", ["signed", "released"])
def test_tv5_through_the_full_loss(mode):
    log_prob, old, adv, entropy, mask = _tv5_inputs()
    stats = EntropyStats(0.0, 1.0, 1.0, 1.0 if mode == "signed" else -1.0)
    config = HapoLossConfig(entropy_mode=mode, stats_scope="step")
    loss, metrics = hapo_policy_loss(
        log_prob, old, adv, entropy, mask, config, stats=stats, global_normalizer=1
    )
    loss.backward()
    adv_prime, per_token, grad = TV5_EXPECTED[mode]
    assert loss.item() == pytest.approx(sum(per_token), abs=1e-9)
    assert log_prob.grad.tolist() == pytest.approx(grad, abs=1e-9)
    h_hat = torch.tensor(TV5_H, dtype=F64)
    terms = hapo_token_terms(log_prob, old, adv, h_hat if mode == "signed" else h_hat.abs())
    assert terms.advantages.tolist() == pytest.approx(adv_prime, abs=1e-12)
    assert terms.loss.tolist() == pytest.approx(per_token, abs=1e-12)
    assert terms.grad_log_prob.tolist() == pytest.approx(grad, abs=1e-12)
    # the released reference with the same ĥ agrees row by row
    lp = log_prob.detach().clone().requires_grad_()
    ref_loss = ref.policy_loss(lp, old, adv, None, mask, h_hat=h_hat if mode == "signed" else h_hat.abs())
    (ref_loss * (8 + 1e-8)).backward()
    assert lp.grad.tolist() == pytest.approx(grad, abs=1e-7)
    if mode == "signed":  # clipped: rows 3, 7 (high); dual: row 8; DAR up: rows 2, 3, 8; down: rows 4, 6
        assert metrics["clip_frac_high"].item() == pytest.approx(2 / 8)
        assert metrics["clip_frac_low"].item() == 0.0
        assert metrics["clip_frac_dual"].item() == pytest.approx(1 / 8)
        assert metrics["dar/scaled_up_count"].item() == 3
        assert metrics["dar/scaled_down_count"].item() == 2
        assert metrics["h_hat/mean"].item() == pytest.approx(sum(TV5_H) / 8)


def test_tv5_dapo_reference():
    log_prob, old, adv, _, mask = _tv5_inputs()
    config = HapoLossConfig(clip_high=0.28, adaptive_clip=False, adaptive_advantage=False)
    loss, metrics = hapo_policy_loss(log_prob, old, adv, None, mask, config, global_normalizer=1)
    loss.backward()
    assert loss.item() == pytest.approx(sum(DAPO_LOSS), abs=1e-9)
    assert log_prob.grad.tolist() == pytest.approx(DAPO_GRAD, abs=1e-9)
    assert metrics["dar/scaled_up_count"].item() == 0 and metrics["h_hat/mean"].item() == 0


def _random_batch(seed, b=6, t=9, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (b,), generator=gen)
    mask = torch.arange(t)[None] < lengths[:, None]
    old = -torch.rand(b, t, generator=gen, dtype=dtype) * 3
    log_prob = old + 0.2 * torch.randn(b, t, generator=gen, dtype=dtype)
    adv = torch.randn(b, t, generator=gen, dtype=dtype).round(decimals=1)
    entropy = torch.exp(torch.randn(b, t, generator=gen, dtype=dtype) * 1.5)
    entropy[~mask] = 0.0  # as the released pipeline pads
    rollout = old + 0.05 * torch.randn(b, t, generator=gen, dtype=dtype)
    return log_prob, old, adv, entropy, mask, rollout


@pytest.mark.parametrize("mode", ["released", "signed"])
@pytest.mark.parametrize("flags", [(True, True), (True, False), (False, True), (False, False)])
def test_equals_released_compute_policy_loss(mode, flags):
    """stats_scope="micro_batch" = the released compute_policy_loss (token-mean), to float64 precision."""
    adaptive_clip, adaptive_advantage = flags
    for seed in range(8):
        log_prob, old, adv, entropy, mask, _ = _random_batch(seed)
        kwargs = dict(
            clip_low=0.2, clip_high=0.25 if seed % 2 else 0.2, clip_alpha=1.0, adv_beta=0.7 + 0.1 * seed
        )
        config = HapoLossConfig(
            stats_scope="micro_batch",
            entropy_mode=mode,
            adaptive_clip=adaptive_clip,
            adaptive_advantage=adaptive_advantage,
            dual_clip_c=3.0,
            **kwargs,
        )
        lp1 = log_prob.clone().requires_grad_()
        ours, _ = hapo_policy_loss(lp1, old, adv, entropy, mask, config)
        ours.backward()
        lp2 = log_prob.clone().requires_grad_()
        theirs = ref.policy_loss(
            lp2, old, adv, entropy, mask, clip_low=kwargs["clip_low"], clip_high=kwargs["clip_high"],
            clip_ratio_c=3.0, alpha=1.0, beta=kwargs["adv_beta"], adaptive_clip=adaptive_clip,
            adaptive_advantage=adaptive_advantage, mode=mode,
        )  # fmt: skip
        theirs.backward()
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-12, abs=1e-14)
        torch.testing.assert_close(lp1.grad, lp2.grad, rtol=1e-12, atol=1e-14)


def test_step_scope_equals_micro_batch_scope_on_the_stats_tokens():
    """Frozen stats computed on this very micro-batch give the micro-batch loss (θ = θ_old pass)."""
    log_prob, old, adv, entropy, mask, _ = _random_batch(11)
    for mode in ("signed", "released"):
        _, stats = normalize_entropy(entropy, mask, 0.8, mode)
        a, _ = hapo_policy_loss(log_prob, old, adv, entropy, mask, HapoLossConfig(entropy_mode=mode), stats)
        b, _ = hapo_policy_loss(
            log_prob, old, adv, entropy, mask, HapoLossConfig(entropy_mode=mode, stats_scope="micro_batch")
        )
        assert a.item() == pytest.approx(b.item(), rel=1e-12)


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("scope", ["step", "micro_batch"])
def test_gradcheck(agg, scope):
    log_prob, old, adv, entropy, mask, rollout = _random_batch(3, b=4, t=5)
    config = HapoLossConfig(stats_scope=scope, agg=agg, tis_cap=1.5, clip_high=0.28)
    stats = normalize_entropy(entropy, mask)[1] if scope == "step" else None

    def fn(lp):
        return hapo_policy_loss(lp, old, adv, entropy, mask, config, stats, rollout_log_prob=rollout)[0]

    assert torch.autograd.gradcheck(fn, (log_prob.clone().requires_grad_(),), eps=1e-7, atol=1e-6)


def test_closed_form_token_gradient_equals_autograd():
    gen = torch.Generator().manual_seed(5)
    n = 4000
    old = torch.zeros(n, dtype=F64)
    log_prob = (torch.randn(n, generator=gen, dtype=F64) * 0.6).requires_grad_()
    log_prob.data[:10] = torch.tensor(
        [2.5, 3.0, -25.0, 25.0, 0, 0, 0, 0, 0, 0], dtype=F64
    )  # dual clip, clamp
    adv = torch.randn(n, generator=gen, dtype=F64)
    adv[4] = 0.0
    h_hat = torch.rand(n, generator=gen, dtype=F64) * 2 - 1
    weight = torch.rand(n, generator=gen, dtype=F64) + 0.5
    terms = hapo_token_terms(log_prob, old, adv, h_hat, dual_clip_c=3.0, tis_weight=weight)
    terms.loss.sum().backward()
    torch.testing.assert_close(terms.grad_log_prob, log_prob.grad, rtol=1e-12, atol=1e-12)
    assert terms.dual_clipped.any() and terms.clipped_high.any() and terms.clipped_low.any()


def _microbatch_sum(parts, config, stats, normalizer, base, feats, old, adv, entropy, mask, rollout, trim):
    """Sum of the micro-batch losses; log_prob = base + feats·θ so that θ's gradient is the total."""
    theta = torch.zeros(3, dtype=F64, requires_grad=True)
    log_prob = base + feats @ theta
    total = 0.0
    start = 0
    for size in parts:
        rows = slice(start, start + size)
        start += size
        cols = slice(0, int(mask[rows].sum(-1).max())) if trim else slice(None)  # dynamic padding per micro
        loss, _ = hapo_policy_loss(
            log_prob[rows, cols], old[rows, cols], adv[rows, cols], entropy[rows, cols], mask[rows, cols],
            config, stats, rollout_log_prob=rollout[rows, cols], global_normalizer=normalizer,
        )  # fmt: skip
        total = total + loss
    total.backward()
    return total.detach(), theta.grad


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("mode", ["signed", "released"])
def test_partition_invariance(agg, mode):
    """The same step split into 1, 2 or 4 micro-batches (even or not, padded or trimmed) gives the same
    total loss and gradient when every micro-batch gets the step's global normaliser."""
    b, t = 8, 7
    log_prob, old, adv, entropy, mask, rollout = _random_batch(21, b=b, t=t)
    feats = torch.randn(b, t, 3, generator=torch.Generator().manual_seed(1), dtype=F64) * 0.1
    _, stats = normalize_entropy(entropy, mask, 0.8, mode)  # step statistics over the whole step
    config = HapoLossConfig(entropy_mode=mode, agg=agg, tis_cap=2.0, token_sum_norm_len=t)
    normalizer = int(loss_normalizer(mask, agg))
    args = (config, stats, normalizer, log_prob, feats, old, adv, entropy, mask, rollout)
    whole_loss, whole_grad = _microbatch_sum([b], *args, trim=False)
    assert whole_grad.abs().sum() > 0
    for parts in ([4, 4], [2, 2, 2, 2], [3, 5], [1, 6, 1]):
        for trim in (False, True):
            loss, grad = _microbatch_sum(parts, *args, trim=trim)
            assert loss.item() == pytest.approx(whole_loss.item(), rel=1e-12, abs=1e-14)
            torch.testing.assert_close(grad, whole_grad, rtol=1e-10, atol=1e-14)
    # the property can fail: local normalisation (the released per-micro-batch mean) is split-dependent
    if agg == "token-mean":
        naive = dataclasses.replace(config, tis_cap=None)
        full = hapo_policy_loss(log_prob, old, adv, entropy, mask, naive, stats)[0].item()
        split = sum(
            hapo_policy_loss(log_prob[r], old[r], adv[r], entropy[r], mask[r], naive, stats)[0].item() / 2
            for r in (slice(0, 3), slice(3, 8))
        )
        assert abs(split - full) > 1e-6


def test_flattened_tokens_equal_batch_layout():
    log_prob, old, adv, entropy, mask, rollout = _random_batch(7)
    for scope in ("step", "micro_batch"):
        config = HapoLossConfig(stats_scope=scope, tis_cap=2.0)
        stats = normalize_entropy(entropy, mask)[1] if scope == "step" else None
        a, ma = hapo_policy_loss(log_prob, old, adv, entropy, mask, config, stats, rollout)
        flat = [x[mask] for x in (log_prob, old, adv, entropy)]
        ones = torch.ones(int(mask.sum()), dtype=torch.bool)
        b, mb = hapo_policy_loss(*flat, ones, config, stats, rollout[mask])
        assert a.item() == pytest.approx(b.item(), rel=1e-12)
        for key in ma:
            assert ma[key].item() == pytest.approx(mb[key].item(), rel=1e-9, abs=1e-12), key
    with pytest.raises(ValueError, match="per-sequence structure"):
        hapo_policy_loss(*flat, ones, HapoLossConfig(agg="seq-mean-token-mean", stats_scope="micro_batch"))


def test_edge_cases_never_nan():
    config = HapoLossConfig()
    stats = EntropyStats(0.0, 1.0, 1.0, 1.0)
    # all tokens masked: loss 0, gradient 0, finite metrics; NaN/inf in padding never leaks
    lp = torch.full((2, 3), float("nan"), dtype=F64, requires_grad=True)
    junk = torch.full((2, 3), float("inf"), dtype=F64)
    nothing = torch.zeros(2, 3, dtype=torch.bool)
    for agg in AGG_MODES:
        loss, metrics = hapo_policy_loss(
            lp, junk, junk, junk, nothing, dataclasses.replace(config, agg=agg), stats
        )
        loss.backward()
        assert loss.item() == 0.0 and (lp.grad == 0).all()
        assert all(math.isfinite(v.item()) for v in metrics.values())
        lp.grad = None
    # one valid token among NaN padding, micro-batch statistics over a single token
    lp = torch.tensor([[-0.5, float("nan")]], dtype=F64, requires_grad=True)
    old = torch.tensor([[-0.6, float("nan")]], dtype=F64)
    adv = torch.tensor([[1.0, float("nan")]], dtype=F64)
    ent = torch.tensor([[0.3, float("nan")]], dtype=F64)
    one = torch.tensor([[True, False]])
    for mb_config, mb_stats in ((HapoLossConfig(stats_scope="micro_batch"), None), (config, stats)):
        loss, metrics = hapo_policy_loss(lp, old, adv, ent, one, mb_config, mb_stats)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(lp.grad).all() and lp.grad[0, 1] == 0
        assert all(math.isfinite(v.item()) for v in metrics.values())
        lp.grad = None
    # a huge log-ratio with A′ = 0 (ĥ = −1, β = 1) stays finite
    lp = torch.tensor([200.0, -200.0], dtype=F64, requires_grad=True)
    loss, _ = hapo_policy_loss(
        lp, torch.zeros(2, dtype=F64), torch.tensor([-1.0, 1.0], dtype=F64),
        torch.full((2,), math.exp(-1.0), dtype=F64), torch.ones(2, dtype=torch.bool), config, stats,
    )  # fmt: skip
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(lp.grad).all()


def test_bf16_inputs_compute_in_fp32():
    log_prob, old, adv, entropy, mask, _ = _random_batch(8, dtype=torch.float32)
    lp = log_prob.to(torch.bfloat16).requires_grad_()
    loss, _ = hapo_policy_loss(lp, old, adv, entropy, mask, HapoLossConfig(stats_scope="micro_batch"))
    loss.backward()
    assert loss.dtype == torch.float32 and lp.grad.dtype == torch.bfloat16 and torch.isfinite(lp.grad).all()


def test_tis_weights_and_metrics():
    log_prob, old, adv, entropy, mask, _ = _random_batch(9)
    rollout = old.clone()
    rollout[0, 0] = old[0, 0] - 2.0  # exp(2) = 7.4 > cap: truncated
    rollout[1, 0] = old[1, 0] + 0.5  # weight exp(−0.5)
    base = HapoLossConfig(stats_scope="micro_batch")
    tis = dataclasses.replace(base, tis_cap=2.0)
    plain, m_plain = hapo_policy_loss(log_prob, old, adv, entropy, mask, base, rollout_log_prob=rollout)
    weighted, metrics = hapo_policy_loss(log_prob, old, adv, entropy, mask, tis, rollout_log_prob=rollout)
    terms = hapo_token_terms(log_prob, old, adv, normalize_entropy(entropy, mask)[0], mask=mask)
    w = torch.ones_like(old)
    w[0, 0], w[1, 0] = 2.0, math.exp(-0.5)
    assert weighted.item() == pytest.approx(aggregate_loss(terms.loss * w, mask).item(), rel=1e-12)
    assert plain.item() == pytest.approx(aggregate_loss(terms.loss, mask).item(), rel=1e-12)
    n = mask.sum().item()
    assert metrics["tis/truncated_frac"].item() == pytest.approx(1 / n)
    assert metrics["tis/abs_log_prob_diff"].item() == pytest.approx(2.5 / n)
    assert metrics["tis/kl_k1"].item() == pytest.approx((-2.0 + 0.5) / n)  # k1 is unbiased, not >= 0
    k3 = (math.exp(2) - 1 - 2) + (math.exp(-0.5) - 1 + 0.5)
    assert metrics["tis/kl_k3"].item() == pytest.approx(k3 / n)
    assert "tis/truncated_frac" not in m_plain and "tis/kl_k3" in m_plain  # mismatch reported without TIS


def test_configuration_errors_are_clear():
    log_prob, old, adv, entropy, mask, _ = _random_batch(10)
    stats = normalize_entropy(entropy, mask, mode="signed")[1]
    with pytest.raises(ValueError, match="stats_scope='step' needs"):
        hapo_policy_loss(log_prob, old, adv, entropy, mask, HapoLossConfig())
    with pytest.raises(ValueError, match="frozen stats were passed"):
        hapo_policy_loss(log_prob, old, adv, entropy, mask, HapoLossConfig(stats_scope="micro_batch"), stats)
    with pytest.raises(ValueError, match="'signed' mode"):
        hapo_policy_loss(log_prob, old, adv, entropy, mask, HapoLossConfig(entropy_mode="released"), stats)
    with pytest.raises(ValueError, match="need the current token entropies"):
        hapo_policy_loss(log_prob, old, adv, None, mask, HapoLossConfig(), stats)
    with pytest.raises(ValueError, match="rollout_log_prob"):
        hapo_policy_loss(log_prob, old, adv, entropy, mask, HapoLossConfig(tis_cap=2.0), stats)
    with pytest.raises(ValueError, match="global_normalizer"):
        hapo_policy_loss(log_prob, old, adv, entropy, mask, HapoLossConfig(), stats, global_normalizer=0)
    with pytest.raises(ValueError, match="shape"):
        hapo_policy_loss(log_prob[:, :3], old, adv, entropy, mask, HapoLossConfig(), stats)
    for bad in (
        dict(stats_scope="global"),
        dict(entropy_mode="intended"),
        dict(agg="sum"),
        dict(dual_clip_c=1.0),
        dict(clip_low=-0.1),
        dict(clip_low=0.6),  # 0.6·(1+α) ≥ 1
        dict(pivot_quantile=1.5),
        dict(tis_cap=0.0),
    ):
        with pytest.raises(ValueError):
            HapoLossConfig(**bad).check()
    HapoLossConfig(dual_clip_c=None, adv_beta=2.0).check()  # allowed: no dual clip; β > 1 (spec B11)
