"""HF config (a local directory, a config.json, a dict or a ``transformers`` config) -> :class:`ModelArch`.

``ModelArch`` is the small typed description every other module of ``megatron_hapo.models`` works
from: the Megatron config, the mapping tables and the checks of a parallel layout. Reading the HF
config happens here only, including the transformers 4.x/5.x differences (5.x keeps ``rope_theta``
and the RoPE scaling keys under ``rope_parameters``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from megatron_hapo.config.model_info import ModelShape, padded_vocab_size, pp_problems, tp_problems
from megatron_hapo.models.errors import ParallelLayoutError, UnsupportedArchitectureError

# model_type -> (family, the HF class the weights come from); the family names the mapping table.
SUPPORTED_MODEL_TYPES: dict[str, tuple[str, str]] = {
    "llama": ("llama", "LlamaForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
    "qwen3_moe": ("qwen3_moe", "Qwen3MoeForCausalLM"),
}
DEFAULT_VOCAB_DIVISOR = 128  # Megatron-LM's default --make-vocab-size-divisible-by


@dataclass(frozen=True)
class Llama3RopeScaling:
    """``rope_type == "llama3"`` frequency scaling (Llama 3.1 / 3.2)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclass(frozen=True)
class MoE:
    """A sparse MLP in every layer (Qwen3-MoE): each token goes to ``top_k`` of ``num_experts`` SwiGLU experts.

    router: p = softmax(W_gate h) over the experts; the top-k experts' outputs are summed with weights p_e,
    renormalised to sum to 1 over the chosen experts when ``norm_topk_prob``.
    """

    num_experts: int
    top_k: int
    expert_ffn_hidden_size: int  # each expert's MLP size (HF moe_intermediate_size)
    norm_topk_prob: bool


@dataclass(frozen=True)
class ModelArch:
    """What Megatron needs to know about a supported decoder-only HF model.

    ``head_dim`` may differ from ``hidden_size / num_attention_heads`` (Qwen3). ``vocab_size`` is the
    HF value (the embedding's row count, which may exceed the tokenizer's length); Megatron pads it
    further, see :meth:`padded_vocab_size`.
    """

    family: str  # "llama" | "qwen2" | "qwen3" | "qwen3_moe": selects the mapping table
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_hidden_size: int
    vocab_size: int
    norm_eps: float
    rope_theta: float
    rope_scaling: Llama3RopeScaling | None  # llama3-style scaling, else None
    linear_rope_factor: float | None  # rope_type "linear": positions divided by this factor
    tie_word_embeddings: bool
    qkv_bias: bool  # Qwen2/2.5
    qk_norm: bool  # Qwen3: RMSNorm over each head's q and k
    max_position_embeddings: int
    initializer_range: float = 0.02
    dtype: str | None = None  # the dtype recorded in config.json ("bfloat16"), if any
    moe: MoE | None = None  # the sparse MLP of a mixture-of-experts family, None for a dense one

    @property
    def heads_per_group(self) -> int:
        return self.num_attention_heads // self.num_kv_heads

    def padded_vocab_size(self, tp: int = 1, divisible_by: int = DEFAULT_VOCAB_DIVISOR) -> int:
        """``vocab_size`` rounded up to a multiple of ``divisible_by x tp`` (Megatron-LM's rule)."""
        return padded_vocab_size(self.vocab_size, tp, divisible_by)

    def shape(self) -> ModelShape:
        """The facts the layout rules of ``config/model_info.py`` (shared with config validation) need."""
        return ModelShape(
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_kv_heads,
            num_hidden_layers=self.num_layers,
            max_position_embeddings=self.max_position_embeddings,
            source=f"{self.family} config",
            intermediate_size=self.mlp_size,
            vocab_size=self.vocab_size,
        )

    @property
    def mlp_size(self) -> int:
        """The size TP splits the MLP by: an expert's for a mixture of experts, else the dense MLP's."""
        return self.moe.expert_ffn_hidden_size if self.moe else self.ffn_hidden_size

    def check_layout(self, tp: int, pp: int, vp: int | None = None) -> None:
        """Raise :class:`ParallelLayoutError` if TP/PP (with ``vp`` virtual-pipeline chunks per stage) cannot
        split this model (the rules config validation and the dry run apply too)."""
        problems = tp_problems(self.shape(), tp) + pp_problems(self.shape(), pp, vp)
        if problems:
            where = f"TP={tp} PP={pp}" + (f" VP={vp}" if vp else "")
            raise ParallelLayoutError(
                f"{self.family} model cannot be split at {where}: " + "; ".join(problems)
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_arch(source: Any, overrides: Mapping[str, Any] | None = None) -> ModelArch:
    """Read a :class:`ModelArch` from a model directory, a config.json path, a dict or a transformers config.

    ``overrides``: HF config fields set on top of what ``source`` says (``model.override_config``), applied
    before anything is derived from them.

    Raises :class:`UnsupportedArchitectureError` for model types or variants the mappings do not cover
    (with what is supported), ``FileNotFoundError`` when a directory has no config.json.
    """
    if overrides:
        if isinstance(source, ModelArch):
            raise TypeError("load_arch: overrides apply to an HF config, not to a ModelArch")
        return load_arch({**read_hf_config(source), **overrides})
    if isinstance(source, ModelArch):
        return source
    if isinstance(source, str | os.PathLike):
        return _from_dict(_read_config_json(Path(source)), where=str(source))
    if isinstance(source, Mapping):
        return _from_dict(dict(source), where="config dict")
    if hasattr(source, "to_dict") and hasattr(source, "model_type"):  # a transformers PretrainedConfig
        return _from_hf_config(source, where=type(source).__name__)
    raise TypeError(
        f"load_arch expects a directory, a config.json path, a dict or a transformers config, got {source!r}"
    )


def read_hf_config(source: Any) -> dict[str, Any]:
    """The raw HF config of a model directory, a config.json path, a dict or a transformers config."""
    if isinstance(source, str | os.PathLike):
        return _read_config_json(Path(source))
    if isinstance(source, Mapping):
        return dict(source)
    if hasattr(source, "to_dict"):
        return source.to_dict()
    raise TypeError(
        f"expected a directory, a config.json path, a dict or a transformers config, got {source!r}"
    )


def _read_config_json(path: Path) -> dict[str, Any]:
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"{file} does not exist: pass a HuggingFace model directory holding config.json"
        )
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UnsupportedArchitectureError(f"{file} is not valid JSON: {e}") from None


