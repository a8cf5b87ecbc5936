"""Packed sequences through Megatron's GPTModel: several sequences in one row, each with its own
positions, attention never crossing a sequence boundary (docs/training.md, "Sequence packing").

Two routes, chosen per layer spec (:func:`resolve_packing`):

- ``"thd"`` (Transformer Engine's attention): the row goes in with Megatron's ``PackedSeqParams``
  (``qkv_format="thd"``, ``cu_seqlens``); TE's attention keeps sequences apart and Megatron's rotary
  embedding restarts at each ``cu_seqlens`` boundary. Megatron's local attention refuses these params.
- ``"mask"`` (the local spec's attention, SDPA or unfused; CPU and GPU): the row (batch 1) goes in with a block-diagonal
  causal ``attention_mask [1, 1, s, s]``, and the model's rotary embedding is made to return its table
  gathered at each token's own position (:func:`per_token_rotary`): in sbhd format Megatron's rotary
  tensor is ``[s, 1, 1, d]`` and broadcasts over batch and heads, so with batch 1 each token can carry
  its own position. (RoPE only sees relative positions inside the block-diagonal mask, so this matters
  for bitwise agreement with the rollout engine, which starts every sequence at position 0, not for the
  attention pattern.) TE's attention with a causal mask type ignores ``attention_mask``, which is why
  this route is refused with the TE spec; the unfused attention's fused (CUDA) softmax would do the same,
  so the policy builds with ``masked_softmax_fusion=False`` on this route. ``SDPAttention`` gives the
  mask to PyTorch's memory-efficient kernel.

Unpacked micro-batches (one sequence per row) go through unchanged.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from megatron_hapo.models.routing_replay import forward_with_routing

logger = logging.getLogger(__name__)

PACKING_MODES = ("auto", "none", "mask", "thd")


def resolve_packing(mode: str, te_spec: bool, token_budget: bool, cp: int = 1) -> tuple[str, str]:
    """``(route, why)``: the packing route ("none", "mask" or "thd") for ``data.sequence_packing=mode``
    with the TE layer spec or the local one. "auto": "mask" on the local spec (proven by the CPU
    equivalence tests), "none" on the TE spec (THD is implemented but not yet exercised on a GPU here: opt
    in with "thd"), and "none" without a token budget (a packed row needs one). Under context parallelism
    (``cp`` > 1) the mask route's rows are split over the CP ranks (models/context_parallel.py), "thd"
    raises. Explicit modes the attention cannot do raise ``ValueError`` (config validation refuses them
    earlier)."""
    if mode not in PACKING_MODES:
        raise ValueError(f"data.sequence_packing must be one of {PACKING_MODES}, got {mode!r}")
    spec = "transformer_engine" if te_spec else "local"
    if mode == "none":
        return "none", "data.sequence_packing=none"
    if cp > 1 and mode == "thd":
        raise ValueError(
            f"data.sequence_packing=thd is not split across CP ranks (CP={cp}): use the local spec's mask route"
        )
    if mode == "auto":
        if not token_budget:
            return "none", "no token budget (data.max_tokens_per_micro_batch null): fixed micro-batches"
        if te_spec:
            return "none", (
                "layer spec transformer_engine: THD packing is not yet proven on a GPU here, token-budget "
                "micro-batches (set data.sequence_packing=thd to opt in)"
            )
        return "mask", "layer spec local: block-diagonal causal mask + per-sequence rotary positions"
    if not token_budget:
        raise ValueError(
            f"data.sequence_packing={mode} needs data.max_tokens_per_micro_batch (the row budget)"
        )
    if mode == "mask" and te_spec:
        raise ValueError(
            "data.sequence_packing=mask needs Megatron's local attention: Transformer Engine's attention "
            "ignores an explicit mask under a causal mask type (attention would cross sequences); use "
            "data.sequence_packing=thd (or auto) with the TE spec"
        )
    if mode == "thd" and not te_spec:
        raise ValueError(
            "data.sequence_packing=thd needs Transformer Engine's attention (model.layer_spec=te): Megatron's "
            "local attention refuses PackedSeqParams; use data.sequence_packing=mask (or auto) with the local spec"
        )
    return mode, f"data.sequence_packing={mode}, layer spec {spec}"


def rotary_modules(model) -> list:
    """The RoPE modules of ``model`` (a GPTModel, possibly wrapped); raises for rotary variants whose
    output is not a plain ``[s, 1, 1, d]`` table (YaRN, multimodal RoPE)."""
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    found = [m for m in model.modules() if isinstance(m, RotaryEmbedding)]
    for m in found:
        if type(m) is not RotaryEmbedding:
            raise NotImplementedError(
                f"sequence packing with the mask route supports Megatron's RotaryEmbedding, not {type(m).__name__}"
            )
    return found


@contextlib.contextmanager
def per_token_rotary(model, position_ids: torch.Tensor):
    """While active, the rotary embedding of ``model`` returns its table at ``position_ids [1, s]`` (one
    position per token of the packed row) instead of positions ``0 .. s-1``. Under context parallelism
    ``position_ids`` are this rank's tokens' (``models/context_parallel.py``), s / CP of the row's s."""
    from megatron.core import parallel_state as ps

    if position_ids.dim() != 2 or position_ids.shape[0] != 1:
        raise ValueError(f"per-token rotary positions need one packed row, got {tuple(position_ids.shape)}")
    positions = position_ids[0]
    # positions restart per sequence, so all are < the row's length n: a table of n rows covers them
    n = positions.numel() * ps.get_context_parallel_world_size()
    patched = []
    for rope in rotary_modules(model):
        original = rope.forward  # the class's (lru-cached) forward, bound

        def forward(max_seq_len, offset=0, packed_seq=False, cp_group=None, _orig=original):
            if max_seq_len != n:
                raise RuntimeError(
                    f"packed row of {n} tokens, but the rotary embedding was asked for {max_seq_len} positions"
                )
            # packed_seq=True: the whole table, not a CP rank's slice of it (the positions are this rank's)
            table = _orig(n, offset, True, cp_group)  # [n, 1, 1, d]; row p depends on p alone
            return table[positions.to(table.device)]

        rope.forward = forward  # an instance attribute: nn.Module.__call__ finds it first
        patched.append(rope)
    try:
        yield
    finally:
        for rope in patched:
            del rope.forward


def forward_micro_batch(model, batch):
    """``model(tokens, position_ids, attention_mask)`` for one micro-batch, packed ("mask" or "thd") or not:
    the logits ``[b, s, V/tp]`` (or the hidden states on a non-last pipeline stage). A micro-batch with
    ``routed_experts`` has its MoE routers replay them (models/routing_replay.py)."""
    routed = getattr(batch, "routed_experts", None)
    return forward_with_routing(model, routed, lambda: _forward(model, batch))


def _forward(model, batch):
    params = getattr(batch, "packed_seq_params", None)
    if params is not None:
        return model(batch.tokens, batch.position_ids, None, packed_seq_params=params)
    if getattr(batch, "segments", None) is not None:
        with per_token_rotary(model, batch.position_ids):
            return model(batch.tokens, batch.position_ids, batch.attention_mask)
    return model(batch.tokens, batch.position_ids, batch.attention_mask)
