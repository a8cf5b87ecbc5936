"""TLGA and GRPO advantages (HAPO_SPEC §4, TV3, B8, B9), filters, shaping and registries."""

import math

import pytest
import torch

from megatron_hapo.algorithms import (
    apply_overlong_penalty,
    dynamic_sampling_filter,
    get_advantage,
    get_policy_loss,
    group_token_moments,
    grpo_advantage,
    hapo_policy_loss,
    overlong_penalty,
    register_advantage,
    token_level_group_average,
)
from megatron_hapo.algorithms.registry import Registry
from tests.algorithms import released_reference as ref


def _mask(lengths, t):
    return torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]


def _tv3(dtype=torch.float64):
    rewards = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, -1.0], dtype=dtype)
    mask = _mask([2, 4, 6, 5, 3, 1], 6)
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    return rewards, mask, groups


@pytest.mark.parametrize("counts_padding", [False, True])
def test_tv3(counts_padding):
    rewards, mask, groups = _tv3()
    tlga = token_level_group_average(rewards, mask, groups, fallback_counts_padding=counts_padding)
    grpo = grpo_advantage(rewards, mask, groups)
    per_tlga = [float(tlga[i, 0]) for i in range(6)]
    per_grpo = [float(grpo[i, 0]) for i in range(6)]
    assert per_tlga == pytest.approx([2.2361, -0.4472, -0.4472, 0.3536, 0.3536, -2.8284], abs=1e-4)
    assert per_grpo == pytest.approx([1.1547, -0.5773, -0.5773, 0.5773, 0.5773, -1.1547], abs=1e-4)
    lengths = mask.sum(-1).double()
    for g, rows in ((0, slice(0, 3)), (1, slice(3, 6))):
        assert float((lengths[rows] * tlga[rows, 0]).sum()) == pytest.approx(0.0, abs=1e-9)
        assert float((lengths[rows] * grpo[rows, 0]).sum()) == pytest.approx([-3.4641, 3.4641][g], abs=1e-4)
    assert (tlga[~mask] == 0).all() and (grpo[~mask] == 0).all()
    moments = group_token_moments(rewards, mask, groups)
    assert moments.mean.tolist() == pytest.approx([-0.6667, 0.7778], abs=1e-4)
    assert moments.std.tolist() == pytest.approx([0.7454, 0.6285], abs=1e-4)
    # the released value at group B's padded positions (what the padding-inclusive check sees)
    assert float(-moments.mean[1] / (moments.std[1] + 1e-6)) == pytest.approx(-1.2374, abs=1e-4)


def test_binary_fallback_fires_when_token_share_is_extreme():
    # p_tok = 1/101 < 1/26: the correct answer's Â = sqrt(100) = 10 ≥ 5 -> GRPO for the whole group
    rewards = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    mask = _mask([1, 100, 50, 50], 100)
    groups = ["a", "a", "b", "b"]
    adv = token_level_group_average(rewards, mask, groups)
    grpo = grpo_advantage(rewards, mask, groups)
    torch.testing.assert_close(adv[:2], grpo[:2])
    assert adv[2, 0].item() == pytest.approx(1.0, abs=1e-5) and adv[3, 0].item() == pytest.approx(
        -1.0, abs=1e-5
    )


def test_padding_inclusive_check_causes_spurious_fallback_b8():
    # continuous rewards in one group: token-level Â stays small, but −μ/σ at padding is large
    rewards = torch.tensor([1.0, 0.9, 0.95], dtype=torch.float64)
    mask = _mask([3, 8, 5], 8)
    groups = [0, 0, 0]
    strict = token_level_group_average(rewards, mask, groups)
    released = token_level_group_average(rewards, mask, groups, fallback_counts_padding=True)
    moments = group_token_moments(rewards, mask, groups)
    assert abs(float(moments.mean[0] / (moments.std[0] + 1e-6))) > 5
    torch.testing.assert_close(released, grpo_advantage(rewards, mask, groups))
    assert not torch.allclose(strict, released)
    assert (strict.abs() < 5).all()


