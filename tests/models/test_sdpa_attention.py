"""``model.local_attention=sdpa`` (models/sdpa_attention.py) computes what Megatron's unfused
``DotProductAttention`` computes: the same outputs and gradients, for causal rows (mask None) and for the
block-diagonal mask of packed rows, with grouped-query heads and at a TP rank's share of the heads; the
features it lacks are refused by name, and the key is refused where nothing would read it."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

from tests.models.tiny import make_family_model
from tests.parallel_utils import world_of_one

TOL = dict(atol=2e-5, rtol=1e-5)


def _config(heads=4, groups=2, head_dim=8, **extra):
    from megatron.core.transformer import TransformerConfig

    fields = dict(
        num_layers=1, hidden_size=heads * head_dim, num_attention_heads=heads, num_query_groups=groups,
        kv_channels=head_dim, attention_dropout=0.0, hidden_dropout=0.0, use_cpu_initialization=True,
    )  # fmt: skip
    return TransformerConfig(**{**fields, **extra})


def _pair(config, tp: int):
    """(Megatron's DotProductAttention, SDPAttention) for one TP rank of ``tp`` (heads / tp each)."""
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_hapo.models.sdpa_attention import SDPAttention

    group = SimpleNamespace(size=lambda: tp, rank=lambda: 0)
    pgs = SimpleNamespace(tp=group)
    kw = dict(layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self", pg_collection=pgs)
    return DotProductAttention(config, **kw), SDPAttention(config, **kw)


def _block_causal(lengths: list[int]) -> torch.Tensor:
    """Packed rows' mask [1, 1, s, s], True = masked: other sequences' keys and the future."""
    seg = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    q = torch.arange(seg.numel())
    return ((seg[:, None] != seg[None, :]) | (q[None, :] > q[:, None]))[None, None]


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("packed", [False, True], ids=["causal", "packed"])
def test_same_output_and_gradients_as_megatrons_unfused_attention(tp, packed):
    with world_of_one():
        config = _config()
        unfused, sdpa = _pair(config, tp)
        s, b = (12, 1) if packed else (10, 3)
        heads, groups = 4 // tp, 2 // tp
        g = torch.Generator().manual_seed(tp)
        q = torch.randn(s, b, heads, 8, generator=g)
        k, v = (torch.randn(s, b, groups, 8, generator=g) for _ in range(2))
        # Megatron's unfused attention is given the mask explicitly; SDPAttention None for causal rows
        mask = _block_causal([5, 4, 3]) if packed else torch.ones(1, 1, s, s, dtype=torch.bool).triu(1)
        grad = torch.randn(s, b, heads * 8, generator=g)
        results = []
        for module, m in ((unfused, mask), (sdpa, mask if packed else None)):
            inputs = [t.clone().requires_grad_(True) for t in (q, k, v)]
            out = module(*inputs, m)
            out.backward(grad)
            results.append((out, *(t.grad for t in inputs)))
        assert results[1][0].shape == (s, b, heads * 8)
        for name, a, c in zip(("output", "dq", "dk", "dv"), *results):
            torch.testing.assert_close(c, a, **TOL, msg=lambda m, name=name: f"{name}: {m}")
        # the check can fail: attention that crosses the packed sequences differs
        if packed:
            leaky = sdpa(q, k, v, None)
            assert (leaky - results[0][0]).abs().max() > 1e-2


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])  # qwen3: q/k norms, head_dim != hidden / heads
def test_model_logits_and_gradients_match_between_the_two_attentions(tmp_path, family):
    from megatron_hapo.checkpoint_io import load_hf_weights
    from megatron_hapo.models import build_gpt_model

    path = make_family_model(tmp_path / family, family)
    with world_of_one():
        models = {
            a: build_gpt_model(path, spec="local", local_attention=a, perform_initialization=False)
            for a in ("unfused", "sdpa")
        }
        for model in models.values():
            load_hf_weights(model, path)
        core = {
            a: type(m.decoder.layers[0].self_attention.core_attention).__name__ for a, m in models.items()
        }
        assert core == {"unfused": "DotProductAttention", "sdpa": "SDPAttention"}
        # the same checkpoint keys: a run may resume under the other attention (neither holds parameters)
        keys = {a: sorted(m.sharded_state_dict().keys()) for a, m in models.items()}
        assert keys["sdpa"] == keys["unfused"] and len(keys["sdpa"]) > 5
        s = 16
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(3, 300, (2, s), generator=g)
        positions = torch.arange(s).expand(2, s)
        packed_tokens, packed_pos = tokens[:1], torch.cat([torch.arange(9), torch.arange(7)])[None]
        causal = torch.ones(1, 1, s, s, dtype=torch.bool).triu(1)
        block = _block_causal([9, 7])
        out = {}
        for a, model in models.items():
            unpacked = model(tokens, positions, causal if a == "unfused" else None)
            packed = model(packed_tokens, packed_pos, block)
            (unpacked.logsumexp(-1).sum() + packed.logsumexp(-1).sum()).backward()
            out[a] = (unpacked, packed, {n: p.grad for n, p in model.named_parameters()})
        torch.testing.assert_close(out["sdpa"][0], out["unfused"][0], **TOL)
        torch.testing.assert_close(out["sdpa"][1], out["unfused"][1], **TOL)
        grads_u, grads_s = out["unfused"][2], out["sdpa"][2]
        assert grads_u.keys() == grads_s.keys() and len(grads_u) > 5
        for name in grads_u:
            torch.testing.assert_close(grads_s[name], grads_u[name], atol=1e-4, rtol=1e-4, msg=name)


