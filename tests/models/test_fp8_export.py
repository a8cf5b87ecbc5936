"""ModelOpt FP8 serving export on CPU (real ModelOpt calibration and export; no GPU).

A tiny Qwen2 model is quantised with FP8_DEFAULT_CFG (per-tensor E4M3 weights and static per-tensor E4M3
activations), exported with ``export_hf_checkpoint``, and reloaded by dequantising the saved tensors ourselves:
``W = W_fp8 * weight_scale`` and, before each quantised linear, ``x -> round_e4m3(x / input_scale) * input_scale``.

Measured on this machine (2026-11-22, 2 CPU cores, fp32 tiny model, initializer_range 0.02, 33 tokens):
reloaded W8A8 logits vs ModelOpt's own fake-quant model: max |diff| 1.5e-7 (same arithmetic);
vs the original model: max |diff| 0.027 (logit std 0.16), mean KL 2.0e-5.
"""

import json

import pytest
import torch

from megatron_hapo.cli.convert import main
from megatron_hapo.demo.tiny_models import make_tiny_hf_model

pytest.importorskip(
    "modelopt.torch.quantization", reason="nvidia-modelopt is installed by tools/bootstrap_env.sh"
)

TEXT = "Compute 17 * 23 and explain the steps. The answer is 391."
# Tolerances (measured values in the module docstring): exported folder vs ModelOpt's in-memory simulation,
# and FP8 vs the unquantised model.
SAME_MATH_ATOL = 1e-4
FP8_MAX_ABS = 0.1
FP8_MEAN_KL = 1e-3


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp8x")
    src = make_tiny_hf_model(root / "src", "qwen2", dtype="float32")
    calib = root / "calib.jsonl"
    calib.write_text(
        "\n".join(
            json.dumps({"prompt": t}) for t in ["What is 2 + 2?", "Solve x^2 = 9.", "Name a prime > 10."]
        )
    )
    out = root / "fp8"
    assert main(["export-fp8", "--hf", str(src), "--out", str(out), "--calib-file", str(calib)]) == 0
    return src, out, calib


def _logits(model, tok):
    with torch.no_grad():
        return model(tok(TEXT, return_tensors="pt").input_ids).logits[0].float()


def _reload_w8a8(src, out):
    """The exported folder as SGLang's FP8 GEMM computes it, in fp32 torch."""
    from transformers import AutoModelForCausalLM

    from megatron_hapo.fp8_export.modelopt import dequantized_state_dict, input_scales

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    missing, unexpected = model.load_state_dict(dequantized_state_dict(out), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    modules = dict(model.named_modules())

    def fake_e4m3(scale):
        def hook(_, args):
            x = args[0]
            return ((x / scale).clamp(-448, 448).to(torch.float8_e4m3fn).to(x.dtype) * scale,)

        return hook

    for name, scale in input_scales(out).items():
        modules[name].register_forward_pre_hook(fake_e4m3(scale))
    return model


def test_folder_is_what_sglang_detects_as_modelopt_fp8(exported):
    from safetensors.torch import load_file

    src, out, _ = exported
    hqc = json.loads((out / "hf_quant_config.json").read_text())
    assert hqc["quantization"]["quant_algo"] == "FP8" and "lm_head" in hqc["quantization"]["exclude_modules"]
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "modelopt"
    tensors = {}
    for f in out.glob("*.safetensors"):
        tensors.update(load_file(f))
    q = "model.layers.0.self_attn.q_proj"
    assert tensors[f"{q}.weight"].dtype == torch.float8_e4m3fn
    assert tensors[f"{q}.weight_scale"].numel() == tensors[f"{q}.input_scale"].numel() == 1  # per-tensor
    assert tensors["lm_head.weight"].dtype == torch.float32  # LM head stays in the checkpoint dtype
    assert sum(k.endswith(".weight_scale") for k in tensors) == 2 * 7  # 2 layers x (q,k,v,o,gate,up,down)
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
    # SGLang's own detection (ModelConfig._parse_quant_hf_config): ModelOpt FP8, with or without
    # --quantization modelopt (SGLang's internal name is modelopt_fp8)
    from sglang.srt.configs.model_config import ModelConfig

    assert ModelConfig(str(out)).quantization == "modelopt_fp8"
    assert ModelConfig(str(out), quantization="modelopt").quantization == "modelopt_fp8"


def test_reloaded_fp8_logits_close_to_original(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, out, _ = exported
    tok = AutoTokenizer.from_pretrained(out)
    ref = _logits(AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval(), tok)
    got = _logits(_reload_w8a8(src, out), tok)
    diff = (got - ref).abs().max().item()
    kl = torch.nn.functional.kl_div(
        got.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="none"
    )
    kl = kl.sum(-1).mean().item()
    print(
        f"FP8 export vs original: max |logit diff| {diff:.3e} (logit std {ref.std():.3f}), mean KL {kl:.2e}"
    )
    assert 0 < diff < FP8_MAX_ABS and kl < FP8_MEAN_KL  # > 0: the weights really were quantised


def test_reloaded_folder_equals_modelopt_simulation(exported):
    """The saved FP8 weights, weight scales and input scales reproduce ModelOpt's fake-quant forward."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megatron_hapo.fp8_export.modelopt import calibration_texts, quantize_fp8

    src, out, calib = exported
    tok = AutoTokenizer.from_pretrained(src)
    sim = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    quantize_fp8(
        sim,
        [
            tok(t, return_tensors="pt", truncation=True, max_length=512).input_ids
            for t in calibration_texts(calib)
        ],
    )
    diff = (_logits(sim, tok) - _logits(_reload_w8a8(src, out), tok)).abs().max().item()
    print(f"reloaded folder vs ModelOpt simulation: max |logit diff| {diff:.3e}")
    assert diff < SAME_MATH_ATOL


def test_errors_name_the_problem(tmp_path, capsys):
    assert main(["export-fp8", "--hf", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no config.json" in capsys.readouterr().err
    src = make_tiny_hf_model(tmp_path / "src", "qwen2")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    assert main(["export-fp8", "--hf", str(src), "--out", str(tmp_path / "busy")]) == 2
    assert "not empty" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert (
        main(["export-fp8", "--hf", str(src), "--out", str(tmp_path / "o2"), "--calib-file", str(empty)]) == 2
    )
    assert "no calibration text" in capsys.readouterr().err
