"""A mixture of experts' optimizer state across EP = 1 and EP > 1.

At EP > 1 Megatron keeps the experts' optimizer state in an optimizer of its own: the distributed optimizer is a
``ChainedOptimizer`` of two (0: the dense parameters, 1: the experts, whose gradients are reduced over the
expert-data-parallel group), at EP = 1 there is one. A checkpoint (``fully_reshardable`` format, one tensor per
parameter under its global name) then differs between the two in two places, and in nothing else:

- the optimizer's tensor keys: ``chained_<i>.optimizer.state.exp_avg.<param>`` at EP > 1,
  ``optimizer.state.exp_avg.<param>`` at EP = 1;
- its common state (param groups with their hyperparameters and Adam's step): ``{0: {...}, 1: {...}}`` at EP > 1,
  one ``{...}`` at EP = 1, the experts' groups marked ``is_expert_parallel``.

So a checkpoint loads across the two when the state dict to load into asks for the keys the checkpoint has
(:func:`ask_for_written_keys`, before the load), and the loaded common state is put into the shape this run's
optimizer reads (:func:`reshape_loaded`, after it). Between two EP sizes above 1 nothing changes: the keys are
global names, and Megatron reshards the experts' tensors itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHAINED = "chained_"  # the key prefix of a chained optimizer's i-th part: chained_<i>.


def written_keys(path: str | Path) -> set[str]:
    """The tensor keys of the distributed checkpoint at ``path`` (its metadata only; no tensor is read)."""
    from torch.distributed.checkpoint import FileSystemReader

    return set(FileSystemReader(str(path)).read_metadata().state_dict_metadata)


def is_chained(keys: set[str]) -> bool:
    """Whether a checkpoint with these keys was written by a chained optimizer (EP > 1)."""
    return any(key.startswith(CHAINED) for key in keys)


def ask_for_written_keys(optimizer_state: Any, written: set[str]) -> None:
    """Rename in place the keys of ``optimizer_state`` (this run's optimizer's sharded state dict, as it
    will be loaded) to those the checkpoint holds the same tensors under, where the two layouts differ.

    This run chained (``{0: ..., 1: ...}``, keys ``chained_<i>.K``), the checkpoint not: each part asks for
    ``K``. This run not chained, the checkpoint chained: each key ``K`` asks for the ``chained_<i>.K`` the
    checkpoint has (the dense or the experts' part). A key the checkpoint has under neither name is left as it
    is, for Megatron's load to name it."""
    from megatron.core.dist_checkpointing.dict_utils import dict_list_map_inplace
    from megatron.core.dist_checkpointing.mapping import ShardedBase
    from megatron.core.dist_checkpointing.utils import replace_prefix_for_sharding

    if is_chained_state(optimizer_state) and not is_chained(written):
        for i, part in optimizer_state.items():
            replace_prefix_for_sharding(part, f"{CHAINED}{i}.", "")
    elif not is_chained_state(optimizer_state) and is_chained(written):
        where = {key.split(".", 1)[1]: key for key in written if key.startswith(CHAINED)}

        def rename(item):
            if isinstance(item, ShardedBase) and item.key not in written and item.key in where:
                item.key = where[item.key]
            return item

        dict_list_map_inplace(rename, optimizer_state)


def reshape_loaded(loaded: dict[Any, Any], chained: bool) -> dict[Any, Any]:
    """The optimizer's loaded state in the shape this run's optimizer reads (``chained``: a ChainedOptimizer of
    a dense and an experts' part, EP > 1), from a checkpoint of either shape. ``loaded`` is what Megatron's
    load returned: the checkpoint's common state (param groups, sharding type; under ``0`` and ``1`` when it was
    written chained) with this run's tensors (``param_state``) merged in where this run's state dict asked for
    them (under ``0`` and ``1`` when this run is chained).

    Every part gets every param group the checkpoint has, each also as the other side of ``is_expert_parallel``:
    Megatron's distributed optimizer takes from them the groups it has by their identifying keys (weight-decay and
    learning-rate multipliers, ``is_expert_parallel``, ...), and an exact match is put last, so it wins. An fp16
    run's dynamic loss scale (``grad_scaler``) goes to every part."""
    parts = {k: v for k, v in loaded.items() if isinstance(k, int)}
    rest = {k: v for k, v in loaded.items() if not isinstance(k, int)}
    written_chained = any("optimizer" in part for part in parts.values())
    if chained == written_chained:
        return loaded  # written in this run's shape
    written = list(parts.values()) if written_chained else [rest]
    groups = [g for part in written for g in part["optimizer"]["param_groups"]]
    flipped = [dict(g, is_expert_parallel=not g.get("is_expert_parallel", False)) for g in groups]
    common = {
        "optimizer": {"param_groups": flipped + groups},
        "param_state_sharding_type": written[0]["param_state_sharding_type"],
    }
    scalers = [part["grad_scaler"] for part in written if "grad_scaler" in part]
    if scalers:  # fp16: a dynamic loss scale (bf16 and fp32 have none)
        # a chained optimizer's parts each keep a scale; one scaler for all the parameters takes the smallest, the
        # one the part whose gradients overflow soonest settled on
        common["grad_scaler"] = min(
            scalers, key=lambda s: float(s["scale"]) if "scale" in s else float("inf")
        )
    if chained:  # written flat: this run's parts hold its tensors
        return {i: {**common, "param_state": part["param_state"]} for i, part in parts.items()}
    return {**common, "param_state": rest["param_state"]}


def is_chained_state(optimizer_state: Any) -> bool:
    """Whether an optimizer's sharded state dict is a chained optimizer's: its parts by index (EP > 1)."""
    return (
        isinstance(optimizer_state, dict)
        and bool(optimizer_state)
        and all(isinstance(k, int) for k in optimizer_state)
    )
