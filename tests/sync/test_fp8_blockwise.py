"""Blockwise (128x128) FP8 rollout weights: quantiser, name routing, serving-folder export, SGLang loading.

CPU: the quantiser's error bound, partial and zero blocks, which names get scales, the exported folder, the real
SGLang model classes (Qwen2/Qwen3/Llama built with ``Fp8Config`` on CPU) loading the folder and a quantised sync
through their own ``load_weights``, and the logits of a tiny model with dequantised weights.
GPU only (``gpu``): an SGLang engine serving the folder with ``quantization=fp8`` and following FP8 syncs.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_hapo.demo.tiny_models import make_tiny_hf_model
from megatron_hapo.fp8_export.blockwise import blockwise_fp8_state_dict, export_fp8_blockwise
from megatron_hapo.models.errors import ConversionError
from megatron_hapo.sync.fp8 import (
    AMAX_FLOOR,
    BLOCKWISE_FP8_QUANT_CONFIG,
    FP8_E4M3_MAX,
    Fp8LayoutError,
    blockwise_layout_problems,
    check_blockwise_layout,
    dequantize_blockwise,
    fp8_rollout_stream,
    is_quantizable,
    quantize_blockwise,
)

REPO = Path(__file__).resolve().parents[2]
HIDDEN = 256  # 4 heads x 64, 2 KV heads -> k/v 128 rows, intermediate 512: every fused part is whole blocks


def _expand(scale, shape, block=128):
    return scale.repeat_interleave(block, 0).repeat_interleave(block, 1)[: shape[0], : shape[1]]


# --------------------------------------------------------------------------- quantiser


@pytest.mark.parametrize("shape", [(256, 384), (300, 200), (1, 129), (130, 1)])
def test_roundtrip_error_bound(shape):
    """|W - deq| <= 2^-4 |W| + 2^-10 s elementwise (E4M3: 3 mantissa bits; subnormal step 2^-9 s)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=g) * 0.02
    w[0, 0] = 0.5  # an outlier: only its own block loses resolution
    q, s = quantize_blockwise(w)
    assert q.dtype == torch.float8_e4m3fn and q.shape == w.shape
    assert s.dtype == torch.float32 and tuple(s.shape) == (
        math.ceil(shape[0] / 128),
        math.ceil(shape[1] / 128),
    )
    deq = dequantize_blockwise(q, s)
    err = (w - deq).abs()
    bound = 2**-4 * w.abs() + 2**-10 * _expand(s, shape) + 1e-12
    assert (err <= bound).all(), f"max excess {(err - bound).max().item():.3e}"
    # per block: relative Frobenius error; measured ~0.023-0.027 for Gaussian blocks, bound 2^-4
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            blk = (slice(i * 128, (i + 1) * 128), slice(j * 128, (j + 1) * 128))
            assert (w[blk] - deq[blk]).norm() <= 2**-4 * w[blk].norm()


def test_scale_is_block_amax_over_448_and_amax_maps_to_448():
    w = torch.zeros(256, 256)
    w[:128, :128] = 0.25
    w[5, 7] = -3.0  # block (0, 0) amax 3
    w[200, 200] = 1e-3  # block (1, 1) amax 1e-3
    w[130, 3] = 7.0  # block (1, 0)
    q, s = quantize_blockwise(w)
    expected = torch.tensor([[3.0, AMAX_FLOOR], [7.0, 1e-3]]) / FP8_E4M3_MAX
    torch.testing.assert_close(s, expected, rtol=0, atol=0)
    assert q[5, 7].float().item() == -FP8_E4M3_MAX and q[130, 3].float().item() == FP8_E4M3_MAX
    assert q[200, 200].float().item() == FP8_E4M3_MAX
    assert torch.isfinite(q.float()).all()


def test_partial_blocks_pad_with_zeros_and_crop():
    """A 130 x 257 weight has 2 x 3 blocks; the edge blocks' scales come from their real elements only."""
    g = torch.Generator().manual_seed(1)
    w = torch.rand(130, 257, generator=g) * 0.1 - 0.05
    w[129, 256] = -0.9  # the last, 2 x 1 block
    q, s = quantize_blockwise(w)
    assert q.shape == (130, 257) and s.shape == (2, 3)
    assert s[1, 2].item() == pytest.approx(0.9 / FP8_E4M3_MAX, rel=1e-7)
    assert s[1, 0].item() == pytest.approx(w[128:, :128].abs().max().item() / FP8_E4M3_MAX, rel=1e-7)
    assert q.is_contiguous()
    assert dequantize_blockwise(q, s)[129, 256].item() == pytest.approx(-0.9, rel=1e-6)


