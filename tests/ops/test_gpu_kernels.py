"""Triton kernels on a real GPU (skipped without CUDA): values and gradients against the float64 reference."""

from __future__ import annotations

import pytest
import torch

from megatron_hapo.ops import resolve_impl, vocab_parallel_logprob_entropy
from tests.ops._reference import reference_grad, reference_logprob_entropy

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_triton_on_cuda_matches_reference(dtype):
    n, v = 257, 50_000  # ragged last tile; several tiles per row
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(n, v, generator=g) * 3).to(dtype)
    x[1, 100:40_000] = float("-inf")
    t = torch.randint(0, v, (n,), generator=g)
    temp = torch.rand(n, generator=g) + 0.5
    g_lp, g_h = torch.randn(n, generator=g), torch.randn(n, generator=g)
    xc = x.cuda().requires_grad_(True)
    assert resolve_impl("auto", xc) == "triton"
    lp, ent = vocab_parallel_logprob_entropy(xc, t.cuda(), temp.cuda(), entropy_grad=True)
    ((lp * g_lp.cuda()).sum() + (ent * g_h.cuda()).sum()).backward()
    ref_lp, ref_ent = reference_logprob_entropy(x, t, temp)
    torch.testing.assert_close(lp.cpu().double(), ref_lp, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ent.cpu().double(), ref_ent, rtol=1e-5, atol=1e-4)
    tol = dict(rtol=1e-2, atol=1e-3) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(xc.grad.cpu().double(), reference_grad(x, t, temp, g_lp, g_h), **tol)


def test_triton_equals_torch_path_on_cuda_with_split_vocab():
    """Few tokens: the forward splits each row's vocab over several programs and merges the parts."""
    n, v = 3, 151_936
    x = torch.randn(n, v, device="cuda", dtype=torch.bfloat16) * 4
    t = torch.randint(0, v, (n,), device="cuda")
    a = vocab_parallel_logprob_entropy(x, t, impl="triton")
    b = vocab_parallel_logprob_entropy(x, t, impl="torch")
    for u, w in zip(a, b):
        torch.testing.assert_close(u, w, rtol=1e-5, atol=1e-5)
