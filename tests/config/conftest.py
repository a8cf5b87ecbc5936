"""Helpers for config tests: write small YAML trees and fake machine probes."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from megatron_hapo.config import EnvProbe

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "examples" / "configs"


@pytest.fixture
def write(tmp_path):
    """write("name.yaml", "yaml text") -> path, dedented."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return _write


@pytest.fixture
def model_dir(tmp_path):
    """A model directory whose config.json has 8 heads, 2 KV heads, 4 layers, 512 positions."""

    def _make(heads: int = 8, kv: int = 2, layers: int = 4, max_pos: int = 512) -> Path:
        d = tmp_path / f"model_{heads}_{kv}_{layers}_{max_pos}"
        d.mkdir(exist_ok=True)
        cfg = {
            "num_attention_heads": heads,
            "num_key_value_heads": kv,
            "num_hidden_layers": layers,
            "max_position_embeddings": max_pos,
        }
        (d / "config.json").write_text(json.dumps(cfg))
        return d

    return _make


@pytest.fixture
def data_file(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text('{"prompt": "1+1?", "data_source": "x", "reward_model": {"ground_truth": "2"}}\n')
    return p


def probe(
    te: str | None = None, cap: tuple[int, int] | None = (9, 0), cuda: tuple[int, int] | None = (12, 9)
):
    """A fake machine: te = None means Transformer Engine imports, else the import error text."""
    return EnvProbe(te_error=lambda: te, gpu_capability=lambda: cap, cuda_version=lambda: cuda)