def test_zero_blocks_get_floor_scale_and_exact_zeros():
    w = torch.zeros(200, 300)
    w[150:, 260:] = torch.linspace(-1, 1, 50 * 40).view(50, 40)  # only block (1, 2) is non-zero
    q, s = quantize_blockwise(w)
    floor = torch.full((2, 3), AMAX_FLOOR / FP8_E4M3_MAX)
    floor[1, 2] = 1 / FP8_E4M3_MAX
    torch.testing.assert_close(s, floor, rtol=1e-7, atol=0)
    assert s.min().item() > 0 and torch.isfinite(s).all()
    deq = dequantize_blockwise(q, s)
    assert (deq[:128] == 0).all() and (deq[:, :256] == 0).all()
    assert not torch.isnan(q.float()).any()


def test_bf16_input_and_matches_fp32_path():
    g = torch.Generator().manual_seed(2)
    w = (torch.randn(256, 256, generator=g) * 0.03).bfloat16()
    q16, s16 = quantize_blockwise(w)
    q32, s32 = quantize_blockwise(w.float())
    assert torch.equal(q16.view(torch.uint8), q32.view(torch.uint8)) and torch.equal(s16, s32)
    qt, st = quantize_blockwise(w.float().t().contiguous().t())  # non-contiguous (a transposed view)
    assert torch.equal(qt.view(torch.uint8), q32.view(torch.uint8)) and torch.equal(st, s32)


def test_quantize_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        quantize_blockwise(torch.ones(8))
    with pytest.raises(ValueError, match="floating"):
        quantize_blockwise(torch.ones(4, 4, dtype=torch.int32))
    bad = torch.ones(4, 4)
    bad[1, 1] = float("inf")
    with pytest.raises(ValueError, match="inf/NaN"):
        quantize_blockwise(bad)
    q, s = quantize_blockwise(torch.ones(200, 200))
    with pytest.raises(ValueError, match="expected"):
        dequantize_blockwise(q, s[:1])


# --------------------------------------------------------------------------- names


QUANTISED = [
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.0.self_attn.v_proj.weight",
    "model.layers.0.self_attn.o_proj.weight",
    "model.layers.11.mlp.gate_proj.weight",
    "model.layers.11.mlp.up_proj.weight",
    "model.layers.11.mlp.down_proj.weight",
]
KEPT = [
    "model.embed_tokens.weight",
    "lm_head.weight",
    "model.norm.weight",
    "model.layers.0.input_layernorm.weight",
    "model.layers.0.post_attention_layernorm.weight",
    "model.layers.0.self_attn.q_proj.bias",  # Qwen2 qkv bias
    "model.layers.0.self_attn.k_norm.weight",  # Qwen3 q/k RMSNorm
    "model.layers.0.self_attn.q_norm.weight",
    "model.layers.0.self_attn.rotary_emb.inv_freq",
    "model.layers.0.mlp.gate_proj.weight_scale_inv",  # never re-quantise a scale
]


def test_quantizable_name_table():
    assert all(is_quantizable(n) for n in QUANTISED)
    assert not any(is_quantizable(n) for n in KEPT)


def test_stream_routes_names_and_passes_others_through():
    tensors = [(n, torch.randn(256, 128)) for n in QUANTISED] + [(n, torch.randn(256)) for n in KEPT]
    out = list(fp8_rollout_stream(iter(tensors)))
    names = [n for n, _ in out]
    assert len(out) == len(QUANTISED) * 2 + len(KEPT)
    for n in QUANTISED:
        i = names.index(n)
        assert names[i + 1] == n + "_scale_inv"  # ...weight_scale_inv, right after its weight
        assert out[i][1].dtype == torch.float8_e4m3fn and tuple(out[i + 1][1].shape) == (2, 1)
    src = dict(tensors)
    for n in KEPT:
        assert out[names.index(n)][1] is src[n]  # untouched object, no copy
    assert not any(n.endswith("_scale_inv") for n in names if n[: -len("_scale_inv")] in KEPT)


