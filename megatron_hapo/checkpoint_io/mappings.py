"""Declarative HF <-> Megatron parameter mappings: one table per family, a few mapping kinds.

A table row says which Megatron parameter corresponds to which HF tensor(s) and how the Megatron
tensor is split over tensor-parallel ranks. Every row kind implements the same five operations, so
checkpoint conversion (HF -> Megatron shards, Megatron -> HF) and the weight sync to SGLang
(``export.export_hf_weights``) share one source of truth:

* ``to_mcore(hf_tensors) -> full``     HF tensor(s) -> the Megatron tensor as it is at TP=1
* ``to_hf(full) -> hf_tensors``        the inverse
* ``shard(full, rank, tp) -> local``   the slice TP rank ``rank`` holds
* ``unshard(locals) -> full``          the inverse, from all TP ranks' slices in rank order
* ``full_shape(local_shape, tp)``      global shape from one rank's shape (for broadcast buffers)

Row kinds (names relative to ``decoder.layers.{i}.`` / ``model.layers.{i}.`` for per-layer rows):

* :class:`Direct` - one tensor each side; ``Split`` says replicated, column- (dim 0) or row-parallel
  (dim 1), or vocab-parallel (dim 0, padded to Megatron's padded vocab on import, unpadded on export).
* :class:`QKV` - ``linear_qkv`` = q, k, v interleaved per query group (see :func:`merge_qkv`).
* :class:`GatedMLP` - ``linear_fc1`` = [gate; up]; TP rank i holds [gate_i; up_i].

A mixture of experts (Qwen3-MoE) adds per-expert rows, named relative to one expert
(``decoder.layers.{i}.mlp.experts.local_experts.{e}.`` / ``model.layers.{i}.mlp.experts.{e}.``); each
expert's MLP is split over TP like a dense one. The router (``mlp.router`` / ``mlp.gate``) is replicated.

Norms accept both spec naming schemes: the local spec's ``input_layernorm`` / ``pre_mlp_layernorm``
and the Transformer Engine spec's fused ``linear_qkv.layer_norm_weight`` / ``linear_fc1.layer_norm_weight``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from megatron_hapo.models.errors import ConversionError
from megatron_hapo.models.hf_config import ModelArch

MCORE_LAYER = "decoder.layers.{i}."
HF_LAYER = "model.layers.{i}."
MCORE_EXPERT = "mlp.experts.local_experts.{e}."
HF_EXPERT = "mlp.experts.{e}."
_LAYER_NAME = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_EXPERT_NAME = re.compile(r"^mlp\.experts\.local_experts\.(\d+)\.(.+)$")


class Split(enum.Enum):
    REPLICATED = "replicated"  # every TP rank holds the whole tensor (norms)
    COLUMN = "column"  # dim 0 split over TP ranks (ColumnParallelLinear)
    ROW = "row"  # dim 1 split over TP ranks (RowParallelLinear)
    VOCAB = "vocab"  # dim 0, padded to the padded vocab, then split (VocabParallelEmbedding, output layer)


@dataclass(frozen=True)
class Direct:
    """One Megatron tensor <-> one HF tensor.

    ``mcore`` lists alternative Megatron names (local spec first, TE spec second) for the same tensor.
    ``tied_to``: for the output layer, the HF tensor it is read from when embeddings are tied
    (the HF checkpoint then has no ``lm_head.weight``, and export emits nothing for this row).
    """

    mcore: tuple[str, ...]
    hf: str
    split: Split
    tied_to: str | None = None

    @property
    def tp_replicated(self) -> bool:
        return self.split is Split.REPLICATED

    def hf_names(self) -> tuple[str, ...]:
        return (self.hf,)

    def to_mcore(self, tensors: Sequence[torch.Tensor], arch: ModelArch, padded_vocab: int) -> torch.Tensor:
        (t,) = tensors
        if self.split is Split.VOCAB:
            return pad_vocab(t, padded_vocab)
        return t

    def to_hf(self, full: torch.Tensor, arch: ModelArch) -> tuple[torch.Tensor, ...]:
        if self.split is Split.VOCAB:
            return (full[: arch.vocab_size],)
        return (full,)

    def shard(self, full: torch.Tensor, rank: int, tp: int) -> torch.Tensor:
        if self.split is Split.REPLICATED:
            return full
        return full.chunk(tp, dim=1 if self.split is Split.ROW else 0)[rank]

    def unshard(self, shards: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.split is Split.REPLICATED:
            return shards[0]
        return torch.cat(list(shards), dim=1 if self.split is Split.ROW else 0)

    def full_shape(self, local_shape: Sequence[int], tp: int) -> tuple[int, ...]:
        shape = list(local_shape)
        if self.split is not Split.REPLICATED:
            shape[1 if self.split is Split.ROW else 0] *= tp
        return tuple(shape)


@dataclass(frozen=True)
class QKV:
    """``linear_qkv`` (weight or bias) <-> HF ``q_proj``, ``k_proj``, ``v_proj``; column-parallel.

    Each TP rank owns whole query groups, so the TP shard is a plain dim-0 chunk of the interleaved
    tensor (this needs ``num_kv_heads % tp == 0``, checked by ``ModelArch.check_layout``).
    """

    mcore: tuple[str, ...]
    q: str
    k: str
    v: str
    tp_replicated = False

    def hf_names(self) -> tuple[str, ...]:
        return (self.q, self.k, self.v)

    def to_mcore(self, tensors: Sequence[torch.Tensor], arch: ModelArch, padded_vocab: int) -> torch.Tensor:
        return merge_qkv(*tensors, arch)

    def to_hf(self, full: torch.Tensor, arch: ModelArch) -> tuple[torch.Tensor, ...]:
        return split_qkv(full, arch)

    def shard(self, full: torch.Tensor, rank: int, tp: int) -> torch.Tensor:
        return full.chunk(tp, dim=0)[rank]

    def unshard(self, shards: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(shards), dim=0)

    def full_shape(self, local_shape: Sequence[int], tp: int) -> tuple[int, ...]:
        return (local_shape[0] * tp, *local_shape[1:])


@dataclass(frozen=True)
class GatedMLP:
    """``linear_fc1`` = cat([gate, up], dim 0) at TP=1; TP rank i holds cat([gate_i, up_i]).

    The per-rank layout is *not* a contiguous slice of the full concatenation, so gate and up are
    split separately (Megatron's SwiGLU applies ``silu(first half) * second half`` on each rank).
    """

    mcore: tuple[str, ...]
    gate: str
    up: str
    tp_replicated = False

    def hf_names(self) -> tuple[str, ...]:
        return (self.gate, self.up)

    def to_mcore(self, tensors: Sequence[torch.Tensor], arch: ModelArch, padded_vocab: int) -> torch.Tensor:
        gate, up = tensors
        return torch.cat([gate, up], dim=0)

    def to_hf(self, full: torch.Tensor, arch: ModelArch) -> tuple[torch.Tensor, ...]:
        gate, up = full.chunk(2, dim=0)
        return gate, up

    def shard(self, full: torch.Tensor, rank: int, tp: int) -> torch.Tensor:
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp, dim=0)[rank], up.chunk(tp, dim=0)[rank]], dim=0)

    def unshard(self, shards: Sequence[torch.Tensor]) -> torch.Tensor:
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)

    def full_shape(self, local_shape: Sequence[int], tp: int) -> tuple[int, ...]:
        return (local_shape[0] * tp, *local_shape[1:])


Row = Direct | QKV | GatedMLP


def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, arch: ModelArch) -> torch.Tensor:
    """HF q [heads*d, ...], k and v [kv_heads*d, ...] -> Megatron ``linear_qkv`` [(heads + 2 kv_heads)*d, ...].

    Megatron lays rows out per KV group g: [q rows of g's heads_per_group heads, k_g, v_g], g = 0..kv_heads-1.
    Works for weights ([rows, hidden]) and biases ([rows]).
    """
    g, d, rest = arch.num_kv_heads, arch.head_dim, q.shape[1:]
    expect = {"q": (arch.num_attention_heads * d, q), "k": (g * d, k), "v": (g * d, v)}
    for name, (rows, t) in expect.items():
        if t.shape[0] != rows or t.shape[1:] != rest:
            raise ConversionError(
                f"{name}_proj has shape {tuple(t.shape)}, expected ({rows}, {', '.join(map(str, rest))}) "
                f"for {arch.num_attention_heads} heads / {g} KV heads of dim {d}: the config does not match the weights"
            )
    merged = torch.cat(
        [q.reshape(g, arch.heads_per_group * d, *rest), k.reshape(g, d, *rest), v.reshape(g, d, *rest)], 1
    )
    return merged.reshape(-1, *rest)


def split_qkv(qkv: torch.Tensor, arch: ModelArch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`merge_qkv`: Megatron ``linear_qkv`` -> (q, k, v) in HF layout (contiguous copies)."""
    g, d, rest = arch.num_kv_heads, arch.head_dim, qkv.shape[1:]
    grouped = qkv.reshape(g, (arch.heads_per_group + 2) * d, *rest)
    q, k, v = grouped.split([arch.heads_per_group * d, d, d], dim=1)
    return (
        q.reshape(-1, *rest).contiguous(),
        k.reshape(-1, *rest).contiguous(),
        v.reshape(-1, *rest).contiguous(),
    )


def pad_vocab(t: torch.Tensor, padded_vocab: int) -> torch.Tensor:
    """Append zero rows up to ``padded_vocab`` (padded ids embed to 0 and score logit 0)."""
    if t.shape[0] > padded_vocab:
        raise ConversionError(
            f"vocab tensor has {t.shape[0]} rows, more than the padded vocab {padded_vocab}"
        )
    if t.shape[0] == padded_vocab:
        return t
    return torch.cat([t, t.new_zeros(padded_vocab - t.shape[0], *t.shape[1:])], dim=0)


# ---- the tables -------------------------------------------------------------------------------------

_EMBEDDING = Direct(("embedding.word_embeddings.weight",), "model.embed_tokens.weight", Split.VOCAB)
_FINAL_NORM = Direct(("decoder.final_layernorm.weight",), "model.norm.weight", Split.REPLICATED)
_OUTPUT = Direct(("output_layer.weight",), "lm_head.weight", Split.VOCAB, tied_to="model.embed_tokens.weight")

_INPUT_NORM = Direct(
    ("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight"),
    "input_layernorm.weight",
    Split.REPLICATED,
)
_QKV_WEIGHT = QKV(
    ("self_attention.linear_qkv.weight",),
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
)
_QKV_BIAS = QKV(
    ("self_attention.linear_qkv.bias",),
    "self_attn.q_proj.bias",
    "self_attn.k_proj.bias",
    "self_attn.v_proj.bias",
)
_O_PROJ = Direct(("self_attention.linear_proj.weight",), "self_attn.o_proj.weight", Split.ROW)
_Q_NORM = Direct(("self_attention.q_layernorm.weight",), "self_attn.q_norm.weight", Split.REPLICATED)
_K_NORM = Direct(("self_attention.k_layernorm.weight",), "self_attn.k_norm.weight", Split.REPLICATED)
_MLP_NORM = Direct(
    ("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight"),
    "post_attention_layernorm.weight",
    Split.REPLICATED,
)
_FC1 = GatedMLP(("mlp.linear_fc1.weight",), "mlp.gate_proj.weight", "mlp.up_proj.weight")
_FC2 = Direct(("mlp.linear_fc2.weight",), "mlp.down_proj.weight", Split.ROW)
_ROUTER = Direct(("mlp.router.weight",), "mlp.gate.weight", Split.REPLICATED)
# per expert, relative to MCORE_EXPERT / HF_EXPERT
_EXPERT_FC1 = GatedMLP(("linear_fc1.weight",), "gate_proj.weight", "up_proj.weight")
_EXPERT_FC2 = Direct(("linear_fc2.weight",), "down_proj.weight", Split.ROW)


def with_expert(mcore_name: str, expert: int) -> str:
    """``mcore_name`` (a per-expert parameter's global name) for expert ``expert`` of the same layer."""
    layer, rel = _LAYER_NAME.match(mcore_name).groups()
    return MCORE_LAYER.format(i=layer) + _EXPERT_NAME.sub(MCORE_EXPERT.format(e=expert) + r"\2", rel)


@dataclass(frozen=True)
class FamilyMapping:
    """The mapping table of one model family: global rows, per-layer rows and (a mixture of experts) per-expert
    rows."""

    family: str
    global_rows: tuple[Row, ...]
    layer_rows: tuple[Row, ...]
    expert_rows: tuple[Row, ...] = ()

    def bind(self, mcore_name: str, arch: ModelArch) -> BoundRow:
        """The row for a *global* Megatron parameter name (layer index counted over the whole model)."""
        match = _LAYER_NAME.match(mcore_name)
        rows, layer, rel, expert = (
            (self.layer_rows, int(match.group(1)), match.group(2), None)
            if match
            else (self.global_rows, None, mcore_name, None)
        )
        in_expert = _EXPERT_NAME.match(rel) if match and self.expert_rows else None
        if in_expert:
            rows, expert, rel = self.expert_rows, int(in_expert.group(1)), in_expert.group(2)
        for row in rows:
            if rel in row.mcore:
                return BoundRow(row, mcore_name, layer, arch, expert)
        raise ConversionError(
            f"Megatron parameter {mcore_name!r} has no row in the {self.family} mapping table "
            f"(megatron_hapo/checkpoint_io/mappings.py); the model was built with a feature the table does not map"
        )

    def hf_names(self, arch: ModelArch) -> set[str]:
        """Every HF tensor name a checkpoint of ``arch`` holds."""
        names = set()
        for row in self.global_rows:
            if not (arch.tie_word_embeddings and isinstance(row, Direct) and row.tied_to):
                names.update(row.hf_names())
        experts = range(arch.moe.num_experts if arch.moe and self.expert_rows else 0)
        for i in range(arch.num_layers):
            for row in self.layer_rows:
                names.update(HF_LAYER.format(i=i) + n for n in row.hf_names())
            for e, row in ((e, row) for e in experts for row in self.expert_rows):
                names.update(HF_LAYER.format(i=i) + HF_EXPERT.format(e=e) + n for n in row.hf_names())
        return names


@dataclass(frozen=True)
class BoundRow:
    """A row resolved for one concrete parameter: HF names for its layer, tie handling."""

    row: Row
    mcore_name: str
    layer: int | None
    arch: ModelArch
    expert: int | None = None  # the expert of a per-expert row

    @property
    def tied(self) -> bool:
        return self.arch.tie_word_embeddings and isinstance(self.row, Direct) and self.row.tied_to is not None

    @property
    def exported(self) -> bool:
        """False for the output layer of a tied model: HF has no ``lm_head.weight`` then."""
        return not self.tied

    @property
    def hf_names(self) -> tuple[str, ...]:
        """HF names this parameter is exported to (and, untied, imported from)."""
        prefix = "" if self.layer is None else HF_LAYER.format(i=self.layer)
        if self.expert is not None:
            prefix += HF_EXPERT.format(e=self.expert)
        return tuple(prefix + n for n in self.row.hf_names())

    @property
    def import_hf_names(self) -> tuple[str, ...]:
        """HF names this parameter is read from (the embedding for a tied output layer)."""
        return (self.row.tied_to,) if self.tied else self.hf_names

    def to_mcore_shard(
        self, hf_tensors: Sequence[torch.Tensor], padded_vocab: int, rank: int, tp: int
    ) -> torch.Tensor:
        """HF tensors (in ``import_hf_names`` order) -> this TP rank's Megatron shard."""
        return self.row.shard(self.row.to_mcore(hf_tensors, self.arch, padded_vocab), rank, tp)

    def to_hf(self, full: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """The full (TP-gathered) Megatron tensor -> [(hf_name, tensor)]."""
        return list(zip(self.hf_names, self.row.to_hf(full, self.arch)))


_GLOBAL_ROWS = (_EMBEDDING, _FINAL_NORM, _OUTPUT)
_ATTENTION = (_INPUT_NORM, _QKV_WEIGHT, _O_PROJ)
_MLP = (_MLP_NORM, _FC1, _FC2)

LLAMA = FamilyMapping("llama", _GLOBAL_ROWS, (*_ATTENTION, *_MLP))  # Llama 3 / 3.1 / 3.2: no biases
QWEN2 = FamilyMapping("qwen2", _GLOBAL_ROWS, (*_ATTENTION, _QKV_BIAS, *_MLP))  # Qwen2 / 2.5: q/k/v biases
QWEN3 = FamilyMapping(
    "qwen3", _GLOBAL_ROWS, (*_ATTENTION, _Q_NORM, _K_NORM, *_MLP)
)  # Qwen3: per-head q/k RMSNorm

QWEN3_MOE = FamilyMapping(
    "qwen3_moe",
    _GLOBAL_ROWS,
    (*_ATTENTION, _Q_NORM, _K_NORM, _MLP_NORM, _ROUTER),
    expert_rows=(_EXPERT_FC1, _EXPERT_FC2),
)  # Qwen3-MoE: Qwen3's attention, a routed mixture of SwiGLU experts in every layer, no shared expert

FAMILIES: dict[str, FamilyMapping] = {m.family: m for m in (LLAMA, QWEN2, QWEN3, QWEN3_MOE)}


def family_mapping(family: str) -> FamilyMapping:
    try:
        return FAMILIES[family]
    except KeyError:
        raise ConversionError(f"no mapping table for family {family!r}; known: {sorted(FAMILIES)}") from None
