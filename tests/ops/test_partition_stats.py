"""Merging per-part softmax statistics equals computing them over the whole row (entropy grouping rule)."""

from __future__ import annotations

import torch

from megatron_hapo.ops import torch_impl
from megatron_hapo.ops.partition_stats import merge_partitions

NEG_INF = float("-inf")


def part_stats(x: torch.Tensor):
    """(m, log s, H) of each row of ``x`` with the torch implementation (fp64)."""
    m, log_s, ent, _ = torch_impl.forward_stats(x, torch.full((x.shape[0],), -1), None, chunk_rows=3)
    return m, log_s, ent


def test_merging_vocab_parts_equals_the_whole_row():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 60, generator=g, dtype=torch.float64) * 4
    x[0, :20] = NEG_INF  # first part entirely masked on row 0
    x[1, 20:] = NEG_INF  # only the first part alive on row 1
    x[2] *= 1e3  # one part carries all the mass (others underflow to b = 0)
    bounds = [0, 20, 33, 60]
    parts = [part_stats(x[:, lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]
    m, log_s, ent = merge_partitions(*(torch.stack(t) for t in zip(*parts)), dim=0)

    whole_m, whole_log_s, whole_ent = part_stats(x)
    torch.testing.assert_close(m, whole_m)
    torch.testing.assert_close(m + log_s, torch.logsumexp(x, dim=1))
    torch.testing.assert_close(log_s, whole_log_s, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ent, whole_ent, rtol=1e-12, atol=1e-12)


def test_a_row_without_any_mass_is_nan_not_a_number_that_looks_valid():
    m = torch.tensor([[NEG_INF], [NEG_INF]], dtype=torch.float64)
    log_s = torch.full_like(m, NEG_INF)
    ent = torch.zeros_like(m)
    out_m, out_log_s, out_ent = merge_partitions(m, log_s, ent, dim=0)
    assert torch.isneginf(out_m).all() and torch.isneginf(out_log_s).all() and torch.isnan(out_ent).all()


def test_nan_in_one_part_propagates():
    m = torch.tensor([[1.0], [float("nan")]], dtype=torch.float64)
    log_s = torch.tensor([[0.5], [0.1]], dtype=torch.float64)
    ent = torch.tensor([[0.3], [0.2]], dtype=torch.float64)
    _, out_log_s, out_ent = merge_partitions(m, log_s, ent, dim=0)
    assert torch.isnan(out_ent).all()