def test_stream_rejects_non_2d_selected_tensor():
    with pytest.raises(ValueError, match="only 2-D"):
        list(fp8_rollout_stream([("model.layers.0.mlp.up_proj.weight", torch.ones(4, 4, 4))]))


def test_layout_rules_mirror_sglang():
    cfg = {"hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 512}
    assert blockwise_layout_problems(cfg) == []
    small = {**cfg, "hidden_size": 128, "intermediate_size": 256}  # head_dim 32 -> k/v 64 rows
    assert any("k_proj/v_proj" in p for p in blockwise_layout_problems(small))
    with pytest.raises(Fp8LayoutError, match="FlashRL"):
        check_blockwise_layout(small)
    # Qwen2.5-7B: 28 heads x 128, 4 KV heads, intermediate 18944 = 148 x 128
    q7 = {
        "hidden_size": 3584,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "intermediate_size": 18944,
    }
    assert blockwise_layout_problems(q7, tp_size=1) == []
    assert blockwise_layout_problems(q7, tp_size=2) == []
    assert blockwise_layout_problems(q7, tp_size=4) == []  # q 896 = 7 x 128, kv 128, mlp 4736 = 37 x 128
    assert blockwise_layout_problems(q7, tp_size=8) == [
        "q_proj output size per rank 448 is not a multiple of the FP8 block 128",
        "gate_proj/up_proj output size per rank 2368 is not a multiple of the FP8 block 128",
        "o_proj input size per rank 448 (TP=8) is not a multiple of the FP8 block 128",
        "down_proj input size per rank 2368 (TP=8) is not a multiple of the FP8 block 128",
    ]


# --------------------------------------------------------------------------- export


def _write_fp8_folder_unchecked(src: Path, out: Path) -> Path:
    """The exporter's output without its architecture check (to show what SGLang's Llama does with it)."""
    from megatron_hapo.checkpoint_io.hf_io import HFCheckpointReader, HFCheckpointWriter, copy_reference_files

    reader = HFCheckpointReader(src)
    writer = HFCheckpointWriter(out)
    for name, t in fp8_rollout_stream((n, reader.get(n)) for n in sorted(reader.names())):
        writer.add(name, t)
    writer.close()
    copy_reference_files(src, out, dtype=None)
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "quantization_config": BLOCKWISE_FP8_QUANT_CONFIG}))
    return out


# distinct magnitudes per projection and layer, so that a scale routed to the wrong fused rows (q/k/v, gate/up) or
# layer gives an O(1) error instead of hiding among same-sized Gaussian blocks
_GAINS = {"q_proj": 1.0, "k_proj": 8.0, "v_proj": 0.125, "o_proj": 2.0, "gate_proj": 4.0, "up_proj": 0.25}


def _distinct_gains(model, tokenizer):
    with torch.no_grad():
        for name, p in model.named_parameters():
            for proj, gain in _GAINS.items():
                if f".{proj}.weight" in name:
                    p.mul_(gain * (3.0 if ".layers.1." in name else 1.0))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """family -> (bf16/fp32 source folder, blockwise FP8 folder); llama's is written without the exporter."""
    root = tmp_path_factory.mktemp("fp8b")
    out = {}
    for family in ("qwen2", "qwen3", "llama"):
        src = make_tiny_hf_model(
            root / family,
            family,
            hidden_size=HIDDEN,
            dtype="float32",
            initializer_range=0.2,
            before_save=_distinct_gains,
        )
        if family == "llama":
            out[family] = (src, _write_fp8_folder_unchecked(src, root / f"{family}-fp8"))
        else:
            out[family] = (src, export_fp8_blockwise(src, root / f"{family}-fp8").out_dir)
    return out


