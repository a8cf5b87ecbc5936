"""Reads the few HF config fields layout validation needs (heads, KV heads, layers, context length).

Plain JSON, no transformers import: validation runs before anything heavy is loaded.
"""

from __future__ import annotations

import json
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
    raw.update(override_config)
    missing = [k for k in ("num_attention_heads", "num_hidden_layers") if not isinstance(raw.get(k), int)]
    if missing:
        raise ValueError(f"{config_json} lacks integer field(s) {missing}; is it a decoder-only LM config?")
    heads = raw["num_attention_heads"]
    kv = raw.get("num_key_value_heads") or heads  # absent = multi-head attention
    max_pos = raw.get("max_position_embeddings")
    return ModelShape(
        num_attention_heads=heads,
        num_key_value_heads=int(kv),
        num_hidden_layers=raw["num_hidden_layers"],
        max_position_embeddings=int(max_pos) if isinstance(max_pos, int) else None,
        source=str(config_json),
    )
