"""vocab_parallel_logprob_entropy, torch implementation (TP = 1), against the float64 reference."""

from __future__ import annotations

import pytest
import torch

from megatron_hapo.ops import resolve_impl, vocab_parallel_logprob_entropy
from tests.ops._reference import reference_grad, reference_logprob_entropy

N, V = 40, 300
NEG_INF = float("-inf")


def make_logits(n=N, v=V, scale=3.0, seed=0, dtype=torch.float32, masked=True):
    """Random logits with some masked (-inf) vocab entries, and targets that avoid nothing on purpose."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, v, generator=g, dtype=torch.float64) * scale
    t = torch.randint(0, v, (n,), generator=g)
    if masked:
        x[1, 10:200] = NEG_INF  # part of a row
        x[2, :] = NEG_INF
        x[2, 7] = 0.5  # one live entry: p = 1 there, entropy 0
        t[2] = 7
        x[3, t[3]] = NEG_INF  # masked target: log_prob = -inf
        x[5, ::2] = NEG_INF
    return x.to(dtype), t


def temperature_of(kind, n=N, seed=1):
    if kind == "none":
        return None
    if kind == "scalar":
        return 0.7
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g, dtype=torch.float64) * 1.5 + 0.3  # per token in [0.3, 1.8]


def upstream(n=N, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)


def run_op(x, t, temp, g_lp, g_h, entropy_grad=True, **kw):
    xr = x.clone().requires_grad_(True)
    temp_arg = temp.to(torch.float32) if isinstance(temp, torch.Tensor) else temp
    lp, ent = vocab_parallel_logprob_entropy(xr, t, temp_arg, entropy_grad=entropy_grad, **kw)
    loss = (lp * g_lp.to(lp.dtype)).sum()
    if entropy_grad:
        loss = loss + (ent * g_h.to(ent.dtype)).sum()
    loss.backward()
    return lp.detach(), ent.detach(), xr.grad


def assert_close_nan_inf(actual, expected, **tol):
    """Equal where the reference is finite; same ±inf elsewhere."""
    expected = expected.to(actual.dtype)
    finite = torch.isfinite(expected)
    torch.testing.assert_close(actual[finite], expected[finite], **tol)
    assert torch.equal(actual[~finite], expected[~finite]), (actual[~finite], expected[~finite])


# fp32 math: values to fp32 rounding; gradients are stored in the logits dtype.
TOL = {
    torch.float32: dict(values=dict(rtol=1e-5, atol=2e-5), grad=dict(rtol=1e-4, atol=2e-6)),
    torch.bfloat16: dict(values=dict(rtol=1e-5, atol=2e-5), grad=dict(rtol=1e-2, atol=2e-3)),
    torch.float16: dict(values=dict(rtol=1e-5, atol=2e-5), grad=dict(rtol=2e-3, atol=2e-4)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("temp_kind", ["none", "scalar", "per_token"])
def test_values_and_grads_match_float64_reference(dtype, temp_kind):
    x, t = make_logits(dtype=dtype)
    temp = temperature_of(temp_kind)
    g_lp, g_h = upstream()
    # The reference sees exactly the op's inputs (the bf16/fp16 values, the fp32 temperature).
    ref_temp = temp.float() if isinstance(temp, torch.Tensor) else temp
    ref_lp, ref_ent = reference_logprob_entropy(x, t, ref_temp)
    ref_g = reference_grad(x, t, ref_temp, g_lp, g_h)

    lp, ent, grad = run_op(x, t, temp, g_lp, g_h, chunk_size=7)
    assert lp.dtype == ent.dtype == torch.float32 and grad.dtype == dtype
    tol = TOL[dtype]
    assert_close_nan_inf(lp, ref_lp, **tol["values"])
    assert_close_nan_inf(ent, ref_ent, **tol["values"])
    torch.testing.assert_close(grad.double(), ref_g, **tol["grad"])
    assert ent[2] == 0 and lp[2] == 0  # a single live entry: a point mass

    # Without the entropy term, the gradient is that of Σ g_lp·log_prob alone.
    _, _, grad_lp_only = run_op(x, t, temp, g_lp, g_h, entropy_grad=False, chunk_size=7)
    torch.testing.assert_close(
        grad_lp_only.double(), reference_grad(x, t, ref_temp, g_lp, None), **tol["grad"]
    )


def test_gradcheck_float64_log_prob_and_entropy():
    """dH/dz_v = -p_v (z_v - Σ p z)/T and d log p_t/dz_v = (1[v=t] - p_v)/T, by finite differences."""
    x, t = make_logits(n=6, v=11, masked=False, dtype=torch.float64)
    x[1, 3] = NEG_INF  # a masked entry: zero gradient, no NaN
    temp = temperature_of("per_token", n=6)
    x.requires_grad_(True)

    def op(inp):
        return vocab_parallel_logprob_entropy(inp, t, temp, entropy_grad=True, chunk_size=4)

    assert torch.autograd.gradcheck(op, (x,), eps=1e-6, atol=1e-8)


def test_huge_logits_do_not_overflow():
    # fp32 logits with magnitude 1e4 (exp would overflow without max-shifting) and entries at ±3e38
    x, t = make_logits(scale=1e4, masked=False)
    x[0, :5] = 3.0e38
    x[0, 5:9] = -3.0e38
    x[1, :] = -3.0e38
    x[1, 4] = 3.0e38
    t[1] = 4
    g_lp, g_h = upstream()
    lp, ent, grad = run_op(x, t, None, g_lp, g_h, chunk_size=16)
    ref_lp, ref_ent = reference_logprob_entropy(x, t)
    assert torch.isfinite(lp).all() and torch.isfinite(ent).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(lp.double(), ref_lp, rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(ent.double(), ref_ent, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent[0].item(), torch.log(torch.tensor(5.0)).item(), rtol=1e-6, atol=0)
    torch.testing.assert_close(grad.double(), reference_grad(x, t, None, g_lp, g_h), rtol=1e-4, atol=1e-5)

    xb = (torch.randn(8, 64) * 1e30).to(torch.bfloat16)  # bf16 keeps fp32's exponent range
    tb = torch.arange(8)
    lp_b, ent_b, grad_b = run_op(xb, tb, None, g_lp[:8], g_h[:8])
    ref_lp_b, ref_ent_b = reference_logprob_entropy(xb, tb)
    torch.testing.assert_close(lp_b.double(), ref_lp_b, rtol=1e-6, atol=0)
    torch.testing.assert_close(ent_b.double(), ref_ent_b, rtol=0, atol=1e-6)
    assert torch.isfinite(grad_b.float()).all()


def test_chunk_size_does_not_change_the_result():
    x, t = make_logits()
    temp = temperature_of("per_token").float()
    g_lp, g_h = upstream()
    base = run_op(x, t, temp, g_lp, g_h, chunk_size=N)
    for chunk in (1, 3, None):
        for a, b in zip(run_op(x, t, temp, g_lp, g_h, chunk_size=chunk), base):
            assert_close_nan_inf(a, b, rtol=1e-6, atol=1e-7)


def test_entropy_is_non_differentiable_without_entropy_grad():
    x, t = make_logits(masked=False)
    xr = x.requires_grad_(True)
    lp, ent = vocab_parallel_logprob_entropy(xr, t)
    assert lp.requires_grad and not ent.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        ent.sum().backward()


def test_entropy_only_upstream_gradient():
    x, t = make_logits()
    _, g_h = upstream()
    xr = x.clone().requires_grad_(True)
    _, ent = vocab_parallel_logprob_entropy(xr, t, 1.3, entropy_grad=True, chunk_size=9)
    (ent * g_h.float()).sum().backward()
    torch.testing.assert_close(xr.grad.double(), reference_grad(x, t, 1.3, None, g_h), rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inplace_backward_writes_the_gradient_into_the_logits(dtype):
    x, t = make_logits(dtype=dtype)
    temp = temperature_of("per_token").float()
    g_lp, g_h = upstream()
    _, _, expected = run_op(x, t, temp, g_lp, g_h, chunk_size=5)

    leaf = x.clone().requires_grad_(True)
    logits = leaf * 1  # a non-leaf like the LM head's output; its buffer is reused for the gradient
    seen = {}
    logits.register_hook(lambda g: seen.setdefault("grad", g))
    lp, ent = vocab_parallel_logprob_entropy(
        logits, t, temp, entropy_grad=True, chunk_size=5, inplace_backward=True
    )
    ((lp * g_lp.float()).sum() + (ent * g_h.float()).sum()).backward()
    assert seen["grad"].data_ptr() == logits.data_ptr()
    torch.testing.assert_close(leaf.grad, expected, rtol=0, atol=0)


def test_saves_logits_and_per_token_scalars_only():
    """The autograd graph holds the input logits (no copy) and O(N) tensors, nothing [N, V]-sized."""
    x, t = make_logits(masked=False)
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    xr = x.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        lp, _ = vocab_parallel_logprob_entropy(xr, t, temperature_of("per_token").float(), entropy_grad=True)
    big = [s for s in saved if s.numel() > N]
    assert len(big) == 1 and big[0].data_ptr() == xr.data_ptr(), [tuple(s.shape) for s in saved]
    lp.sum().backward()


def _peak_cpu_bytes(fn) -> int:
    """Peak of live CPU allocator bytes while ``fn`` runs, from torch.profiler's memory events."""
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.name == "[memory]"), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.cpu_memory_usage
        peak = max(peak, live)
    return peak