def test_exported_folder_matches_sglang_format(tiny_models):
    src, out = tiny_models["qwen2"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"] == BLOCKWISE_FP8_QUANT_CONFIG
    assert cfg["architectures"] == ["Qwen2ForCausalLM"]
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / f).is_file()
    from megatron_hapo.checkpoint_io.hf_io import HFCheckpointReader

    orig, fp8 = HFCheckpointReader(src), HFCheckpointReader(out)
    assert sum(is_quantizable(n) for n in orig.names()) == 2 * 7
    assert fp8.names() == orig.names() | {n + "_scale_inv" for n in orig.names() if is_quantizable(n)}
    for name in orig.names():
        t = fp8.get(name)
        if is_quantizable(name):
            o = orig.get(name)
            assert t.dtype == torch.float8_e4m3fn and t.shape == o.shape
            s = fp8.get(name + "_scale_inv")
            assert s.dtype == torch.float32
            assert tuple(s.shape) == (math.ceil(o.shape[0] / 128), math.ceil(o.shape[1] / 128))
        else:
            assert torch.equal(t, orig.get(name))  # embeddings, lm_head, norms, biases: bit-identical
    size = {d: sum(f.stat().st_size for f in d.glob("*.safetensors")) for d in (src, out)}
    assert size[out] < 0.5 * size[src]  # fp32 source: the linears now take 1 byte per element


def test_export_refuses_bad_inputs(tiny_models, tmp_path):
    src, out = tiny_models["qwen2"]
    with pytest.raises(ConversionError, match="already holds weight files"):
        export_fp8_blockwise(src, out)
    with pytest.raises(ConversionError, match="already quantised"):
        export_fp8_blockwise(out, tmp_path / "again")
    with pytest.raises(ConversionError, match="LlamaForCausalLM is not supported"):
        export_fp8_blockwise(tiny_models["llama"][0], tmp_path / "llama")
    small = make_tiny_hf_model(tmp_path / "small", "qwen2", hidden_size=128, dtype="float32")
    with pytest.raises(ConversionError, match="k_proj/v_proj output size per rank 64"):
        export_fp8_blockwise(small, tmp_path / "small-fp8")


def test_cli_export_fp8_blockwise(tiny_models, tmp_path, capsys):
    from megatron_hapo.cli.convert import main

    src, _ = tiny_models["qwen3"]
    assert main(["export-fp8-blockwise", "--hf", str(src), "--out", str(tmp_path / "o")]) == 0
    assert "14 blockwise FP8 linears" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "config.json").read_text())["quantization_config"][
        "weight_block_size"
    ] == [
        128,
        128,
    ]
    assert main(["export-fp8-blockwise", "--hf", str(src), "--out", str(tmp_path / "o")]) == 2  # not empty
    llama = tiny_models["llama"][0]
    assert main(["export-fp8-blockwise", "--hf", str(llama), "--out", str(tmp_path / "l")]) == 2
    assert "not supported for blockwise FP8" in capsys.readouterr().err


