"""Entropy normalisation ĥ, EntropyStats, and the exact nearest-rank quantile (HAPO_SPEC §2, TV1)."""

import json
import math

import pytest
import torch

from megatron_hapo.algorithms import EntropyStats, hhat_from_stats, nearest_rank_index, normalize_entropy
from megatron_hapo.algorithms.quantile import float_to_order_key, order_key_to_float, select_kth_key
from tests.algorithms import released_reference as ref

PAD = 0.0  # padded entropies come back as 0 (spec §2)
TV1_H = [[0.01, 0.5, 2.0, 0.001, 1.0, PAD], [0.2, 3.0, 0.05, PAD, PAD, PAD]]
TV1_M = [[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]]
TV1_SIGNED = [[-0.6971, -0.1824, 0.0, -1.0, -0.0912, 0.0], [-0.3029, 1.0, -0.4853, 0.0, 0.0, 0.0]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["signed", "released"])
def test_tv1(mode, dtype):
    h = torch.tensor(TV1_H, dtype=dtype)
    m = torch.tensor(TV1_M)
    h_hat, stats = normalize_entropy(h, m, 0.8, mode)
    sign = 1.0 if mode == "signed" else -1.0
    assert stats.pivot == pytest.approx(math.log(2.0), abs=1e-6)
    assert stats.sigma == pytest.approx(3.6627, abs=1e-4)
    assert stats.pos_scale == pytest.approx(9.0333, abs=1e-4)
    assert stats.neg_scale == pytest.approx(sign * 0.4819, abs=1e-4)
    expected = torch.tensor(TV1_SIGNED, dtype=dtype)
    if mode == "released":
        expected = expected.abs()
    torch.testing.assert_close(h_hat, expected, atol=1e-4, rtol=0)
    assert h_hat.dtype == dtype


@pytest.mark.parametrize("mode", ["signed", "released"])
def test_matches_released_reference_on_random_inputs(mode):
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        b, t = 5, 11
        h = torch.exp(torch.randn(b, t, generator=gen, dtype=torch.float64) * 2)
        m = torch.rand(b, t, generator=gen) < 0.7
        m[0, 0] = True
        h[~m] = 0.0
        if trial % 3 == 0:  # ties and tokens exactly at the 1e-8 floor
            h[m & (torch.rand(b, t, generator=gen) < 0.3)] = 0.5
            h[0, 0] = 1e-12
        q = [0.8, 0.5, 0.0, 1.0, 0.3][trial % 5]
        ours, stats = normalize_entropy(h, m, q, mode)
        theirs, (p, s, sp, sn) = ref.entropy_h(h, m, q, mode)
        torch.testing.assert_close(ours[m], theirs[m], rtol=1e-12, atol=1e-12)
        assert stats.pivot == p
        assert stats.sigma == pytest.approx(s, rel=1e-13)
        assert stats.pos_scale == pytest.approx(sp, rel=1e-13)
        assert stats.neg_scale == pytest.approx(sn, rel=1e-13)
        assert (ours[~m] == 0).all()


def test_signed_range_and_extremes():
    gen = torch.Generator().manual_seed(1)
    h = torch.exp(torch.randn(4, 50, generator=gen))
    m = torch.ones(4, 50, dtype=torch.bool)
    h_hat, _ = normalize_entropy(h, m, 0.8, "signed")
    assert h_hat.max() == pytest.approx(1.0) and h_hat.min() == pytest.approx(-1.0)
    released, _ = normalize_entropy(h, m, 0.8, "released")
    torch.testing.assert_close(released, h_hat.abs())  # spec B1: released ĥ = |signed ĥ|


def test_hhat_from_stats_reproduces_normalize_entropy():
    """Loss-side ĥ from frozen stats (trainer eps) equals the normalisation's ĥ on the same tokens."""
    gen = torch.Generator().manual_seed(2)
    h = torch.exp(torch.randn(3, 17, generator=gen, dtype=torch.float64) * 1.5)
    m = torch.rand(3, 17, generator=gen) < 0.8
    for mode in ("signed", "released"):
        h_hat, stats = normalize_entropy(h, m, 0.8, mode)
        again = hhat_from_stats(h, stats)
        torch.testing.assert_close(again[m], h_hat[m], rtol=1e-12, atol=1e-12)
        # a fresh, more extreme entropy is clamped to [-1, 1]
        extreme = hhat_from_stats(torch.tensor([1e-30, 1e9], dtype=torch.float64), stats)
        assert extreme.abs().max() == 1.0


def test_all_masked_gives_zero_and_neutral_stats():
    h = torch.rand(2, 4)
    h_hat, stats = normalize_entropy(h, torch.zeros(2, 4, dtype=torch.bool))
    assert (h_hat == 0).all()
    assert stats == EntropyStats.neutral()
    assert (hhat_from_stats(torch.rand(9), stats) == 0).all()  # neutral stats are the identity ĥ = 0


