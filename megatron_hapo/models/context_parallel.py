"""Context parallelism (CP): every sequence of a micro-batch split over the CP ranks of a model replica.

Megatron's load-balanced layout: a padded length ``s`` (a multiple of 2·CP) is cut into 2·CP chunks of
``L = s / (2·CP)`` tokens, and CP rank r holds chunks ``r`` and ``2·CP - 1 - r``, so that every rank gets
the same share of the causal attention's work (an early chunk sees few keys, its partner many)::

    positions(r) = [r·L, (r+1)·L) ++ [(2·CP-1-r)·L, (2·CP-r)·L)          (2L = s / CP tokens)

Megatron's own pieces follow this layout: its rotary embedding slices the table for this rank
(``get_pos_emb_on_this_cp_rank``), its schedule multiplies each micro-batch loss by CP and its DDP averages
gradients over DP x CP. What this module adds for the local layer spec:

- :func:`local_part` / :func:`split_batch`: this rank's slice of a micro-batch (every per-token ``[b, s]``
  field; of a packed row also its mask rows and each sequence's slots);
- :func:`gather_sequence`: the per-token results of all CP ranks back in sequence order (old-policy pass);
- :func:`gather_keys_values`: the attention's all-gather of K and V (sequence order, reduce-scatter of
  their gradient in the backward), with which ``SDPAttention`` attends this rank's queries to every key
  (Llama 3's all-gather context parallelism; Megatron's TE path calls it ``cp_comm_type="all_gather"``).
"""

from __future__ import annotations

import copy

import torch


def cp_group_and_size():
    """``(group, size)`` of this rank's context-parallel group (``(None, 1)`` without CP)."""
    from megatron.core import parallel_state as ps

    size = ps.get_context_parallel_world_size() if ps.model_parallel_is_initialized() else 1
    return (ps.get_context_parallel_group() if size > 1 else None), size


def local_positions(seq_len: int, cp_size: int, cp_rank: int, device=None) -> torch.Tensor:
    """The sequence positions CP rank ``cp_rank`` holds, in its order (module docstring): ``[seq_len / cp_size]``."""
    if seq_len % (2 * cp_size):
        raise ValueError(
            f"a micro-batch of {seq_len} tokens does not split into 2 x CP = {2 * cp_size} equal chunks; pad it "
            "to a multiple of ParallelConfig.sequence_multiple"
        )
    chunk = seq_len // (2 * cp_size)
    ar = torch.arange(chunk, device=device)
    return torch.cat([cp_rank * chunk + ar, (2 * cp_size - 1 - cp_rank) * chunk + ar])


def _sequence_order(seq_len: int, cp_size: int, device=None) -> torch.Tensor:
    """``order`` with ``gathered[order]`` in sequence order, where ``gathered`` concatenates the ranks' parts
    (rank 0's, then rank 1's, ...) along the sequence: the inverse of the layout's permutation. Built on
    ``device`` (kernels only: no host-to-device copy per layer and micro-batch)."""
    layout = torch.cat([local_positions(seq_len, cp_size, r, device=device) for r in range(cp_size)])
    return torch.argsort(layout)


def local_part(batch):
    """This CP rank's part of a micro-batch (:func:`split_batch` at this rank; ``batch`` itself without CP)."""
    group, size = cp_group_and_size()
    return batch if size == 1 else split_batch(batch, size, torch.distributed.get_rank(group))


def split_batch(batch, cp_size: int, cp_rank: int):
    """A copy of ``batch`` with every tensor field of shape ``[b, s]`` (``batch.tokens``'s) sliced to
    :func:`local_positions` along the sequence, on the tensors' device; other fields as they are.

    A packed row on the mask route (``models/packing.py``) keeps whole sequences' keys: its
    ``attention_mask [1, 1, s, s]`` keeps the rows of this rank's queries (``[1, 1, s / CP, s]``, the keys
    all-gathered by the attention), and ``segments [n, L]`` (each sequence's slots) points at this rank's
    slots, -1 where a slot is another rank's. THD rows (``packed_seq_params``) are refused: Transformer
    Engine partitions them its own way."""
    if getattr(batch, "packed_seq_params", None) is not None:
        raise NotImplementedError(
            "context parallelism with THD packed rows is not implemented (data.sequence_packing=mask or none)"
        )
    shape = batch.tokens.shape
    idx = local_positions(shape[1], cp_size, cp_rank, device=batch.tokens.device)
    out = copy.copy(batch)  # a MicroBatch (trainer/experience.py) or a SimpleNamespace (models/scoring.py)
    for name, value in vars(batch).items():
        if torch.is_tensor(value) and value.shape[:2] == shape:
            setattr(out, name, value.index_select(1, idx))
    mask = getattr(batch, "attention_mask", None)
    if mask is not None:
        out.attention_mask = mask.index_select(2, idx)
    segments = getattr(batch, "segments", None)
    if segments is not None:
        if shape[0] != 1:
            raise ValueError(f"packed micro-batches are one row, got {tuple(shape)}")
        local = torch.full((shape[1],), -1, dtype=segments.dtype, device=segments.device)
        local[idx] = torch.arange(idx.numel(), dtype=segments.dtype, device=segments.device)
        out.segments = torch.where(segments >= 0, local[segments.clamp_min(0)], segments)
    return out


def gather_sequence(local: torch.Tensor, dim: int) -> torch.Tensor:
    """All CP ranks' parts of a per-token tensor (no gradient), concatenated along ``dim`` in sequence order:
    ``[..., s / CP, ...]`` -> ``[..., s, ...]``. Without CP, ``local`` itself."""
    group, size = cp_group_and_size()
    if size == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(size)]
    torch.distributed.all_gather(parts, local.contiguous(), group=group)
    gathered = torch.cat(parts, dim=dim)
    return gathered.index_select(dim, _sequence_order(gathered.shape[dim], size, device=local.device))


def gather_keys_values(key: torch.Tensor, value: torch.Tensor, group) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V ``[s / CP, b, groups, hn]`` of this rank -> ``[s, b, groups, hn]`` of the whole sequence, in
    sequence order; differentiable (Megatron's all-gather along the first dimension, whose backward
    reduce-scatters: every rank's queries contribute to the gradient of this rank's keys)."""
    from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region

    size = group.size()
    out = []
    for t in (key, value):
        gathered = gather_from_sequence_parallel_region(t, tensor_parallel_output_grad=True, group=group)
        out.append(gathered.index_select(0, _sequence_order(gathered.shape[0], size, device=t.device)))
    return out[0], out[1]