def test_dequantised_tiny_model_logits_close(tmp_path):
    """HF model with W replaced by W_fp8 * scale_inv vs the original (fp32 both; weights-only quantisation).

    Measured (qwen2, hidden 256, 2 layers, weights std 0.02, 2 x 33 random tokens): relative logit error 0.055,
    max |dlogit| 0.074 (logit std 0.31), mean KL 1.5e-4. The same model with 2.6 % multiplicative Gaussian noise
    on those linears gives 0.055 / 0.079: the error is FP8's weight rounding (2.6 % per block), nothing else.
    """
    from transformers import AutoModelForCausalLM

    src = make_tiny_hf_model(
        tmp_path / "m", "qwen2", hidden_size=HIDDEN, dtype="float32", initializer_range=0.02
    )
    out = export_fp8_blockwise(src, tmp_path / "fp8").out_dir
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    deq = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    missing, unexpected = deq.load_state_dict(blockwise_fp8_state_dict(out), strict=False)
    assert not unexpected and all("rotary" in m for m in missing)
    ids = torch.randint(5, 512, (2, 33), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ref(ids).logits.double(), deq(ids).logits.double()
    rel = ((a - b).norm() / a.norm()).item()
    kl = torch.nn.functional.kl_div(b.log_softmax(-1), a.log_softmax(-1), log_target=True, reduction="none")
    kl = kl.sum(-1).mean().item()
    print(
        f"dequantised vs original: rel {rel:.4f}, max|dlogit| {(a - b).abs().max().item():.4f}, KL {kl:.2e}"
    )
    assert rel > 1e-3  # the weights really were quantised (bf16 rounding alone gives 0.004)
    assert rel < 0.08 and kl < 1e-3


# --------------------------------------------------------------------------- SGLang's own classes, on CPU


@pytest.fixture(scope="module")
def sglang_reports(tiny_models):
    args = []
    for family in ("qwen2", "qwen3", "llama"):
        src, out = tiny_models[family]
        args += [str(out), str(src)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    script = Path(__file__).with_name("sglang_fp8_load.py")
    proc = subprocess.run([sys.executable, str(script), "29677", *args], capture_output=True, text=True,
                          env=env, timeout=600)  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    return {r["arch"]: r for r in json.loads(lines[-1][len("REPORT ") :])}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["Qwen2ForCausalLM", "Qwen3ForCausalLM"])
def test_sglang_loads_exported_folder_and_quantised_sync(sglang_reports, arch):
    r = sglang_reports[arch]
    # Fp8Config.from_config(config.json's quantization_config)
    assert r["weight_block_size"] == [128, 128] and r["is_checkpoint_fp8_serialized"]
    assert r["activation_scheme"] == "dynamic" and r["fp8_linear_method"]
    fused = {"self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"}
    assert {n.split(".", 3)[3].rsplit(".", 1)[0] for n in r["fp8_params"]} == fused
    assert r["scale_shapes"]["model.layers.0.self_attn.qkv_proj.weight_scale_inv"] == [
        4,
        2,
    ]  # (256+128+128)/128
    assert r["scale_shapes"]["model.layers.0.mlp.gate_up_proj.weight_scale_inv"] == [8, 2]
    assert r["scale_shapes"]["model.layers.0.mlp.down_proj.weight_scale_inv"] == [2, 4]
    assert r["unset_scales"] == []  # every scale SGLang created was written by the folder
    # SGLang's block_quant_dequant of its fused qkv/gate_up/o/down == the HF weights to FP8 accuracy
    # (with _GAINS, a scale routed to the wrong q/k/v or gate/up rows gives O(1) errors); measured 0.0266
    assert r["n_fused_checked"] == 8 and r["max_rel_err_fused"] < 0.04
    # a sync of 0.7x weights, quantised on the way, replaced weights and scales in place
    assert r["max_rel_err_after_sync"] < 0.04
    assert r["scale_ratio_after_sync"] == pytest.approx([0.7] * 8, rel=1e-6)


@pytest.mark.slow
def test_sglang_llama_drops_block_scales(sglang_reports):
    """Why Llama is refused: SGLang 0.5.23's LlamaForCausalLM renames ``.weight_scale_inv`` to ``.weight_scale`` and
    silently skips it, leaving every block scale at its -FLT_MAX fill. If this starts failing, SGLang fixed it and
    LlamaForCausalLM can join ``BLOCKWISE_FP8_ARCHITECTURES``."""
    r = sglang_reports["LlamaForCausalLM"]
    assert r["fp8_linear_method"] and len(r["scale_shapes"]) == 8
    assert sorted(r["unset_scales"]) == sorted(r["scale_shapes"])


def test_layout_rules_name_the_architecture():
    cfg = {"hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 512}
    assert blockwise_layout_problems({**cfg, "architectures": ["Qwen3ForCausalLM"]}) == []
    (problem,) = blockwise_layout_problems({**cfg, "architectures": ["LlamaForCausalLM"]})
    assert "LlamaForCausalLM" in problem


# --------------------------------------------------------------------------- GPU: the real engine


@pytest.mark.gpu
@pytest.mark.slow
def test_sglang_engine_serves_blockwise_fp8_and_follows_syncs(tmp_path):
    """Engine on the exported folder (quantization=fp8 -> blockwise from config.json); log-probs vs the bf16 HF
    model; an FP8 sync of 1.5x weights changes the greedy outputs, a sync of the originals restores them."""
    from transformers import AutoModelForCausalLM

    from megatron_hapo.rollout import GenerationParams, InProcessSGLangEngine
    from megatron_hapo.sync import TensorTransport, push_weights

    src = make_tiny_hf_model(
        tmp_path / "m", "qwen2", hidden_size=HIDDEN, dtype="bfloat16", initializer_range=0.2
    )
    out = export_fp8_blockwise(src, tmp_path / "fp8").out_dir
    eng = InProcessSGLangEngine(
        str(out), seed=0, mem_fraction_static=0.3, dtype="bfloat16", quantization="fp8"
    )
    prompts = [[1, 40, 41, 42, 43, 44, 45, 46], [1, 50, 51, 52]]
    params = GenerationParams(max_new_tokens=8, temperature=1.0, top_k=1, ignore_eos=True)
    try:
        hf = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).cuda().eval()
        before = eng.generate(prompts, params)
        for s in before:
            ids = torch.tensor([s.prompt_ids + s.response_ids], device="cuda")
            with torch.no_grad():
                logits = hf(ids).logits[0, len(s.prompt_ids) - 1 : -1].double()
            ref = logits.log_softmax(-1).gather(-1, torch.tensor(s.response_ids, device="cuda")[:, None])[
                :, 0
            ]
            diff = (torch.tensor(s.logprobs, dtype=torch.float64) - ref.cpu()).abs().max().item()
            print(f"blockwise fp8 rollout vs bf16 HF: max |delta log p| = {diff:.3e}")
            assert diff < 0.15
        state = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).state_dict()
        push_weights(
            eng, TensorTransport(eng), fp8_rollout_stream((n, t * 1.5) for n, t in state.items()), "x1.5"
        )
        assert [s.response_ids for s in eng.generate(prompts, params)] != [s.response_ids for s in before]
        push_weights(eng, TensorTransport(eng), fp8_rollout_stream(state.items()), "x1.0")
        assert [s.response_ids for s in eng.generate(prompts, params)] == [s.response_ids for s in before]
    finally:
        eng.shutdown()