def test_single_token_and_all_equal_entropies_are_finite():
    h_hat, stats = normalize_entropy(torch.tensor([[0.7, 0.0]]), torch.tensor([[1, 0]]))
    assert h_hat.tolist() == [[0.0, 0.0]]
    assert stats.sigma == pytest.approx(1e-4)  # sqrt(ε), as released
    assert all(math.isfinite(v) for v in stats)
    h_hat, stats = normalize_entropy(torch.full((3, 3), 0.25), torch.ones(3, 3))
    assert (h_hat == 0).all() and all(math.isfinite(v) for v in stats)


def test_non_finite_entropy_raises_and_bf16_is_upcast():
    with pytest.raises(ValueError, match="not finite"):
        normalize_entropy(torch.tensor([[1.0, float("nan")]]), torch.ones(1, 2))
    # NaN at padding is ignored
    h_hat, _ = normalize_entropy(torch.tensor([[1.0, 2.0, float("nan")]]), torch.tensor([[1, 1, 0]]))
    assert torch.isfinite(h_hat).all()
    h_hat, _ = normalize_entropy(torch.tensor([[0.5, 1.0, 2.0]], dtype=torch.bfloat16), torch.ones(1, 3))
    assert h_hat.dtype == torch.float32
    with pytest.raises(ValueError, match="shape"):
        normalize_entropy(torch.rand(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="mode"):
        normalize_entropy(torch.rand(2, 3), torch.ones(2, 3), mode="intended")


def test_flattened_input_matches_2d():
    gen = torch.Generator().manual_seed(3)
    h = torch.exp(torch.randn(4, 6, generator=gen))
    m = torch.rand(4, 6, generator=gen) < 0.6
    a, sa = normalize_entropy(h, m)
    b, sb = normalize_entropy(h.flatten(), m.flatten())
    torch.testing.assert_close(a.flatten(), b)
    assert sa == sb


def test_entropy_stats_api():
    s = EntropyStats(0.5, 2.0, 3.0, -0.25)
    assert tuple(s) == (0.5, 2.0, 3.0, -0.25)
    pivot, sigma, sp, sn = s
    assert (pivot, sigma, sp, sn) == (0.5, 2.0, 3.0, -0.25)
    assert s.mode == "released" and EntropyStats(0.5, 2.0, 3.0, 0.25).mode == "signed"
    d = json.loads(json.dumps(s.to_dict()))
    assert list(d) == ["pivot", "sigma", "pos_scale", "neg_scale"]
    assert EntropyStats.from_dict(d) == s
    assert all(type(v) is float for v in EntropyStats(torch.tensor(1.0), 1, 2, 3).to_dict().values())
    with pytest.raises(ValueError, match="missing"):
        EntropyStats.from_dict({"pivot": 1.0, "sigma": 1.0, "pos_scale": 1.0})
    with pytest.raises(ValueError, match="unknown"):
        EntropyStats.from_dict({**d, "tau": 0.05})
    with pytest.raises(ValueError, match="not finite"):
        EntropyStats(float("nan"), 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="sigma"):
        EntropyStats(0.0, 0.0, 1.0, 1.0)
    with pytest.raises(TypeError):
        EntropyStats("0", 1.0, 1.0, 1.0)
    with pytest.raises(AttributeError):
        s.pivot = 1.0  # frozen


def test_nearest_rank_index_rounds_half_to_even():
    assert nearest_rank_index(0.8, 8) == 6  # TV1: round(5.6)
    assert nearest_rank_index(0.5, 4) == 2  # round(1.5) = 2
    assert nearest_rank_index(0.5, 2) == 0  # round(0.5) = 0 (banker's rounding, as released)
    assert nearest_rank_index(0.5, 6) == 2  # round(2.5) = 2
    assert nearest_rank_index(0.0, 5) == 0 and nearest_rank_index(1.0, 5) == 4
    with pytest.raises(ValueError):
        nearest_rank_index(1.5, 3)
    with pytest.raises(ValueError):
        nearest_rank_index(0.5, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_order_keys_are_monotone_and_invertible(dtype):
    x = torch.tensor([-math.inf, -1e30, -2.5, -1e-40, -0.0, 0.0, 1e-40, 3.0, 1e30, math.inf], dtype=dtype)
    keys = float_to_order_key(x)
    assert (keys[1:] > keys[:-1]).all()
    assert torch.equal(order_key_to_float(keys, dtype), x)
    assert torch.equal(torch.signbit(order_key_to_float(keys, dtype)), torch.signbit(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_select_kth_key_matches_kthvalue(dtype):
    """The search logic of the distributed quantile, with one shard (reduce = identity)."""
    gen = torch.Generator().manual_seed(4)
    for trial in range(8):
        n = [1, 2, 7, 300][trial % 4]
        x = (torch.randn(n, generator=gen, dtype=torch.float64) * 10 ** (trial % 5)).to(dtype)
        if trial % 3 == 0:
            x = torch.round(x)  # many ties
        keys = torch.sort(float_to_order_key(x)).values
        for k in {0, n // 2, n - 1, round(0.8 * (n - 1))}:
            key = select_kth_key(keys, k, int(keys[0]), int(keys[-1]), lambda t: t)
            got = order_key_to_float(torch.tensor([key]), dtype)
            assert got.item() == torch.kthvalue(x, k + 1).values.item()
