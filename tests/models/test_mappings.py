"""The mapping kinds on small hand-checkable tensors, and the tables against real HF state dicts."""

import dataclasses

import pytest
import torch

from megatron_hapo.checkpoint_io.mappings import (
    FAMILIES,
    QKV,
    Direct,
    GatedMLP,
    Split,
    family_mapping,
    merge_qkv,
    pad_vocab,
    split_qkv,
)
from megatron_hapo.models import load_arch
from tests.models.test_hf_config import QWEN25_MATH_7B

# 4 heads in 2 KV groups of head_dim 2, hidden 3
ARCH = dataclasses.replace(
    load_arch(QWEN25_MATH_7B), num_attention_heads=4, num_kv_heads=2, head_dim=2, hidden_size=3, vocab_size=5
)


def _rows(n: int, start: float) -> torch.Tensor:
    """[n, 3] whose row r is filled with start + r (so a row's origin is readable from its value)."""
    return (start + torch.arange(n, dtype=torch.float32)).unsqueeze(1).expand(n, 3).clone()


def test_qkv_is_interleaved_per_query_group():
    q, k, v = _rows(8, 0), _rows(4, 100), _rows(4, 200)  # q: 4 heads x 2; k, v: 2 groups x 2
    merged = merge_qkv(q, k, v, ARCH)
    # group 0: heads 0,1 of q (rows 0-3), k_0 (100,101), v_0 (200,201); then group 1
    expected = [0, 1, 2, 3, 100, 101, 200, 201, 4, 5, 6, 7, 102, 103, 202, 203]
    assert merged[:, 0].tolist() == expected
    assert all(torch.equal(a, b) for a, b in zip(split_qkv(merged, ARCH), (q, k, v)))
    # biases follow the same layout
    bias = merge_qkv(q[:, 0], k[:, 0], v[:, 0], ARCH)
    assert bias.tolist() == expected


def test_qkv_tp_shard_holds_whole_query_groups():
    row = QKV(("linear_qkv.weight",), "q", "k", "v")
    merged = merge_qkv(_rows(8, 0), _rows(4, 100), _rows(4, 200), ARCH)
    shards = [row.shard(merged, r, 2) for r in range(2)]
    assert shards[1][:, 0].tolist() == [4, 5, 6, 7, 102, 103, 202, 203]  # exactly group 1
    assert torch.equal(row.unshard(shards), merged)


def test_gated_fc1_per_rank_is_gate_i_then_up_i():
    row = GatedMLP(("linear_fc1.weight",), "gate", "up")
    gate, up = _rows(4, 0), _rows(4, 10)
    full = row.to_mcore([gate, up], ARCH, padded_vocab=0)
    assert full[:, 0].tolist() == [0, 1, 2, 3, 10, 11, 12, 13]
    shards = [row.shard(full, r, 2) for r in range(2)]
    assert shards[0][:, 0].tolist() == [0, 1, 10, 11] and shards[1][:, 0].tolist() == [2, 3, 12, 13]
    assert torch.equal(row.unshard(shards), full)
    assert all(torch.equal(a, b) for a, b in zip(row.to_hf(full, ARCH), (gate, up)))


@pytest.mark.parametrize("split", list(Split))
def test_direct_shard_unshard_round_trip(split):
    row = Direct(("w",), "w", split)
    full = torch.arange(48, dtype=torch.float32).reshape(8, 6)
    shards = [row.shard(full, r, 2) for r in range(2)]
    assert torch.equal(row.unshard(shards), full)
    assert row.full_shape(shards[0].shape, 2) == tuple(full.shape)
    if split is Split.ROW:
        assert shards[0].shape == (8, 3)
    elif split in (Split.COLUMN, Split.VOCAB):
        assert shards[0].shape == (4, 6)


def test_vocab_rows_are_padded_with_zeros_and_unpadded_on_export():
    row = Direct(("embedding.word_embeddings.weight",), "model.embed_tokens.weight", Split.VOCAB)
    emb = torch.randn(5, 3)
    padded = row.to_mcore([emb], ARCH, padded_vocab=8)
    assert padded.shape == (8, 3) and torch.equal(padded[:5], emb) and not padded[5:].any()
    (back,) = row.to_hf(padded, ARCH)
    assert torch.equal(back, emb)
    with pytest.raises(ValueError, match="more than the padded vocab"):
        pad_vocab(torch.zeros(9, 3), 8)


def test_both_norm_naming_schemes_and_tied_output():
    arch = dataclasses.replace(ARCH, tie_word_embeddings=True)
    table = family_mapping("qwen2")
    local = table.bind("decoder.layers.3.input_layernorm.weight", arch)
    te = table.bind("decoder.layers.3.self_attention.linear_qkv.layer_norm_weight", arch)
    assert local.hf_names == te.hf_names == ("model.layers.3.input_layernorm.weight",)
    te_mlp = table.bind("decoder.layers.0.mlp.linear_fc1.layer_norm_weight", arch)
    assert te_mlp.hf_names == ("model.layers.0.post_attention_layernorm.weight",)
    out = table.bind("output_layer.weight", arch)
    assert not out.exported and out.import_hf_names == ("model.embed_tokens.weight",)
    with pytest.raises(ValueError, match="no row in the qwen2 mapping table"):
        table.bind("decoder.layers.0.mlp.router.weight", arch)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("tie", [False, True])
def test_table_covers_exactly_the_hf_state_dict(family, tie, tmp_path):
    """The names a table expects are exactly the tensors HF's own model saves (no more, no fewer).

    Saved, not ``state_dict()``: transformers 5 fuses a mixture's experts in memory and writes them back per
    expert, as the released checkpoints hold them."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    experts = (
        dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16) if family == "qwen3_moe" else {}
    )
    config = AutoConfig.for_model(
        family,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=50,
        tie_word_embeddings=tie,
        **experts,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        hf_keys = set(f.keys())
    assert family_mapping(family).hf_names(load_arch(config)) == hf_keys