def test_working_memory_is_one_chunk_not_n_by_v():
    n, v, chunk = 512, 2048, 8
    x = torch.randn(n, v)
    t = torch.randint(0, v, (n,))
    temp = torch.rand(n) + 0.5
    g = torch.randn(n)
    xr = x.requires_grad_(True)
    logits_bytes, chunk_bytes = n * v * 4, chunk * v * 4

    out = {}
    fwd_peak = _peak_cpu_bytes(
        lambda: out.update(
            zip(
                ("lp", "ent"),
                vocab_parallel_logprob_entropy(xr, t, temp, entropy_grad=True, chunk_size=chunk),
            )
        )
    )
    bwd_peak = _peak_cpu_bytes(lambda: ((out["lp"] * g).sum() + (out["ent"] * g).sum()).backward())
    # naive code holds several [N, V] fp32 tensors; here: a few chunks plus O(N) per-token vectors
    assert fwd_peak < 6 * chunk_bytes + 64 * n * 4 < logits_bytes // 4, (fwd_peak, chunk_bytes)
    assert bwd_peak < logits_bytes + 6 * chunk_bytes + 64 * n * 4, (bwd_peak - logits_bytes, chunk_bytes)


def test_empty_batch():
    x = torch.zeros(0, 16, requires_grad=True)
    lp, ent = vocab_parallel_logprob_entropy(x, torch.zeros(0, dtype=torch.long), entropy_grad=True)
    assert lp.shape == ent.shape == (0,)
    (lp.sum() + ent.sum()).backward()
    assert x.grad.shape == (0, 16)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(logits=torch.zeros(2, 3, 4)), ValueError, "logits must be \\[tokens, vocab/tp\\]"),
        (dict(logits=torch.zeros(4, 8, dtype=torch.int32)), TypeError, "dtype"),
        (dict(target=torch.zeros(3, dtype=torch.long)), ValueError, "target must be integer \\[4\\]"),
        (dict(target=torch.zeros(4)), ValueError, "target must be integer"),
        (dict(target=torch.tensor([0, 1, 8, 2])), ValueError, "target ids span \\[0, 8\\].*8 entries"),
        (dict(target=torch.tensor([0, -100, 1, 2])), ValueError, "map ignored positions"),
        (dict(temperature=0.0), ValueError, "temperature must be finite and > 0"),
        (dict(temperature=torch.tensor([1.0, 0.0, 1.0, 1.0])), ValueError, "values <= 0"),
        (dict(temperature=torch.ones(3)), ValueError, "scalar or \\[4\\]"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
        (dict(impl="cuda"), ValueError, "impl='cuda'"),
        (dict(tp_group=object()), RuntimeError, "torch.distributed is not initialized"),
    ],
)
def test_errors_say_what_is_wrong(kwargs, error, match):
    args = dict(logits=torch.zeros(4, 8), target=torch.zeros(4, dtype=torch.long))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        vocab_parallel_logprob_entropy(**args)


def test_auto_picks_torch_on_cpu_and_explicit_triton_refuses(monkeypatch):
    x = torch.zeros(2, 8)
    assert resolve_impl("auto", x) == "torch"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="impl='triton' needs CUDA logits"):
        vocab_parallel_logprob_entropy(x, torch.zeros(2, dtype=torch.long), impl="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(TypeError, match="fp64"):
        resolve_impl("triton", x.double())
    with pytest.raises(ValueError, match="contiguous vocab dimension"):
        resolve_impl("triton", torch.zeros(8, 2).t())
