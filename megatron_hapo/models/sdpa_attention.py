"""Core attention of the local layer spec through ``torch.nn.functional.scaled_dot_product_attention``.

Megatron's local spec computes attention unfused (``DotProductAttention``): the scores ``[b, heads, s, s]``
are written out, soft-maxed in fp32 and kept for the backward, which at s = 4096 is most of a layer's
activation memory and a large share of its time. PyTorch's fused kernels do the same product without
keeping any ``s x s`` tensor: on CUDA the flash kernel for causal rows, the memory-efficient kernel for an
explicit mask (the block-diagonal mask of packed rows); on CPU, PyTorch's own fused kernels. This is what
a GPU without Transformer Engine gets (``model.local_attention``, docs/training.md "Attention"). The idea is
Megatron's own "kitchen" SDPA backend for the local spec, which needs NVIDIA's kitchen package; this one
needs torch only. Under context parallelism it all-gathers K and V over the CP group and attends this
rank's two chunks of queries to them (:func:`chunked_causal_attention`, models/context_parallel.py).

Shapes (Megatron's core-attention interface, sbhd): query ``[sq, b, np, hn]``, key and value
``[sk, b, ng, hn]`` (np / ng heads and query groups of this TP rank), ``attention_mask`` None (causal: the
convention of Megatron's causal mask type) or bool ``[1 or b, 1, sq, sk]`` with True = masked (under CP:
this rank's query rows against the whole sequence's keys, models/context_parallel.py); the output is
``[sq, b, np * hn]``::

    out = softmax(scale * Q K^T + M) V,   M = -inf where masked (or above the diagonal when the mask is None)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Megatron at import time (imported by the builder only when it builds this attention; this package's
# __init__ has applied megatron_hapo.parallel's CPU patches before)
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.utils import divide
from torch.nn.attention.bias import causal_lower_right

from megatron_hapo.models.context_parallel import gather_keys_values


class SDPAttention(MegatronModule):
    """Drop-in ``core_attention`` for Megatron's local spec (same constructor and forward as
    ``DotProductAttention``) computing ``softmax(scale * Q K^T + mask) V`` with PyTorch's fused kernels.
    Features of ``DotProductAttention`` it does not implement are refused at build time by name."""

    def __init__(
        self,
        config,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        unsupported = {
            "attention_dropout > 0": (
                config.attention_dropout if attention_dropout is None else attention_dropout
            )
            > 0,
            "window_size (sliding-window attention)": config.window_size is not None,
            f"softmax_type={config.softmax_type!r}": config.softmax_type != "vanilla",
            "apply_query_key_layer_scaling": config.apply_query_key_layer_scaling,
            f"attn_mask_type={attn_mask_type.name}": attn_mask_type != AttnMaskType.causal,
        }
        refused = [name for name, present in unsupported.items() if present]
        if refused:
            raise NotImplementedError(
                f"model.local_attention=sdpa does not implement {', '.join(refused)}; "
                "use model.local_attention=unfused (Megatron's DotProductAttention) for this model"
            )
        if pg_collection is not None:
            tp = pg_collection.tp.size()
            cp_group = getattr(pg_collection, "cp", None)
        else:
            from megatron.core import parallel_state as ps

            tp = ps.get_tensor_model_parallel_world_size()
            cp_group = ps.get_context_parallel_group() if config.context_parallel_size > 1 else None
        # context parallelism: this rank holds two chunks of every sequence (models/context_parallel.py)
        self.cp_group = cp_group if config.context_parallel_size > 1 else None
        self.heads = divide(config.num_attention_heads, tp)
        self.groups = divide(config.num_query_groups, tp)
        self.scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(config.kv_channels)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if packed_seq_params is not None or attention_bias is not None:
            raise NotImplementedError(
                "model.local_attention=sdpa takes packed rows as a mask (data.sequence_packing=mask), not "
                "PackedSeqParams, and no attention bias"
            )
        sq, b = query.shape[:2]
        if self.cp_group is not None:
            key, value = gather_keys_values(key, value, self.cp_group)  # [s, b, ng, hn], sequence order
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads or groups, s, hn]
        # grouped-query attention: each KV head serves heads / groups query heads. Kept grouped where the kernel
        # takes them so (kernel_takes_grouped_heads), K and V are neither copied nor kept that many times for
        # the backward: under CP the whole sequence's K and V. An explicit mask (packed rows) runs on CUDA's
        # memory-efficient kernel, which does not take them grouped: there they are repeated.
        grouped = self.heads > self.groups and attention_mask is None and kernel_takes_grouped_heads(q, k, v)
        if self.heads > self.groups and not grouped:
            k, v = (t.repeat_interleave(self.heads // self.groups, dim=1) for t in (k, v))
        else:
            # V is a view into linear_qkv's output (K and Q are new tensors: rotary embedding): kept for the
            # backward as it is, it would keep that whole output alive; a copy of V alone is 2 kv bytes a token
            # (under CP V is the all-gather's own tensor, and this no copy)
            v = value.contiguous().permute(1, 2, 0, 3)
        if self.cp_group is not None and attention_mask is None:
            out = chunked_causal_attention(
                q, k, v, self.cp_group.rank(), self.cp_group.size(), self.scale, enable_gqa=grouped
            )
        elif attention_mask is None:
            out = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=self.scale, enable_gqa=grouped
            )
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=~attention_mask, scale=self.scale)
        return out.permute(2, 0, 1, 3).reshape(sq, b, self.heads * q.shape[-1])


def kernel_takes_grouped_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether SDPA runs queries ``[b, heads, sq, hn]`` against keys and values ``[b, groups, sk, hn]``
    (``enable_gqa``, no mask or a causal one) on a fused kernel without repeating K and V to the query heads.
    On CUDA that is the flash kernel (PyTorch's own check, ``can_use_flash_attention``: bf16/fp16, head
    dim <= 256, sm80+); CUDA's memory-efficient kernel does not take them grouped, and PyTorch would then fall
    back to the math kernel, which writes the ``s x s`` scores, so those inputs are better repeated. The
    CPU's fused kernel takes them grouped, with or without a mask."""
    if q.device.type != "cuda":
        return True
    from torch.backends.cuda import SDPAParams, can_use_flash_attention

    return can_use_flash_attention(SDPAParams(q, k, v, None, 0.0, False, True), False)


