"""FP8 serving export with NVIDIA ModelOpt: a trained HF checkpoint -> an FP8 per-tensor HF folder that SGLang
serves with ``quantization="modelopt"`` (detected from the folder's ``hf_quant_config.json``).

Steps (``export_fp8``):

1. load the HF causal LM (``dtype``: the checkpoint's, usually bf16) and its tokenizer;
2. insert ModelOpt quantizers with ``modelopt.torch.quantization.FP8_DEFAULT_CFG``: every ``nn.Linear`` except
   the LM head gets an E4M3 weight quantizer and an E4M3 input (activation) quantizer, both per-tensor
   (``axis=None``), calibrated with the ``max`` algorithm;
3. calibrate: run the model on a few prompts (a file, or ``BUILTIN_CALIBRATION``); each input quantizer records
   ``amax = max |x|`` over the calibration tokens, each weight quantizer ``amax = max |W|``;
4. ``modelopt.torch.export.export_hf_checkpoint`` writes, per quantized linear,
   ``weight`` (float8_e4m3fn) = round_e4m3(W / s_w), ``weight_scale`` = s_w = amax_W / 448 and
   ``input_scale`` = s_x = amax_x / 448 (fp32 scalars), plus ``hf_quant_config.json`` and
   ``config.json["quantization_config"]`` with ``quant_method="modelopt"``, ``quant_algo="FP8"``;
5. copy the tokenizer files.

Serving then computes ``y = (round_e4m3(x / s_x) * s_x) @ (W_fp8 * s_w)^T`` per linear (static activation
scale). The embedding, norms and LM head stay in the checkpoint dtype.

CPU: ModelOpt's fake quantisation falls back to a torch eager FP8 cast when the tensor is not on CUDA
(``modelopt/torch/quantization/tensor_quant.py::scaled_e4m3_impl`` -> ``_fp8_eager``: ``x * 448/amax``, clamp,
``.to(torch.float8_e4m3fn)``, back), so calibration and export run for real on a CPU machine (slowly for big
models: use a GPU for 7B). The tiny-model test measures the logit error.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_hapo.models.errors import ConversionError

logger = logging.getLogger(__name__)

# Short, varied texts for calibration when no file is given (math prompts like the RL data, plus prose/code so
# activation maxima are not taken from one narrow distribution). Enough for a smoke export; for a real model pass
# a few hundred prompts from the training set (--calib-file).
BUILTIN_CALIBRATION = (
    "Solve for x: 3x + 7 = 22. Show your reasoning step by step.",
    "What is the sum of the first 100 positive integers? Put the final answer in \\boxed{}.",
    "Let f(x) = x^2 - 4x + 3. Find all real roots of f and the minimum value of f.",
    "A train travels 120 km in 1.5 hours. What is its average speed in km/h?",
    "Prove that the square root of 2 is irrational.",
    "The quick brown fox jumps over the lazy dog while the cat watches from the window.",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
    "In 1969, Apollo 11 landed on the Moon; Neil Armstrong was the first person to walk on its surface.",
)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "added_tokens.json",
)

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class Fp8ExportReport:
    out_dir: Path
    quantized_linears: int  # linears exported with FP8 weights (+ weight_scale / input_scale)
    excluded: list[str]  # modules ModelOpt left unquantised (LM head, embeddings)
    calib_samples: int
    calib_tokens: int
    seconds: float


def calibration_texts(calib_file: str | Path | None = None, limit: int = 128) -> list[str]:
    """Calibration texts: ``calib_file`` (``.jsonl`` rows with ``prompt`` (str or chat messages) or ``text``,
    else one text per non-empty line), at most ``limit``; ``BUILTIN_CALIBRATION`` when no file is given."""
    if calib_file is None:
        return list(BUILTIN_CALIBRATION)[:limit]
    path = Path(calib_file)
    if not path.is_file():
        raise ConversionError(f"--calib-file {path}: file not found")
    texts: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            row = json.loads(line)
            value = row.get("prompt", row.get("text"))
            if isinstance(value, list):  # chat messages
                value = "\n".join(str(m.get("content", "")) for m in value)
            if not isinstance(value, str):
                raise ConversionError(
                    f"{path}: each .jsonl row needs a 'prompt' or 'text' field, got {sorted(row)}"
                )
            texts.append(value)
        else:
            texts.append(line)
        if len(texts) >= limit:
            break
    if not texts:
        raise ConversionError(f"--calib-file {path} holds no calibration text")
    return texts


def _require_modelopt():
    try:
        import modelopt.torch.quantization as mtq
        from modelopt.torch.export import export_hf_checkpoint
    except ImportError as e:
        raise ConversionError(
            f"FP8 export needs NVIDIA ModelOpt ({e}); install it with `pip install nvidia-modelopt==0.47.0` "
            "(tools/bootstrap_env.sh does, from requirements/cpu.txt)"
        ) from None
    return mtq, export_hf_checkpoint


def quantize_fp8(model: torch.nn.Module, calib_batches: Sequence[torch.Tensor]) -> torch.nn.Module:
    """Insert ModelOpt FP8 per-tensor quantizers into ``model`` (in place) and calibrate them.

    ``calib_batches``: token-id tensors ``[1, seq]`` on the model's device, run one at a time (no padding, so
    no pad token enters an activation maximum). Afterwards the model runs with simulated FP8
    ("fake quant": quantise-dequantise) weights and activations; ``export_hf_checkpoint`` writes it out.
    """
    mtq, _ = _require_modelopt()

    def forward_loop(m):
        with torch.no_grad():
            for ids in calib_batches:
                m(ids)

    mtq.quantize(model, mtq.FP8_DEFAULT_CFG, forward_loop=forward_loop)
    return model


def export_fp8(
    hf_dir: str | Path,
    out_dir: str | Path,
    *,
    calib_file: str | Path | None = None,
    calib_texts: Sequence[str] | None = None,
    max_calib_samples: int = 128,
    max_seq_len: int = 512,
    dtype: str = "auto",
    device: str | None = None,
) -> Fp8ExportReport:
    """Quantise ``hf_dir`` to FP8 (per-tensor weights and static per-tensor activations) and write ``out_dir``.

    ``calib_texts`` overrides ``calib_file``; each text is truncated to ``max_seq_len`` tokens. ``dtype``:
    "auto" = config.json's dtype. ``device``: default CUDA when available, else CPU. ``out_dir`` must be new or
    empty. Raises ``ConversionError`` (ModelOpt missing, bad paths, or an export SGLang would not recognise).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, export_hf_checkpoint = _require_modelopt()
    t0 = time.perf_counter()
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    if not (hf_dir / "config.json").is_file():
        raise ConversionError(f"--hf {hf_dir}: no config.json (expected an HF model directory)")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConversionError(f"--out {out_dir} exists and is not empty; choose a new directory")
    if dtype != "auto" and dtype not in _DTYPES:
        raise ConversionError(f"--dtype must be auto or one of {sorted(_DTYPES)}, got {dtype!r}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")

    kwargs = {"dtype": "auto" if dtype == "auto" else _DTYPES[dtype]}
    model = AutoModelForCausalLM.from_pretrained(hf_dir, **kwargs).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    texts = list(calib_texts) if calib_texts is not None else calibration_texts(calib_file, max_calib_samples)
    texts = texts[:max_calib_samples]
    batches = [
        tokenizer(t, return_tensors="pt", truncation=True, max_length=max_seq_len).input_ids.to(device)
        for t in texts
    ]
    calib_tokens = sum(b.numel() for b in batches)

    quantize_fp8(model, batches)
    out_dir.mkdir(parents=True, exist_ok=True)
    export_hf_checkpoint(model, export_dir=out_dir)
    for name in TOKENIZER_FILES:
        if (hf_dir / name).is_file() and not (out_dir / name).exists():
            shutil.copy2(hf_dir / name, out_dir / name)
    if not (out_dir / "tokenizer_config.json").exists():
        tokenizer.save_pretrained(out_dir)

    quant = _check_serving_folder(out_dir)
    n_fp8 = _count_fp8_weights(out_dir)
    report = Fp8ExportReport(
        out_dir=out_dir,
        quantized_linears=n_fp8,
        excluded=list(quant.get("exclude_modules") or []),
        calib_samples=len(batches),
        calib_tokens=calib_tokens,
        seconds=time.perf_counter() - t0,
    )
    logger.info(
        "FP8 export: %d linears in FP8, excluded %s, calibrated on %d texts (%d tokens), %.1f s -> %s",
        report.quantized_linears,
        report.excluded,
        report.calib_samples,
        report.calib_tokens,
        report.seconds,
        out_dir,
    )
    return report