def test_the_serving_copy_is_written_once_when_writers_race(tiny_models, tmp_path, monkeypatch):
    """``rollout_model_path`` with blockwise FP8 rollout: written once, then found. When another writer (hapo-serve
    on another rollout node, on the shared run directory) renames its copy into place first, this one keeps that
    copy whole and removes its own temporary folder."""
    from types import SimpleNamespace

    import megatron_hapo.fp8_export.blockwise as blockwise
    from megatron_hapo.rollout.serving import rollout_model_path

    src = tiny_models["qwen2"][0]
    cfg = SimpleNamespace(
        model=SimpleNamespace(hf_path=str(src)),
        rollout=SimpleNamespace(quantization="fp8", fp8_format="blockwise", tensor_parallel_size=1),
    )
    out = tmp_path / "rollout_fp8_blockwise"
    real_export = blockwise.export_fp8_blockwise

    def another_writer_first(hf_dir, tmp, **kwargs):
        report = real_export(hf_dir, tmp, **kwargs)
        other = real_export(hf_dir, tmp_path / "other", **kwargs)
        (other.out_dir / "written_by").write_text("the other node")
        os.rename(other.out_dir, out)
        return report

    monkeypatch.setattr(blockwise, "export_fp8_blockwise", another_writer_first)
    assert rollout_model_path(cfg, tmp_path) == str(out)
    assert (out / "written_by").read_text() == "the other node"  # the winner's copy, not merged into
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rollout_fp8_blockwise"]  # no temporary folder left

    monkeypatch.setattr(blockwise, "export_fp8_blockwise", None)  # found: nothing is written again
    assert rollout_model_path(cfg, tmp_path) == str(out)


def test_copies_left_by_killed_writers_on_this_host_are_removed(tmp_path):
    """A writer killed mid-export leaves ``rollout_fp8_blockwise.tmp-<host>-<pid>`` (a model-sized folder). The next
    call removes this host's folders whose process is gone; a live writer's and another host's stay."""
    import socket
    from types import SimpleNamespace

    from megatron_hapo.rollout.serving import rollout_model_path

    out = tmp_path / "rollout_fp8_blockwise"
    out.mkdir()  # the copy itself exists already: nothing is exported
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    host = socket.gethostname()
    left = {
        "dead": tmp_path / f"{out.name}.tmp-{host}-{int(dead.stdout)}",
        "live": tmp_path / f"{out.name}.tmp-{host}-{os.getppid()}",
        "other host": tmp_path / f"{out.name}.tmp-not-{host}-{int(dead.stdout)}",
        "a longer host name": tmp_path / f"{out.name}.tmp-{host}-2-{int(dead.stdout)}",
    }
    for folder in left.values():
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"partial")
    cfg = SimpleNamespace(
        model=SimpleNamespace(hf_path="unused"),
        rollout=SimpleNamespace(quantization="fp8", fp8_format="blockwise", tensor_parallel_size=1),
    )
    assert rollout_model_path(cfg, tmp_path) == str(out)
    assert not left["dead"].exists()
    assert all(left[kept].is_dir() for kept in ("live", "other host", "a longer host name"))
