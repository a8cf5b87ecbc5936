"""The few HF config fields layout validation needs (heads, KV heads, layers, MLP size, vocabulary,
context length) and the rules a parallel layout must meet to split the model.

The rules live here once: config validation (``config/validate.py``, so also ``--dry-run``) and the
model builder (``models/hf_config.py::ModelArch.check_layout``) both call them. Plain JSON, no
transformers import: validation runs before anything heavy is loaded.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class ModelShape:
    """Shape facts of the policy model (after ``model.override_config``); ``source`` is the config.json read."""

    num_attention_heads: int
    num_key_value_heads: int
    num_hidden_layers: int
    max_position_embeddings: int | None
    source: str
    intermediate_size: int | None = None  # the MLP size TP splits: one expert's in a mixture of experts
    vocab_size: int | None = None
    num_experts: int | None = None  # a mixture of experts (Qwen3-MoE), else None


def looks_like_hub_id(path: str) -> bool:
    """True for ``org/name`` strings that are not an existing local path."""
    return bool(_HUB_ID.match(path)) and not Path(path).exists()


def find_config_json(hf_path: str) -> Path | None:
    """The config.json of a local model directory, or of a hub id already in the local HF cache."""
    local = Path(hf_path).expanduser()
    if local.is_dir():
        return local / "config.json"
    if looks_like_hub_id(hf_path):
        try:
            from huggingface_hub import try_to_load_from_cache
        except Exception:
            return None
        hit = try_to_load_from_cache(hf_path, "config.json")
        return Path(hit) if isinstance(hit, str) else None
    return None


def known_model_shape(hf_path: str, override_config: Mapping[str, Any]) -> ModelShape | None:
    """The shape of a model in ``models/known_configs.py`` (planning without the checkpoint), else None."""
    from megatron_hapo.models.known_configs import known_config  # pure data; imported only when needed

    raw = known_config(hf_path)
    if raw is None:
        return None
    return shape_from_dict({**raw, **override_config}, f"the known config of {hf_path}")


def read_model_shape(config_json: Path, override_config: Mapping[str, Any]) -> ModelShape:
    """Parse ``config_json`` (with ``override_config`` applied on top). Raises ValueError naming the file."""
    try:
        raw = json.loads(config_json.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{config_json} does not exist (a model directory needs a config.json)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_json} is not valid JSON: {e}") from None
    stale = sorted({"rope_theta", "rope_scaling"} & set(override_config))
    if "rope_parameters" in raw and stale and "rope_parameters" not in override_config:
        # transformers 5 (and SGLang after it) read RoPE from rope_parameters and ignore the top-level keys
        raise ValueError(
            f"model.override_config sets {stale}, but {config_json} keeps RoPE under rope_parameters, so the "
            "override would be ignored by both the trainer and SGLang; override rope_parameters instead, e.g. "
            f"{{rope_parameters: {{...{raw['rope_parameters']}, rope_theta: ...}}}}"
        )
    return shape_from_dict({**raw, **override_config}, str(config_json))


def shape_from_dict(raw: Mapping[str, Any], source: str) -> ModelShape:
    """The shape facts of an HF config dict; ``source`` names it in errors. Raises ValueError."""
    missing = [k for k in ("num_attention_heads", "num_hidden_layers") if not isinstance(raw.get(k), int)]
    if missing:
        raise ValueError(f"{source} lacks integer field(s) {missing}; is it a decoder-only LM config?")
    heads = raw["num_attention_heads"]
    kv = raw.get("num_key_value_heads") or heads  # absent = multi-head attention

    def optional_int(key: str) -> int | None:
        value = raw.get(key)
        return int(value) if isinstance(value, int) else None

    # released Qwen3-MoE configs say num_experts; transformers 5 writes the same number as num_local_experts
    experts = optional_int("num_experts") or optional_int("num_local_experts")
    return ModelShape(
        num_attention_heads=heads,
        num_key_value_heads=int(kv),
        num_hidden_layers=raw["num_hidden_layers"],
        max_position_embeddings=optional_int("max_position_embeddings"),
        source=source,
        # a mixture of experts (Qwen3-MoE) splits each expert's MLP over TP; its dense size goes unused
        intermediate_size=optional_int("moe_intermediate_size" if experts else "intermediate_size"),
        vocab_size=optional_int("vocab_size"),
        num_experts=experts,
    )


# ------------------------------------------------------------------------------------ layout rules


def tp_problems(shape: ModelShape, tp: int) -> list[str]:
    """Why tensor parallelism ``tp`` cannot split the model (empty = it can).

    Megatron shards attention by heads and the MLP by columns: TP must divide the attention heads, the
    KV heads (each rank owns whole query groups; the QKV shard is a slice of whole groups) and the MLP
    size.
    """
    if tp < 1:
        return [f"TP must be >= 1, got {tp}"]
    problems = []
    if shape.num_key_value_heads % tp:
        problems.append(
            f"TP={tp} does not divide the number of KV heads ({shape.num_key_value_heads}): each TP rank owns "
            f"whole query groups; use a TP size that divides {shape.num_key_value_heads}"
        )
    if shape.num_attention_heads % tp:
        problems.append(
            f"TP={tp} does not divide the number of attention heads ({shape.num_attention_heads})"
        )
    if shape.intermediate_size is not None and shape.intermediate_size % tp:
        problems.append(f"TP={tp} does not divide the MLP size ({shape.intermediate_size})")
    return problems


def rollout_tp_problems(shape: ModelShape, tp: int) -> list[str]:
    """Why an SGLang server at tensor parallelism ``tp`` cannot shard the model (empty = it can).

    SGLang's attention layers (``sglang/srt/models/qwen2.py``, ``llama.py``, ...) assert that TP divides
    the attention heads, and that TP divides the KV heads or, with more ranks than KV heads, that the
    KV heads divide TP (each KV head is then replicated).
    """
    if tp < 1:
        return [f"rollout TP must be >= 1, got {tp}"]
    problems = []
    if shape.num_attention_heads % tp:
        problems.append(
            f"rollout TP={tp} does not divide the number of attention heads ({shape.num_attention_heads})"
        )
    kv = shape.num_key_value_heads
    if (kv >= tp and kv % tp) or (kv < tp and tp % kv):
        problems.append(
            f"rollout TP={tp} and the {kv} KV heads: SGLang needs TP to divide them, or (TP > KV heads) them to "
            "divide TP"
        )
    return problems


def pp_problems(shape: ModelShape, pp: int, vp: int | None = None) -> list[str]:
    """Why ``pp`` pipeline stages of ``vp`` model chunks each (interleaved pipeline; None = one chunk)
    cannot split the layers (empty = they can): every chunk holds the same number of layers."""
    if pp < 1:
        return [f"PP must be >= 1, got PP={pp}"]
    layers = shape.num_hidden_layers
    if vp is not None and vp >= 1:
        if layers % (pp * vp) == 0:
            return []
        return [
            f"PP x VP = {pp} x {vp} = {pp * vp} model chunks do not divide the number of layers ({layers}); "
            f"use PP and VP whose product divides {layers}"
        ]
    if layers % pp == 0:
        return []
    return [f"PP={pp} does not divide the number of layers ({layers}); use a PP size that divides {layers}"]


def allowed_tp_sizes(shape: ModelShape) -> list[int]:
    """Every TP size :func:`tp_problems` accepts: the divisors of gcd(heads, KV heads, MLP size)."""
    g = math.gcd(shape.num_attention_heads, shape.num_key_value_heads, shape.intermediate_size or 0)
    return [d for d in range(1, g + 1) if g % d == 0]


def allowed_pp_sizes(shape: ModelShape) -> list[int]:
    """Every PP size :func:`pp_problems` accepts: the divisors of the layer count."""
    n = shape.num_hidden_layers
    return [d for d in range(1, n + 1) if n % d == 0]


def padded_vocab_size(vocab_size: int, tp: int, divisible_by: int) -> int:
    """``vocab_size`` rounded up to a multiple of ``divisible_by x tp`` (Megatron-LM's rule), so every
    TP rank holds the same number of embedding/output rows."""
    if tp < 1 or divisible_by < 1:
        raise ValueError(f"TP and make_vocab_size_divisible_by must be >= 1, got {tp} and {divisible_by}")
    multiple = divisible_by * tp
    return -(-vocab_size // multiple) * multiple