def _check_serving_folder(out_dir: Path) -> dict:
    """The folder must carry what SGLang's ``modelopt`` detection reads; returns hf_quant_config's section."""
    hqc = out_dir / "hf_quant_config.json"
    if not hqc.is_file():
        raise ConversionError(
            f"ModelOpt export wrote no {hqc.name} in {out_dir}; SGLang would serve it unquantised"
        )
    quant = json.loads(hqc.read_text()).get("quantization", {})
    if quant.get("quant_algo") != "FP8":
        raise ConversionError(f"{hqc}: quant_algo is {quant.get('quant_algo')!r}, expected 'FP8'")
    qc = json.loads((out_dir / "config.json").read_text()).get("quantization_config") or {}
    if qc.get("quant_method") != "modelopt":
        raise ConversionError(
            f"{out_dir}/config.json: quantization_config.quant_method is {qc.get('quant_method')!r}"
        )
    return quant


def _count_fp8_weights(out_dir: Path) -> int:
    from safetensors import safe_open

    n = 0
    for f in sorted(out_dir.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():  # noqa: SIM118 (safe_open is not iterable)
                if k.endswith(".weight_scale"):
                    n += 1
    if n == 0:
        raise ConversionError(f"{out_dir}: no FP8 weight (no *.weight_scale tensor); nothing was quantised")
    return n


def dequantized_state_dict(
    fp8_dir: str | Path, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """The exported folder's weights with FP8 linears dequantised: ``W = W_fp8.float() * weight_scale``.

    ``weight_scale`` / ``input_scale`` entries are dropped (``input_scale`` is returned separately by
    ``input_scales``). For checks and debugging: this is the weight SGLang's FP8 GEMM multiplies with.
    """
    from safetensors.torch import load_file

    raw: dict[str, torch.Tensor] = {}
    for f in sorted(Path(fp8_dir).glob("*.safetensors")):
        raw.update(load_file(f))
    out = {}
    for k, v in raw.items():
        if k.endswith((".weight_scale", ".input_scale")):
            continue
        scale = raw.get(k[: -len("weight")] + "weight_scale") if k.endswith(".weight") else None
        out[k] = (v.float() * scale.float()).to(dtype) if scale is not None else v.to(dtype)
    return out


def input_scales(fp8_dir: str | Path) -> dict[str, float]:
    """``{linear module name: input_scale}`` (static activation scale s_x = amax_x / 448) of an exported folder."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(fp8_dir).glob("*.safetensors")):
        for k, v in load_file(f).items():
            if k.endswith(".input_scale"):
                out[k[: -len(".input_scale")]] = float(v)
    return out
