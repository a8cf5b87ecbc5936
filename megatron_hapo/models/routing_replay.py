"""Rollout routing replay (R3): the routers of a mixture of experts take the experts the rollout engine chose.

Without it the trainer routes every token itself. A token whose router scores are close can then take other
experts than it did in SGLang (other kernels, other precision), and the log-probs of the old-policy pass and
the update are those of a different computation than the one the engine sampled from. Replaying the
engine's choice removes that mismatch (Ma et al. 2025, "Stabilizing MoE Reinforcement Learning by Aligning
Training and Inference Routers"; slime's ``--use-rollout-routing-replay``, verl's router replay "R3").
Only the choice is the engine's: the weights of the chosen experts are still the trainer router's softmax
over their logits, so the router keeps its gradient.

Megatron-Core's hook: built with ``moe_enable_routing_replay``, every ``TopKRouter`` owns a ``RouterReplay``,
which in ``REPLAY_FORWARD`` takes its ``target_topk_idx [tokens, top_k]`` instead of computing the top k. A
router's tokens are its input ``[s, b, h]`` flattened, sequence-major; under sequence parallelism it holds
this TP rank's ``s / TP`` positions of the sequence, under context parallelism this CP rank's (the micro-batch
is already split then: models/context_parallel.py).

Recomputation (``model.recompute_granularity``) runs a layer's forward again during the backward, router
included. Megatron's schedules compute one micro-batch's forward or backward at a time, so the targets of the
micro-batch at hand are set as each begins: by :func:`forward_with_routing` before the forward, and by a hook
on the chunk's output, which runs as the micro-batch's backward reaches it (a pipeline's 1F1B schedule runs
other micro-batches' forwards in between).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

_ROUTERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model chunk -> its (layer, RouterReplay)


def replayable_routers(chunk) -> list[tuple[int, object]]:
    """``(layer, RouterReplay)`` of the MoE layers of ``chunk`` (a model or one pipeline stage of it), by
    layer: ``layer`` is the 0-based index in the whole model (Megatron numbers layers across stages)."""
    if chunk not in _ROUTERS:
        found = [
            (m.layer_number - 1, m.router_replay)
            for m in chunk.modules()
            if getattr(m, "router_replay", None) is not None
        ]
        _ROUTERS[chunk] = sorted(found, key=lambda pair: pair[0])
    return _ROUTERS[chunk]


def router_tokens(routed: torch.Tensor, layer: int, sp_size: int, sp_rank: int) -> torch.Tensor:
    """``routed [b, s, layers, top_k]`` -> the experts of ``layer`` in the router's token order, ``[s' x b,
    top_k]`` int64: sequence-major, and with sequence parallelism over ``sp_size`` ranks this rank's
    ``s' = s / sp_size`` positions."""
    per_token = routed[:, :, layer, :].transpose(0, 1)  # [s, b, top_k]
    if sp_size > 1:
        span = per_token.shape[0] // sp_size
        per_token = per_token[sp_rank * span : (sp_rank + 1) * span]
    return per_token.reshape(-1, per_token.shape[-1]).long()


def route_as(chunk, routed: torch.Tensor | None) -> Callable[[], None] | None:
    """Make the routers of ``chunk`` replay ``routed [b, s, MoE layers, top_k]`` (this micro-batch's engine
    experts), or route on their own when ``routed`` is None. Returns a function that sets the same targets
    again (for the backward's recomputation), or None when there is nothing to replay."""
    routers = replayable_routers(chunk)
    if routed is None:
        for _, replay in routers:
            replay.clear_indices()
            replay.clear_router_replay_action()
        return None
    from megatron.core import parallel_state as ps
    from megatron.core.transformer.moe.router_replay import RouterReplayAction

    if not routers:
        raise RuntimeError(
            "a micro-batch carries routed experts to replay, but this model was built without "
            "moe_enable_routing_replay (or has no MoE layer): algorithm.rollout_routing_replay builds it with"
        )
    if routers[-1][0] >= routed.shape[2]:
        raise ValueError(
            f"routing replay: layer {routers[-1][0]} has a router, but the micro-batch carries experts of "
            f"{routed.shape[2]} layers"
        )
    sp = chunk.config.sequence_parallel and ps.get_tensor_model_parallel_world_size() > 1
    sp_size, sp_rank = (
        (ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()) if sp else (1, 0)
    )
    targets = [(replay, router_tokens(routed, layer, sp_size, sp_rank)) for layer, replay in routers]

    def set_targets() -> None:
        for replay, target in targets:
            replay.clear_indices()  # set_target_indices also queues it for REPLAY_BACKWARD, unused here
            replay.set_target_indices(target)
            replay.set_router_replay_action(RouterReplayAction.REPLAY_FORWARD)

    set_targets()
    return set_targets


def forward_with_routing(
    chunk, routed: torch.Tensor | None, forward: Callable[[], torch.Tensor]
) -> torch.Tensor:
    """``forward()`` of ``chunk`` with its routers replaying ``routed`` (:func:`route_as`), and the same
    targets set again when the backward of the output begins (module docstring)."""
    again = route_as(chunk, routed)
    output = forward()
    if again is not None and output.requires_grad:

        def before_backward(grad: torch.Tensor) -> torch.Tensor:
            again()
            return grad

        output.register_hook(before_backward)
    return output