@pytest.mark.parametrize("norm_by_std", [True, False])
@pytest.mark.parametrize("counts_padding", [True, False])
def test_matches_released_reference_on_random_inputs(norm_by_std, counts_padding):
    gen = torch.Generator().manual_seed(0)
    for trial in range(15):
        n_groups, g_size, t = 3, 4, 10
        b = n_groups * g_size
        if trial % 3 == 0:
            rewards = torch.randint(0, 2, (b,), generator=gen).double() * 2 - 1
        else:
            rewards = torch.randn(b, generator=gen, dtype=torch.float64)
        lengths = torch.randint(1, t + 1, (b,), generator=gen)
        if trial % 4 == 0:
            lengths[0] = 1
            lengths[1:4] = t
        mask = _mask(lengths.tolist(), t)
        groups = [f"uid{i // g_size}" for i in range(b)]
        ours = token_level_group_average(
            rewards, mask, groups, fallback_counts_padding=counts_padding, norm_by_std=norm_by_std
        )
        theirs, _ = ref.tlga(rewards, mask, groups, norm_by_std=norm_by_std, count_padding=counts_padding)
        torch.testing.assert_close(ours[mask], theirs[mask], rtol=1e-10, atol=1e-10)
        g_ours = grpo_advantage(rewards, mask, groups, norm_by_std=norm_by_std)
        g_ref = torch.tensor(ref.grpo(rewards.tolist(), groups, norm_by_std=norm_by_std), dtype=torch.float64)
        torch.testing.assert_close(g_ours, g_ref[:, None] * mask, rtol=1e-12, atol=1e-12)


def test_edge_cases_are_defined_never_nan():
    mask = _mask([3, 2, 4], 4)
    # all-equal rewards: no signal, zero advantage (both padding modes)
    for counts_padding in (False, True):
        adv = token_level_group_average(
            torch.ones(3), mask, [0, 0, 0], fallback_counts_padding=counts_padding
        )
        assert (adv == 0).all()
    assert (grpo_advantage(torch.ones(3), mask, [0, 0, 0]) == 0).all()
    # single-response groups: TLGA 0 (no baseline spread); GRPO uses verl's rule mean 0, std 1 -> A = R
    single = token_level_group_average(torch.tensor([0.5, -1.0, 2.0]), mask, [0, 1, 2])
    assert (single == 0).all()
    g = grpo_advantage(torch.tensor([0.5, -1.0, 2.0]), mask, [0, 1, 2])
    assert g[:, 0].tolist() == pytest.approx([0.5 / (1 + 1e-6), -1.0 / (1 + 1e-6), 2.0 / (1 + 1e-6)])
    # a group without any valid token: zeros, not NaN
    empty = token_level_group_average(torch.tensor([1.0, -1.0, 1.0]), _mask([0, 0, 2], 4), [0, 0, 1])
    assert torch.isfinite(empty).all() and (empty[:2] == 0).all()
    # an empty batch
    assert token_level_group_average(torch.zeros(0), torch.zeros(0, 4, dtype=torch.bool), []).shape == (0, 4)
    with pytest.raises(ValueError, match="NaN"):
        token_level_group_average(torch.tensor([float("nan"), 1.0, 0.0]), mask, [0, 0, 0])
    with pytest.raises(ValueError, match="one scalar per response"):
        token_level_group_average(torch.ones(3, 4), mask, [0, 0, 0])
    with pytest.raises(ValueError, match="3 responses"):
        grpo_advantage(torch.ones(3), mask, [0, 0])
    with pytest.raises(TypeError, match="integers"):
        grpo_advantage(torch.ones(3), mask, torch.tensor([0.0, 0.0, 1.0]))


@pytest.mark.parametrize("value", [-1.1, 0.7, 0.1, -0.3, 1 / 3])
def test_a_group_of_equal_rewards_float32_cannot_hold_has_zero_advantage(value):
    """HAPO_SPEC: σ_g = 0 when a group's rewards are equal, so Â = 0. In float32 (the trainer's rewards) a reward
    such as -1.1 (every response wrong and truncated under the overlong penalty) summed into a mean came out 1e-7
    off; (R − μ)/(σ + 1e-6) made that an advantage of ~0.1 on every token of the group, all of one sign. Another
    group beside it, of mixed rewards, keeps its advantages (float64 reference)."""
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(50, 4000, (32,), generator=gen)
    mask = _mask(lengths.tolist(), int(lengths.max()))
    mixed = torch.randn(16, generator=gen)
    rewards = torch.cat([torch.full((16,), value), mixed]).float()
    groups = [0] * 16 + [1] * 16
    for adv in (token_level_group_average(rewards, mask, groups), grpo_advantage(rewards, mask, groups)):
        assert adv.dtype == torch.float32 and (adv[:16] == 0).all()
    ours = token_level_group_average(rewards, mask, groups)
    exact = token_level_group_average(rewards.double(), mask, groups)
    torch.testing.assert_close(ours[16:], exact[16:].float(), rtol=1e-5, atol=1e-6)