def _from_dict(raw: dict[str, Any], where: str) -> ModelArch:
    model_type = raw.get("model_type")
    _check_supported(model_type, raw.get("architectures"), where)
    # Let transformers fill in the defaults of keys the file leaves out and normalise the RoPE keys
    # (4.x `rope_theta`/`rope_scaling` -> 5.x `rope_parameters`), exactly as the HF model will see them.
    from transformers import AutoConfig

    fields = {k: v for k, v in raw.items() if k != "model_type"}
    return _from_hf_config(AutoConfig.for_model(model_type, **fields), where)


def _check_supported(model_type: Any, architectures: Any, where: str) -> None:
    supported = ", ".join(f"{t} ({SUPPORTED_MODEL_TYPES[t][1]})" for t in SUPPORTED_MODEL_TYPES)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedArchitectureError(
            f"{where}: model_type {model_type!r} (architectures {architectures}) is not supported; "
            f"supported: {supported}. Adding a family means adding a mapping table in megatron_hapo/checkpoint_io/mappings.py."
        )
    expected = SUPPORTED_MODEL_TYPES[model_type][1]
    if architectures and expected not in architectures:
        raise UnsupportedArchitectureError(
            f"{where}: architectures {architectures} for model_type {model_type!r}; only {expected} "
            f"(a causal LM) is supported"
        )


