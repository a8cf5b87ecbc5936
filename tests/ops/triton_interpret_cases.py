"""Triton kernels checked on CPU through Triton's interpreter (small sizes).

Not collected by the main pytest run (the file name does not start with ``test_``): ``TRITON_INTERPRET=1``
must be set before triton is imported, so ``test_triton_kernels.py`` runs this file in a subprocess
with that variable set. To run it by hand:

    TRITON_INTERPRET=1 .venv/bin/python -m pytest tests/ops/triton_interpret_cases.py -q
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 set before triton is imported", allow_module_level=True)

from megatron_hapo.ops import fused_hapo_loss, torch_impl, triton_impl, vocab_parallel_logprob_entropy  # noqa: E402
from tests.ops._reference import reference_grad, reference_logprob_entropy  # noqa: E402
from tests.ops.test_logprob_entropy import (  # noqa: E402
    TOL,
    assert_close_nan_inf,
    make_logits,
    temperature_of,
    upstream,
)

# numpy evaluates both branches of tl.where, so masked lanes warn about 0·inf; the results are selected away
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

N, V = 12, 100


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    """Several tiles per row (and a ragged last tile) so the online update and masking are exercised."""
    monkeypatch.setattr(triton_impl, "MAX_BLOCK_FWD", 16)
    monkeypatch.setattr(triton_impl, "MAX_BLOCK_BWD", 32)


def run(x, t, temp, g_lp, g_h, impl, entropy_grad=True, **kw):
    xr = x.clone().requires_grad_(True)
    temp_arg = temp.float() if isinstance(temp, torch.Tensor) else temp
    lp, ent = vocab_parallel_logprob_entropy(xr, t, temp_arg, entropy_grad=entropy_grad, impl=impl, **kw)
    loss = (lp * g_lp.float()).sum() + ((ent * g_h.float()).sum() if entropy_grad else 0)
    loss.backward()
    return lp.detach(), ent.detach(), xr.grad


@pytest.mark.parametrize("splits", [1, 3, 7])
def test_forward_stats_match_torch_per_split_count(splits):
    x, t = make_logits(N, V, dtype=torch.float32)
    it = 1.0 / temperature_of("per_token", n=N).float()
    target_local = torch.where(t < 60, t, torch.full_like(t, -1))  # as if another rank owned ids >= 60
    got = triton_impl.forward_stats(x, target_local, it, chunk_rows=0, num_splits=splits)
    want = torch_impl.forward_stats(x, target_local, it, chunk_rows=5)
    for a, b in zip(got, want):
        assert_close_nan_inf(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("temp_kind", ["none", "per_token"])
def test_values_and_grads_match_float64_reference(dtype, temp_kind):
    x, t = make_logits(N, V, dtype=dtype)
    temp = temperature_of(temp_kind, n=N)
    ref_temp = temp.float() if isinstance(temp, torch.Tensor) else temp
    g_lp, g_h = upstream(N)
    ref_lp, ref_ent = reference_logprob_entropy(x, t, ref_temp)
    lp, ent, grad = run(x, t, temp, g_lp, g_h, "triton")
    assert grad.dtype == dtype
    assert_close_nan_inf(lp, ref_lp, **TOL[dtype]["values"])
    assert_close_nan_inf(ent, ref_ent, **TOL[dtype]["values"])
    torch.testing.assert_close(grad.double(), reference_grad(x, t, ref_temp, g_lp, g_h), **TOL[dtype]["grad"])
    _, _, grad_lp = run(x, t, temp, g_lp, g_h, "triton", entropy_grad=False)
    torch.testing.assert_close(
        grad_lp.double(), reference_grad(x, t, ref_temp, g_lp, None), **TOL[dtype]["grad"]
    )


def test_huge_logits_do_not_overflow():
    x, t = make_logits(N, V, scale=1e4, masked=False)
    x[0, :5] = 3.0e38
    x[0, 5:9] = -3.0e38
    g_lp, g_h = upstream(N)
    lp, ent, grad = run(x, t, None, g_lp, g_h, "triton")
    ref_lp, ref_ent = reference_logprob_entropy(x, t)
    assert torch.isfinite(lp).all() and torch.isfinite(ent).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(lp.double(), ref_lp, rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(ent.double(), ref_ent, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double(), reference_grad(x, t, None, g_lp, g_h), rtol=1e-4, atol=1e-5)


def test_inplace_backward_and_equality_with_torch():
    x, t = make_logits(N, V, dtype=torch.bfloat16)
    temp = temperature_of("per_token", n=N)
    g_lp, g_h = upstream(N)
    want = run(x, t, temp, g_lp, g_h, "torch")
    leaf = x.clone().requires_grad_(True)
    logits = leaf * 1
    lp, ent = vocab_parallel_logprob_entropy(
        logits, t, temp.float(), entropy_grad=True, impl="triton", inplace_backward=True
    )
    ((lp * g_lp.float()).sum() + (ent * g_h.float()).sum()).backward()
    assert_close_nan_inf(lp.detach(), want[0], rtol=1e-6, atol=1e-6)
    assert_close_nan_inf(ent.detach(), want[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        leaf.grad.float(), want[2].float(), rtol=1e-2, atol=1e-2 * want[2].float().abs().max().item()
    )


def test_fused_hapo_loss_triton_equals_torch():
    from megatron_hapo.algorithms import HapoLossConfig

    x, t = make_logits(N, V, masked=False)
    g = torch.Generator().manual_seed(3)
    old = torch.randn(3, 4, generator=g) - 3
    adv = torch.randn(3, 4, generator=g)
    mask = torch.ones(3, 4)
    mask[2, 3] = 0
    config = HapoLossConfig(stats_scope="micro_batch")
    results = {}
    for impl in ("torch", "triton"):
        xr = x.clone().requires_grad_(True)
        loss, _ = fused_hapo_loss(xr, t.view(3, 4), old, adv, mask, config, impl=impl)
        loss.backward()
        results[impl] = (loss.detach(), xr.grad)
    torch.testing.assert_close(results["triton"][0], results["torch"][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results["triton"][1], results["torch"][1], rtol=1e-4, atol=1e-7)


def test_empty_batch():
    x = torch.zeros(0, 16, requires_grad=True)
    lp, ent = vocab_parallel_logprob_entropy(
        x, torch.zeros(0, dtype=torch.long), entropy_grad=True, impl="triton"
    )
    (lp.sum() + ent.sum()).backward()
    assert lp.shape == (0,) and x.grad.shape == (0, 16)