def test_group_ids_of_any_hashable_type_agree():
    rewards, mask, groups = _tv3()
    a = token_level_group_average(rewards, mask, groups)
    b = token_level_group_average(rewards, mask, ["p7", "p7", "p7", "p2", "p2", "p2"])
    c = token_level_group_average(rewards, mask, torch.tensor([900, 900, 900, -3, -3, -3]))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    # groups need not be contiguous
    perm = torch.tensor([3, 0, 4, 1, 5, 2])
    d = token_level_group_average(rewards[perm], mask[perm], groups[perm])
    torch.testing.assert_close(d, a[perm])


def test_dynamic_sampling_filter_on_accuracy():
    acc = torch.tensor([1, 1, 1, 0, 1, 0, 0, 0, 1])
    groups = [0, 0, 0, 1, 1, 1, 2, 2, 3]
    result = dynamic_sampling_filter(acc, groups)
    assert result.keep.tolist() == [False, False, False, True, True, True, False, False, False]
    assert (result.kept_groups, result.total_groups) == (1, 4)
    assert dynamic_sampling_filter(acc.bool(), groups).keep.tolist() == result.keep.tolist()
    shaped = torch.tensor([1.0, 1.0, 0.99, -1, 1, -1, -1, -1, 1])  # B10: the shaped reward is not accuracy
    with pytest.raises(ValueError, match="binary accuracy"):
        dynamic_sampling_filter(shaped, groups)


def test_overlong_penalty():
    lengths = torch.tensor([0, 6000, 6144, 8192, 10240])
    pen = overlong_penalty(lengths, max_response_length=10240, buffer_length=4096, penalty_factor=1.0)
    assert pen.tolist() == pytest.approx([0.0, 0.0, 0.0, -0.5, -1.0])
    shaped = apply_overlong_penalty(torch.tensor([1.0, 1, 1, 1, -1]), lengths, 10240, 4096, 0.5)
    assert shaped.tolist() == pytest.approx([1.0, 1.0, 1.0, 0.75, -1.5])
    with pytest.raises(ValueError, match="buffer_length"):
        overlong_penalty(lengths, 100, 200)


def test_registries():
    assert get_advantage("tlga") is token_level_group_average is get_advantage("hapo")
    assert get_advantage("grpo") is grpo_advantage
    assert get_policy_loss("hapo") is hapo_policy_loss
    with pytest.raises(KeyError, match="registered"):
        get_advantage("gae")
    reg = Registry("thing")

    @reg.register("x")
    def x():
        return 1

    assert reg.get("x") is x and "x" in reg
    with pytest.raises(ValueError, match="already registered"):
        reg.register("x")(lambda: 2)
    with pytest.raises(ValueError, match="already registered"):
        register_advantage("grpo")(lambda *a: None)


def test_bind_advantage_reads_each_estimators_options_from_the_algorithm_config():
    from types import SimpleNamespace

    from megatron_hapo.algorithms import bind_advantage

    algo = SimpleNamespace(
        norm_adv_by_std=False, tlga_fallback_threshold=None, tlga_fallback_counts_padding=True
    )
    rewards, mask = torch.tensor([1.0, 0.0, 0.0]), torch.ones(3, 4)
    got = bind_advantage("tlga", algo)(rewards, mask, [0, 0, 0])
    want = token_level_group_average(
        rewards, mask, [0, 0, 0], fallback_threshold=math.inf, fallback_counts_padding=True, norm_by_std=False
    )
    assert torch.equal(got, want) and got[0, 0] == pytest.approx(2 / 3)  # not divided by the std
    assert bind_advantage("grpo", algo).keywords == {"norm_by_std": False}