def chunked_causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cp_rank: int,
    cp_size: int,
    scale: float,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """Causal attention of CP rank ``cp_rank``'s queries ``[b, heads, 2L, hn]`` (chunks c = cp_rank and
    2·CP-1-c of the sequence, models/context_parallel.py) to the whole sequence's keys and values
    ``[b, heads, s, hn]`` (s = 2·CP·L; ``[b, groups, s, hn]`` with ``enable_gqa``, grouped-query attention):
    chunk c attends keys ``[0, (c+1)·L)``, causal at its own end, which is SDPA's lower-right causal mask (no
    ``s x s`` tensor on CUDA's fused kernels: flash, which takes grouped K and V as they are, else the
    memory-efficient one). Output ``[b, heads, 2L, hn]``."""
    chunk = q.shape[2] // 2
    if k.shape[2] != 2 * cp_size * chunk:
        raise ValueError(
            f"{q.shape[2]} queries of CP rank {cp_rank} of {cp_size} need {2 * cp_size * chunk} keys, got {k.shape[2]}"
        )
    halves = []
    for half, c in ((q[:, :, :chunk], cp_rank), (q[:, :, chunk:], 2 * cp_size - 1 - cp_rank)):
        keys = (c + 1) * chunk
        bias = causal_lower_right(chunk, keys)
        halves.append(
            F.scaled_dot_product_attention(
                half, k[:, :, :keys], v[:, :, :keys], attn_mask=bias, scale=scale, enable_gqa=enable_gqa
            )
        )
    return torch.cat(halves, dim=2)