def _from_hf_config(cfg: Any, where: str) -> ModelArch:
    model_type = getattr(cfg, "model_type", None)
    _check_supported(model_type, getattr(cfg, "architectures", None), where)
    family = SUPPORTED_MODEL_TYPES[model_type][0]
    _check_variant(cfg, family, where)
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    theta, scaling, linear = _rope(cfg, where)
    # transformers 4.x stores torch_dtype as an attribute; 5.x makes it a property that warns "deprecated"
    # on every read (it mirrors dtype), so read it only where it is plain data
    dtype = getattr(cfg, "dtype", None) or vars(cfg).get("torch_dtype")
    if dtype is not None and not isinstance(dtype, str):
        dtype = str(dtype).removeprefix("torch.")
    if heads % kv_heads:
        raise UnsupportedArchitectureError(
            f"{where}: {heads} attention heads are not a multiple of {kv_heads} KV heads"
        )
    return ModelArch(
        family=family,
        num_layers=cfg.num_hidden_layers,
        hidden_size=cfg.hidden_size,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        ffn_hidden_size=cfg.intermediate_size,
        vocab_size=cfg.vocab_size,
        norm_eps=float(cfg.rms_norm_eps),
        rope_theta=float(theta),
        rope_scaling=scaling,
        linear_rope_factor=linear,
        tie_word_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
        qkv_bias=family == "qwen2",  # Qwen2 always has q/k/v biases (and none on o_proj)
        qk_norm=family in ("qwen3", "qwen3_moe"),
        max_position_embeddings=int(cfg.max_position_embeddings),
        initializer_range=float(getattr(cfg, "initializer_range", 0.02)),
        dtype=dtype,
        moe=_moe(cfg) if family == "qwen3_moe" else None,
    )


def _moe(cfg: Any) -> MoE:
    return MoE(
        num_experts=int(cfg.num_experts),
        top_k=int(cfg.num_experts_per_tok),
        expert_ffn_hidden_size=int(cfg.moe_intermediate_size),
        norm_topk_prob=bool(cfg.norm_topk_prob),
    )


def _check_variant(cfg: Any, family: str, where: str) -> None:
    """Reject config switches that change the computation in ways the mappings do not model."""
    bad = []
    act = getattr(cfg, "hidden_act", "silu")
    if act != "silu":
        bad.append(f"hidden_act={act!r} (only SwiGLU with silu is mapped)")
    if family in ("llama", "qwen3", "qwen3_moe") and getattr(cfg, "attention_bias", False):
        bad.append("attention_bias=True (q/k/v/o biases are not mapped for this family)")
    if getattr(cfg, "mlp_bias", False):
        bad.append("mlp_bias=True")
    if getattr(cfg, "use_sliding_window", False):
        bad.append("use_sliding_window=True (Megatron's local attention here is full causal)")
    layer_types = getattr(cfg, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        bad.append(f"layer_types {sorted(set(layer_types))} (only full_attention layers are supported)")
    if family == "qwen3_moe":
        if getattr(cfg, "decoder_sparse_step", 1) != 1 or getattr(cfg, "mlp_only_layers", None):
            bad.append(
                f"decoder_sparse_step={cfg.decoder_sparse_step}, mlp_only_layers={cfg.mlp_only_layers} (dense "
                "layers between the MoE layers are not mapped: every layer must be sparse)"
            )
        if cfg.num_experts_per_tok > cfg.num_experts:
            bad.append(f"num_experts_per_tok={cfg.num_experts_per_tok} > num_experts={cfg.num_experts}")
    if bad:
        raise UnsupportedArchitectureError(f"{where}: unsupported {family} variant: " + "; ".join(bad))


def _rope(cfg: Any, where: str) -> tuple[float, Llama3RopeScaling | None, float | None]:
    """(theta, llama3 scaling or None, linear factor or None) from ``rope_parameters`` (5.x) or 4.x attrs."""
    params = getattr(cfg, "rope_parameters", None)
    if isinstance(params, Mapping) and params and all(isinstance(v, Mapping) for v in params.values()):
        params = params.get("full_attention") or next(iter(params.values()))  # per-layer-type form
    if isinstance(params, Mapping) and params:
        theta = params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
        scaling = dict(params)
    else:  # transformers 4.x
        theta = getattr(cfg, "rope_theta", 10000.0)
        scaling = dict(getattr(cfg, "rope_scaling", None) or {})
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return theta, None, None
    if rope_type == "llama3":
        return (
            theta,
            Llama3RopeScaling(
                factor=float(scaling["factor"]),
                low_freq_factor=float(scaling.get("low_freq_factor", 1.0)),
                high_freq_factor=float(scaling.get("high_freq_factor", 4.0)),
                original_max_position_embeddings=int(scaling.get("original_max_position_embeddings", 8192)),
            ),
            None,
        )
    if rope_type == "linear":
        return theta, None, float(scaling["factor"])
    raise UnsupportedArchitectureError(
        f"{where}: RoPE type {rope_type!r} is not supported (supported: default, llama3, linear)"
    )
