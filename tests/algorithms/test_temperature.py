"""The adaptive-temperature schedule shared with the SGLang sampler (HAPO_SPEC §3)."""

import math

import pytest
import torch

from megatron_hapo.algorithms import (
    EntropyStats,
    adaptive_temperature,
    hhat_from_stats,
    normalize_entropy,
    temperature_from_entropy,
    token_entropy,
)


def test_token_entropy_matches_definition_in_fp32():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 33, generator=gen, dtype=torch.float64) * 3
    p = torch.softmax(logits, -1)
    expected = -(p * p.log()).sum(-1)
    got = token_entropy(logits.to(torch.bfloat16))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, token_entropy(logits.to(torch.bfloat16).double()).float())
    torch.testing.assert_close(token_entropy(logits.float()), expected.float(), rtol=1e-5, atol=1e-5)
    # uniform over V: log V; one-hot: 0
    assert token_entropy(torch.zeros(1, 8)).item() == pytest.approx(math.log(8), rel=1e-6)
    assert token_entropy(torch.tensor([[1e4, 0.0, 0.0]])).item() == 0.0


def test_token_entropy_with_minus_inf_never_nan():
    logits = torch.tensor(
        [
            [0.0, 0.0, -math.inf, -math.inf],  # two live tokens: log 2
            [-math.inf] * 4,  # fully masked row: defined as 0
            [5.0, -math.inf, -math.inf, -math.inf],  # one live token: 0
            [-1e38, 0.0, -math.inf, 3.0],  # finite but huge-negative entry
        ]
    )
    h = token_entropy(logits)
    assert torch.isfinite(h).all()
    assert h[0].item() == pytest.approx(math.log(2), rel=1e-6)
    assert h[1].item() == 0.0 and h[2].item() == 0.0
    p = torch.softmax(torch.tensor([0.0, 3.0]), -1)
    assert h[3].item() == pytest.approx(float(-(p * p.log()).sum()), rel=1e-5)


def test_sampler_formula_and_ranges():
    stats_signed = EntropyStats(pivot=0.0, sigma=2.0, pos_scale=0.5, neg_scale=0.25)
    h = torch.tensor([1.0, math.e**2, math.e**8, math.e**-4, 1e-30])
    t = temperature_from_entropy(h, 1.0, stats_signed, tau=0.05)
    # h = log H / (2 + 1e-6); ĥ = clamp(h·s)
    z = torch.log(h.clamp_min(1e-6)) / (2.0 + 1e-6)
    h_hat = torch.where(z > 0, z * 0.5, z * 0.25).clamp(-1, 1)
    torch.testing.assert_close(t, 1.0 + 0.05 * h_hat)
    assert t.min() >= 0.95 - 1e-7 and t.max() <= 1.05 + 1e-7
    assert t[0].item() == pytest.approx(1.0)
    released = EntropyStats(0.0, 2.0, 0.5, -0.25)
    tr = temperature_from_entropy(h, 0.7, released, tau=0.1)
    assert (tr >= 0.7 - 1e-7).all() and (tr <= 0.77 + 1e-7).all()  # released: T can only rise
    torch.testing.assert_close(tr, 0.7 * (1 + 0.1 * h_hat.abs()))


def test_no_stats_gives_base_temperature_and_per_row_tensors():
    logits = torch.randn(4, 10)
    t = adaptive_temperature(logits, 0.6, None)
    assert t.shape == (4,) and t.dtype == torch.float32 and (t == 0.6).all()
    base = torch.tensor([0.5, 1.0, 1.0, 2.0])
    assert torch.equal(temperature_from_entropy(torch.rand(4), base, None), base)
    stats = EntropyStats(0.0, 1.0, 1.0, 1.0)
    tau = torch.tensor([0.0, 0.1, 0.2, 0.05])
    t = adaptive_temperature(logits, base, stats, tau)
    expected = base * (
        1 + tau * hhat_from_stats(token_entropy(logits), stats, entropy_eps=1e-6, sigma_eps=1e-6)
    )
    torch.testing.assert_close(t, expected)
    assert t[0] == 0.5  # τ = 0: no adaptation


def test_trainer_epsilons_make_sampler_hhat_equal_the_trainers():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 50, generator=gen) * torch.rand(64, 1, generator=gen) * 6
    h = token_entropy(logits)
    h_hat, stats = normalize_entropy(h, torch.ones_like(h, dtype=torch.bool))
    t = temperature_from_entropy(h, 1.0, stats, tau=0.05, entropy_eps=1e-8, sigma_eps=0.0)
    torch.testing.assert_close(t, 1.0 + 0.05 * h_hat)
    # the released sampler's epsilons differ slightly (spec B5) but stay within the same range
    t_default = adaptive_temperature(logits, 1.0, stats)
    assert (t_default - t).abs().max() < 1e-3


def test_per_row_statistics_tuple():
    """The SGLang sampler batches requests with different stats: a 4-tuple of [N] tensors."""
    gen = torch.Generator().manual_seed(2)
    entropy = torch.rand(3, generator=gen) * 4
    rows = [EntropyStats(0.1, 1.5, 0.8, 0.6), EntropyStats(-0.3, 2.0, 0.5, -0.4), EntropyStats.neutral()]
    stacked = tuple(torch.tensor(col) for col in zip(*rows))
    tau = torch.tensor([0.05, 0.1, 0.05])
    base = torch.tensor([1.0, 0.7, 1.0])
    batched = temperature_from_entropy(entropy, base, stacked, tau)
    single = [
        temperature_from_entropy(entropy[i : i + 1], float(base[i]), rows[i], float(tau[i])) for i in range(3)
    ]
    torch.testing.assert_close(batched, torch.cat(single))
    assert batched[2] == 1.0  # neutral stats: no adaptation
