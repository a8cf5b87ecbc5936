"""Streaming Megatron -> HF export: ``export_hf_weights(model)`` yields ``(hf_name, tensor)`` one at a time.

Used by ``mcore-to-hf`` and by the weight sync to SGLang. For each parameter it gathers the TP
shards (``all_gather`` over the TP group), undoes the Megatron layout with the family's mapping table
(QKV de-interleave, [gate; up] split, vocab unpadding) and walks the pipeline stages in order,
broadcasting each full tensor from its stage over the PP group.

**Which rank yields what.** Every rank of the model-parallel group yields *every* tensor of the whole
model, in the same order (stage 0's parameters first, then stage 1's, ...). Pick one rank to write or
push them (e.g. ``tp_rank == 0 and pp_rank == 0`` per data-parallel replica); the others must still
run the iterator to the end, in lockstep, because each step is a collective. Stopping early on one
rank leaves the others blocked in the next collective. Data-parallel replicas are independent, except under
expert parallelism: each rank holds ``num_experts / EP`` of a layer's experts, the expert-parallel group (ranks of
different data-parallel replicas) all-gathers them, and every rank must run the iterator.

Yielded tensors live on the parameters' device, in the parameters' dtype, and may share storage with
the model (replicated tensors at TP=1): copy them if you keep them past the next optimizer step.
Memory: one full tensor (plus its TP shards) at a time.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist

from megatron_hapo.checkpoint_io.collective import raise_if_any
from megatron_hapo.checkpoint_io.mappings import BoundRow, FamilyMapping, family_mapping, with_expert
from megatron_hapo.models.errors import ConversionError
from megatron_hapo.models.hf_config import ModelArch
from megatron_hapo.models.params import arch_of, as_chunks, named_global_parameters
from megatron_hapo.parallel import compute_device


def export_hf_weights(
    model, *, arch: ModelArch | None = None, progress: bool = False
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(hf_name, tensor)`` for the whole model from this rank's chunk(s); collective (see module doc).

    ``model``: a GPTModel chunk (optionally DDP/Float16-wrapped) or the list of virtual-pipeline chunks.
    Tensors have HF shapes: e.g. ``model.embed_tokens.weight`` [vocab, hidden] (padding removed),
    ``...q_proj.weight`` [heads*head_dim, hidden]. A tied model yields no ``lm_head.weight``.
    """
    from megatron.core import parallel_state as ps

    chunks = as_chunks(model)
    arch = arch_of(chunks, arch)
    mapping = family_mapping(arch.family)
    tp, tp_group = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_group()
    pp, pp_rank = ps.get_pipeline_model_parallel_world_size(), ps.get_pipeline_model_parallel_rank()
    pp_group = ps.get_pipeline_model_parallel_group()
    ep = ps.get_expert_model_parallel_world_size()
    ep_group = ps.get_expert_model_parallel_group() if ep > 1 else None

    local: list[tuple[torch.nn.Parameter, BoundRow]] = []
    error = None
    try:
        for chunk in chunks:
            for name, param in named_global_parameters(chunk):
                bound = mapping.bind(name, arch)
                if bound.exported:
                    local.append((param, bound))
    except ConversionError as e:
        error = e
    # before the first collective, so no rank of the model-parallel group is left waiting in one
    raise_if_any(error, group=ps.get_model_parallel_group())
    # broadcast buffers of a stage that exports nothing: on the collective's device (NCCL needs CUDA tensors)
    device = local[0][0].device if local else compute_device()
    # Every stage announces (name, full shape, dtype) of its tensors, so the other stages can post
    # matching broadcast buffers and all ranks run the same collectives in the same order.
    manifest = [
        (name, b.row.full_shape(p.shape, tp), p.dtype) for p, b in local for name in _ep_names(b, arch, ep)
    ]
    manifests, stage_src = [manifest], [None]
    if pp > 1:
        manifests = [None] * pp
        dist.all_gather_object(manifests, manifest, group=pp_group)
        stage_src = dist.get_process_group_ranks(pp_group)

    bar = _bar(sum(len(m) for m in manifests), progress)
    for stage, entries in enumerate(manifests):
        mine = _stage_tensors(local, mapping, arch, tp, tp_group, ep_group) if stage == pp_rank else None
        for name, shape, dtype in entries:
            if mine is not None:
                bound, full = next(mine)
            else:
                bound = mapping.bind(name, arch)
                full = torch.empty(shape, dtype=dtype, device=device)
            if pp > 1:
                dist.broadcast(full, src=stage_src[stage], group=pp_group)
            if bar is not None:
                bar.update(1)
            yield from bound.to_hf(full)
    if bar is not None:
        bar.close()


def runs_the_export() -> bool:
    """Whether this rank walks the export of its data-parallel replica: DP (x CP) rank 0, whose model-parallel
    group holds one copy of the model, or every rank under expert parallelism (the experts of a layer are spread
    over the data-parallel replicas)."""
    from megatron.core import parallel_state as ps

    return (
        ps.get_data_parallel_rank(with_context_parallel=True) == 0
        or ps.get_expert_model_parallel_world_size() > 1
    )


def _ep_names(bound: BoundRow, arch: ModelArch, ep: int) -> list[str]:
    """The global names ``bound``'s parameter stands for in the export: under expert parallelism a local expert's
    for every rank of the expert-parallel group (rank r holds experts r * E/EP ...), in rank order."""
    if ep == 1 or bound.expert is None:
        return [bound.mcore_name]
    per_rank = arch.moe.num_experts // ep
    j = bound.expert % per_rank
    return [with_expert(bound.mcore_name, r * per_rank + j) for r in range(ep)]


def _stage_tensors(
    local: list[tuple[torch.nn.Parameter, BoundRow]], mapping: FamilyMapping, arch: ModelArch, tp: int, tp_group,
    ep_group,
) -> Iterator[tuple[BoundRow, torch.Tensor]]:  # fmt: skip
    """This stage's full tensors in manifest order: TP-gathered, and a local expert's all-gathered over the
    expert-parallel group (``ep_group``, None without expert parallelism)."""
    for param, bound in local:
        full = _gather_tp(param, bound, tp, tp_group)
        if ep_group is None or bound.expert is None:
            yield bound, full
            continue
        pieces = [torch.empty_like(full) for _ in range(dist.get_world_size(ep_group))]
        dist.all_gather(pieces, full.contiguous(), group=ep_group)
        for name, piece in zip(_ep_names(bound, arch, len(pieces)), pieces, strict=True):
            yield mapping.bind(name, arch), piece


def _gather_tp(param: torch.Tensor, bound: BoundRow, tp: int, group) -> torch.Tensor:
    """The full (TP=1 layout) Megatron tensor from every TP rank's shard of ``param``."""
    local = param.detach()
    if tp == 1:
        return bound.row.unshard([local])
    if bound.row.tp_replicated:  # every TP rank holds the same tensor
        return local
    shards = [torch.empty_like(local) for _ in range(tp)]
    dist.all_gather(shards, local.contiguous(), group=group)
    return bound.row.unshard(shards)


def _bar(total: int, enabled: bool):
    if not enabled or (dist.is_initialized() and dist.get_rank() != 0):
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="Megatron -> HF", unit="tensor")