def test_auto_is_sdpa_on_cuda_unfused_on_cpu_and_te_takes_no_choice(monkeypatch):
    from megatron_hapo.models.builder import resolve_local_attention
    from megatron_hapo.models.errors import ConversionError
    from megatron_hapo.parallel import cpu_compat

    assert resolve_local_attention("auto", te_spec=False) == "unfused"  # no CUDA on the test machine
    monkeypatch.setattr(cpu_compat, "cuda_available", lambda: True)
    assert resolve_local_attention("auto", te_spec=False) == "sdpa"
    assert resolve_local_attention("unfused", te_spec=False) == "unfused"
    assert resolve_local_attention("auto", te_spec=True) is None
    with pytest.raises(ConversionError, match="model.local_attention=sdpa applies to the local layer spec"):
        resolve_local_attention("sdpa", te_spec=True)
    with pytest.raises(ValueError, match="must be one of"):
        resolve_local_attention("flash", te_spec=False)


@pytest.mark.parametrize(
    "extra,named",
    [
        ({"window_size": (4, 0)}, "window_size"),
        ({"softmax_type": "off-by-one"}, "softmax_type='off-by-one'"),
        ({"attention_dropout": 0.1}, "attention_dropout > 0"),
    ],
)
def test_what_it_does_not_implement_is_refused_by_name(extra, named):
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_hapo.models.sdpa_attention import SDPAttention

    with world_of_one():
        config = _config(**extra)
        with pytest.raises(NotImplementedError, match=f"does not implement {named}.*local_attention=unfused"):
            SDPAttention(config, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")


def _chunked_against_full(q, k, v, cp_size, grad, enable_gqa=False):
    """Every CP rank's ``chunked_causal_attention`` of its queries, put back in sequence order, with the
    gradients of q, k, v summed over the ranks (what the all-gather's reduce-scatter gives each rank)."""
    from megatron_hapo.models.context_parallel import local_positions
    from megatron_hapo.models.sdpa_attention import chunked_causal_attention

    s = q.shape[2]
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    out = torch.empty_like(q)
    for r in range(cp_size):
        mine = local_positions(s, cp_size, r, device=q.device)
        part = chunked_causal_attention(q[:, :, mine], k, v, r, cp_size, 0.125, enable_gqa=enable_gqa)
        part.backward(grad[:, :, mine])
        out[:, :, mine] = part.detach()
    return out, (q.grad, k.grad, v.grad)


@pytest.mark.parametrize("cp_size", [2, 3])
def test_chunked_causal_attention_of_every_cp_rank_is_the_full_causal_attention(cp_size):
    """Context parallelism's attention (one CP rank's two query chunks against the whole sequence's keys):
    over all ranks, the same outputs and gradients as causal SDPA of the whole sequence, in float64."""
    import torch.nn.functional as F

    from megatron_hapo.models.sdpa_attention import chunked_causal_attention

    g = torch.Generator().manual_seed(0)
    q, k, v, grad = (
        torch.randn(2, 3, 2 * cp_size * 5, 8, generator=g, dtype=torch.float64) for _ in range(4)
    )
    out, grads = _chunked_against_full(q, k, v, cp_size, grad)
    want = [t.detach().requires_grad_(True) for t in (q, k, v)]
    expected = F.scaled_dot_product_attention(*want, is_causal=True, scale=0.125)
    expected.backward(grad)
    torch.testing.assert_close(out, expected.detach(), atol=1e-12, rtol=1e-12)
    for name, a, b in zip(("dq", "dk", "dv"), grads, want):
        torch.testing.assert_close(a, b.grad, atol=1e-12, rtol=1e-12, msg=name)
    with pytest.raises(ValueError, match="need 20 keys"):
        chunked_causal_attention(q[:, :, :10], k[:, :, :12], v[:, :, :12], 0, 2, 0.125)


@contextlib.contextmanager
def _kept_for_backward():
    """The tensors autograd keeps for the backward of what runs inside (a list, filled as it runs)."""
    kept: list[torch.Tensor] = []

    def pack(t):
        kept.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield kept


def test_chunked_causal_attention_takes_grouped_keys_and_values_as_they_are():
    """Grouped-query attention under CP (4 query heads, 2 KV heads, ``enable_gqa``): over all ranks the same
    outputs and gradients as causal SDPA of the whole sequence with K and V repeated to the query heads, in
    float64; and the backward keeps the K and V it was given, not copies repeated to the query heads."""
    import torch.nn.functional as F

    from megatron_hapo.models.sdpa_attention import chunked_causal_attention

    g = torch.Generator().manual_seed(1)
    cp_size, s = 2, 20
    q, grad = (torch.randn(2, 4, s, 8, generator=g, dtype=torch.float64) for _ in range(2))
    k, v = (torch.randn(2, 2, s, 8, generator=g, dtype=torch.float64) for _ in range(2))
    out, grads = _chunked_against_full(q, k, v, cp_size, grad, enable_gqa=True)
    want = [t.detach().requires_grad_(True) for t in (q, k, v)]
    repeated = [t.repeat_interleave(2, dim=1) for t in want[1:]]
    expected = F.scaled_dot_product_attention(want[0], *repeated, is_causal=True, scale=0.125)
    expected.backward(grad)
    torch.testing.assert_close(out, expected.detach(), atol=1e-12, rtol=1e-12)
    for name, a, b in zip(("dq", "dk", "dv"), grads, want):
        torch.testing.assert_close(a, b.grad, atol=1e-12, rtol=1e-12, msg=name)
    # what the backward keeps: K and V themselves (their storage), nothing of the query heads' size beside Q
    k, v = (t.detach().requires_grad_(True) for t in (k, v))
    with _kept_for_backward() as kept:
        chunked_causal_attention(q[:, :, :10].requires_grad_(True), k, v, 0, cp_size, 0.125, enable_gqa=True)
    storages = {t.untyped_storage().data_ptr() for t in kept}
    assert {t.untyped_storage().data_ptr() for t in (k, v)} <= storages
    assert not any(t.shape[1] == 4 and t.shape[2] == s for t in kept), [tuple(t.shape) for t in kept]


def test_under_context_parallelism_the_layer_keeps_k_and_v_at_the_kv_heads():
    """SDPAttention on its CP route (a CP group of one rank, so the all-gather is the identity) keeps, for
    the backward, K and V of 2 KV heads where a model of 4 KV heads keeps 4: 2 x (4 - 2) x s x b x head_dim
    values less. Repeated to the query heads, as before, both would keep the same."""
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_hapo.models.activation_memory import saved_for_backward
    from megatron_hapo.models.sdpa_attention import SDPAttention

    one = SimpleNamespace(size=lambda: 1, rank=lambda: 0)
    kept = {}
    with world_of_one():
        for groups in (2, 4):
            config = _config(groups=groups, context_parallel_size=2)
            layer = SDPAttention(
                config, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self",
                pg_collection=SimpleNamespace(tp=one, cp=one),
            )  # fmt: skip
            assert layer.cp_group is one
            g = torch.Generator().manual_seed(0)
            s, b = 12, 2
            q = torch.randn(s, b, 4, 8, generator=g, requires_grad=True)
            k, v = (torch.randn(s, b, groups, 8, generator=g, requires_grad=True) for _ in range(2))
            with saved_for_backward(layer) as saved:  # each storage once (models/activation_memory.py)
                layer(q, k, v, None)
            kept[groups] = saved.total()
    assert kept[4] - kept[2] == 2 * (4 - 2) * s * b * 8 * 4, kept


@pytest.mark.gpu
@pytest.mark.parametrize("groups", [12, 2], ids=["mha", "gqa"])
def test_on_cuda_in_bf16_chunked_causal_attention_agrees(groups):
    """On a GPU (benchmarks/gpu/run_all.sh): the context-parallel attention (CP=2 and 4) at the 1.5B model's
    12 query heads and head_dim 128 in bf16, s = 4096, agrees with fp32 causal attention of the whole sequence
    (5e-2 of the largest value, as the test below); the lower-right causal mask runs on CUDA's kernels. With
    the model's 2 KV heads, the flash kernel takes K and V grouped (``kernel_takes_grouped_heads``), so the
    whole sequence's K and V are neither repeated nor kept 6 times."""
    import torch.nn.functional as F

    from megatron_hapo.models.sdpa_attention import kernel_takes_grouped_heads

    g = torch.Generator(device="cuda").manual_seed(0)
    q, grad = (torch.randn(1, 12, 4096, 128, device="cuda", generator=g) for _ in range(2))
    k, v = (torch.randn(1, groups, 4096, 128, device="cuda", generator=g) for _ in range(2))
    want = [t.clone().requires_grad_(True) for t in (q, k, v)]
    repeated = [t.repeat_interleave(12 // groups, dim=1) for t in want[1:]]
    expected = F.scaled_dot_product_attention(want[0], *repeated, is_causal=True, scale=0.125)
    expected.backward(grad)
    low = [t.bfloat16() for t in (q, k, v)]
    gqa = groups < 12
    assert not gqa or kernel_takes_grouped_heads(*low), (
        "the flash kernel does not take bf16 K, V grouped here"
    )
    for cp_size in (2, 4):
        out, grads = _chunked_against_full(*low, cp_size, grad.bfloat16(), enable_gqa=gqa)
        pairs = [("output", expected.detach(), out)] + [
            (n, a.grad, c) for n, a, c in zip(("dq", "dk", "dv"), want, grads)
        ]
        for name, a, c in pairs:
            err = float((c.float() - a).abs().max()) / float(a.abs().max())
            assert err < 5e-2, f"CP={cp_size} {name}: max error {err:.3g} of its largest value"


@pytest.mark.gpu
@pytest.mark.parametrize("packed", [False, True], ids=["causal", "packed"])
def test_on_cuda_in_bf16_the_fused_kernels_take_it_and_agree(packed):
    """On a GPU (benchmarks/gpu/run_all.sh), at the 1.5B model's head shapes (12 query heads, 2 KV heads,
    head_dim 128) in bf16: causal rows run on the flash kernel, with the 2 KV heads grouped as they are
    (enable_gqa), and packed rows on the memory-efficient one, with them repeated (each forced alone: SDPA raises "No available kernel" when the inputs do not qualify, so the math kernel,
    which writes the s x s scores, cannot stand in unseen), and both agree with Megatron's unfused attention
    computed in fp32 (5e-2 of the largest value; bf16 kernels on the CPU reach 1.4e-2, a leaking mask O(1))."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with world_of_one(device_mode=False):
        _, sdpa = _pair(_config(heads=12, groups=2, head_dim=128, bf16=True, params_dtype=torch.bfloat16), 1)
        reference, _ = _pair(_config(heads=12, groups=2, head_dim=128), 1)
        lengths = [700, 500, 848]
        s, b = (sum(lengths), 1) if packed else (2048, 2)
        g = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(s, b, 12, 128, device="cuda", generator=g)
        k, v = (torch.randn(s, b, 2, 128, device="cuda", generator=g) for _ in range(2))
        mask = (
            _block_causal(lengths).cuda()
            if packed
            else torch.ones(1, 1, s, s, dtype=torch.bool).triu(1).cuda()
        )
        grad = torch.randn(s, b, 12 * 128, device="cuda", generator=g)
        want = [t.clone().requires_grad_(True) for t in (q, k, v)]
        reference(*want, mask).backward(grad)
        expected = reference(*[t.detach() for t in want], mask)
        got = [t.bfloat16().requires_grad_(True) for t in (q, k, v)]
        backend = SDPBackend.EFFICIENT_ATTENTION if packed else SDPBackend.FLASH_ATTENTION
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        with sdpa_kernel([backend]):
            out = sdpa(*got, mask if packed else None)
            out.backward(grad.bfloat16())
        extra_mib = (torch.cuda.max_memory_allocated() - before) / 2**20
        print(f"{backend.name}: s={s} b={b}, extra memory {extra_mib:.0f} MiB (the scores alone: "
              f"{b * 12 * s * s * 2 / 2**20:.0f} MiB in bf16)")  # fmt: skip
        pairs = [("output", expected, out)] + [
            (n, a.grad, c.grad) for n, a, c in zip(("dq", "dk", "dv"), want, got)
        ]
        for name, a, c in pairs:
            err = float((c.float() - a).abs().max()) / float(a.abs().max())
            assert err < 5e-2, f"{name}: max error {err:.3g} of its largest value"  # bf16: ~1.4e-2 on CPU
